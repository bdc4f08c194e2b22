//! Images run as the workspace's binaries: pgop's own image (deploy/Dockerfile) holds its four
//! binaries in /usr/local/bin; here a mapping names the directory that stands in for it, and
//! the container runs its own `command` in a sandbox where that directory is /usr/local/bin,
//! with what a kubelet gives every pod: its volumes (the ServiceAccount token among them), the
//! API server's address in `KUBERNETES_SERVICE_HOST/PORT`, cluster DNS in /etc/resolv.conf.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::dns::CLUSTER_DOMAIN;

/// Where the image's binaries are in the container.
pub const IMAGE_BIN_DIR: &str = "/usr/local/bin";

/// The pod network shim (shim/pod_network.c), compiled by build.rs.
const POD_NETWORK_SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libpgop_pod_network.so"));

/// The image's name without registry, tag or digest: `registry.example.com/pgop:v1` → `pgop`.
pub fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// The directory standing in for the image's binaries, from `NAME=DIR` mappings.
pub fn binaries_for(image: &str, mappings: &[(String, PathBuf)]) -> Option<PathBuf> {
    let name = image_name(image);
    mappings
        .iter()
        .find(|(mapped, _)| mapped == name)
        .map(|(_, dir)| dir.clone())
}

/// Writes the pod network shim below `state_dir` (readable by every container user).
pub fn install_pod_network_shim(state_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = state_dir.join("lib");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let path = dir.join("libpgop_pod_network.so");
    std::fs::write(&path, POD_NETWORK_SHIM)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The pod's resolver configuration: the cluster DNS, Kubernetes' search path and ndots.
pub fn resolv_conf(namespace: &str, nameserver: Ipv4Addr) -> String {
    format!(
        "search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\nnameserver {nameserver}\noptions ndots:5\n"
    )
}

/// The pod's /etc/hosts: localhost and its own names, as the kubelet writes it.
pub fn hosts_file(pod: &Pod, ip: Ipv4Addr) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let hostname = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or(name);
    let own = match spec
        .and_then(|s| s.subdomain.clone())
        .filter(|s| !s.is_empty())
    {
        Some(subdomain) => {
            format!("{hostname}.{subdomain}.{namespace}.svc.{CLUSTER_DOMAIN}\t{hostname}")
        }
        None => hostname,
    };
    format!(
        "# Kubernetes-managed hosts file (pgop local kubelet).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{own}\n"
    )
}

/// `KUBERNETES_SERVICE_HOST/PORT` and the other variables of the `kubernetes` Service. They
/// name the API server itself: there is no Service proxy on this machine.
pub fn kubernetes_service_env(server_url: &str) -> Vec<(String, String)> {
    let authority = server_url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.to_string()),
        _ => (authority.to_string(), "443".to_string()),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let url = format!("tcp://{host}:{port}");
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), host.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.clone()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP"), url),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host),
    ]
}

/// The (uid, gid) the container runs as: its securityContext, else the pod's; root when
/// neither names a user.
pub fn run_as(pod: &Pod, container: &Container) -> Option<(u32, u32)> {
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let own = container.security_context.as_ref();
    let uid = own
        .and_then(|c| c.run_as_user)
        .or_else(|| pod_context.and_then(|c| c.run_as_user))?;
    let gid = own
        .and_then(|c| c.run_as_group)
        .or_else(|| pod_context.and_then(|c| c.run_as_group))
        .unwrap_or(uid);
    Some((u32::try_from(uid).ok()?, u32::try_from(gid).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn image_names_ignore_registry_tag_and_digest() {
        let cases = [
            ("pgop", "pgop"),
            ("pgop:latest", "pgop"),
            ("registry.example.com/pgop:v0.1.0", "pgop"),
            ("localhost:5000/team/pgop:v2", "pgop"),
            ("pgop@sha256:abcd", "pgop"),
            ("ghcr.io/zalando/spilo-15:3.0-p1", "spilo-15"),
        ];
        for (image, want) in cases {
            assert_eq!(image_name(image), want, "{image}");
        }
        let mappings = vec![("pgop".to_string(), PathBuf::from("/w/target/debug"))];
        assert_eq!(
            binaries_for("example.com/pgop:v2", &mappings),
            Some(PathBuf::from("/w/target/debug"))
        );
        assert_eq!(binaries_for("example.com/pgop-ui:v2", &mappings), None);
    }

    #[test]
    fn resolver_searches_the_pods_namespace_first() {
        let text = resolv_conf("pgop-system", Ipv4Addr::new(127, 1, 255, 254));
        assert_eq!(
            text,
            "search pgop-system.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.1.255.254\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_file_names_the_pod_and_its_subdomain() {
        let plain: Pod = serde_json::from_value(
            json!({"metadata": {"name": "pgop-worker-abc", "namespace": "ns"}, "spec": {"containers": []}}),
        )
        .unwrap();
        let hosts = hosts_file(&plain, Ipv4Addr::new(127, 1, 0, 7));
        assert!(hosts.contains("127.1.0.7\tpgop-worker-abc\n"), "{hosts}");
        let stateful: Pod = serde_json::from_value(json!({"metadata": {"name": "db-0", "namespace": "ns"}, "spec": {"hostname": "db-0", "subdomain": "db", "containers": []}})).unwrap();
        let hosts = hosts_file(&stateful, Ipv4Addr::new(127, 1, 0, 8));
        assert!(
            hosts.contains("127.1.0.8\tdb-0.db.ns.svc.cluster.local\tdb-0\n"),
            "{hosts}"
        );
    }

    #[test]
    fn service_variables_name_the_api_server() {
        let env: std::collections::BTreeMap<_, _> =
            kubernetes_service_env("https://127.0.0.1:6443")
                .into_iter()
                .collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "127.0.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "6443");
        assert_eq!(env["KUBERNETES_PORT_6443_TCP_ADDR"], "127.0.0.1");
        let env: std::collections::BTreeMap<_, _> = kubernetes_service_env("https://api.example")
            .into_iter()
            .collect();
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
    }

    #[test]
    fn container_user_overrides_the_pods() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {}, "spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 2000}, "containers": []}})).unwrap();
        let own: Container =
            serde_json::from_value(json!({"name": "c", "securityContext": {"runAsUser": 65532}}))
                .unwrap();
        let plain: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        assert_eq!(run_as(&pod, &own), Some((65532, 2000)));
        assert_eq!(run_as(&pod, &plain), Some((1000, 2000)));
        let bare: Pod =
            serde_json::from_value(json!({"metadata": {}, "spec": {"containers": []}})).unwrap();
        assert_eq!(run_as(&bare, &plain), None);
    }
}
