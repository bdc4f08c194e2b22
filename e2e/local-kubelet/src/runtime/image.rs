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
pub(crate) const IMAGE_BIN_DIR: &str = "/usr/local/bin";

/// The pod network shim (shim/pod_network.c), compiled by build.rs.
const POD_NETWORK_SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libpgop_pod_network.so"));

/// The image's name without registry, tag or digest: `registry.example.com/pgop:v1` → `pgop`.
pub(crate) fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// The directory standing in for the image's binaries, from `NAME=DIR` mappings.
pub(crate) fn binaries_for(image: &str, mappings: &[(String, PathBuf)]) -> Option<PathBuf> {
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
    // A new file renamed over the old one: containers left running by an earlier kubelet
    // still map the old file, and truncating it under them would crash them.
    let fresh = dir.join(format!(".libpgop_pod_network.so.{}", std::process::id()));
    std::fs::write(&fresh, POD_NETWORK_SHIM)?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&fresh, &path)?;
    Ok(path)
}

/// The pod's resolver configuration: the cluster DNS, Kubernetes' search path and ndots.
pub(crate) fn resolv_conf(namespace: &str, nameserver: Ipv4Addr) -> String {
    format!(
        "search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\nnameserver {nameserver}\noptions ndots:5\n"
    )
}

/// The pod's /etc/hosts: localhost and its own names, as the kubelet writes it.
pub(crate) fn hosts_file(pod: &Pod, ip: Ipv4Addr) -> String {
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
pub(crate) fn kubernetes_service_env(server_url: &str) -> Vec<(String, String)> {
    // The kubeconfig's server is a URL the kubelet itself connects to: it parses.
    let Ok(server) = reqwest::Url::parse(server_url) else {
        return Vec::new();
    };
    let (Some(address), Some(port)) = (server.host_str(), server.port_or_known_default()) else {
        return Vec::new();
    };
    // `[::1]` in URLs, `::1` as a host.
    let host = address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = port.to_string();
    let url = format!("tcp://{address}:{port}");
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

/// The pod's host name: `spec.hostname`, else its name.
pub(crate) fn hostname(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default()
}

/// What a container's securityContext (over its pod's) asks of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Security {
    /// (uid, gid); None: root.
    pub user: Option<(u32, u32)>,
    pub run_as_non_root: bool,
    pub read_only_root: bool,
    pub no_new_privileges: bool,
}

pub(crate) fn security(pod: &Pod, container: &Container) -> Security {
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let own = container.security_context.as_ref();
    let uid = own
        .and_then(|c| c.run_as_user)
        .or_else(|| pod_context.and_then(|c| c.run_as_user));
    let gid = own
        .and_then(|c| c.run_as_group)
        .or_else(|| pod_context.and_then(|c| c.run_as_group));
    let user = uid.and_then(|uid| {
        let gid = gid.unwrap_or(uid);
        Some((u32::try_from(uid).ok()?, u32::try_from(gid).ok()?))
    });
    Security {
        user,
        run_as_non_root: own
            .and_then(|c| c.run_as_non_root)
            .or_else(|| pod_context.and_then(|c| c.run_as_non_root))
            .unwrap_or(false),
        read_only_root: own
            .and_then(|c| c.read_only_root_filesystem)
            .unwrap_or(false),
        no_new_privileges: own.and_then(|c| c.allow_privilege_escalation) == Some(false),
    }
}

/// The shim finds the pod's address here; a name of the kubelet's own, so no setting of the
/// container's can collide with it.
pub(crate) const POD_IP_FOR_SHIM: &str = "LOCAL_KUBELET_POD_IP";

/// A container's environment, later entries winning as in Kubernetes: the defaults, the
/// `kubernetes` Service's variables, the container's own; then the pod network shim, put
/// before any preload the container names.
pub(crate) fn container_env(
    api_server: &str,
    pod_name: &str,
    env: &std::collections::BTreeMap<String, String>,
    shim: &Path,
    ip: Ipv4Addr,
) -> Vec<(String, String)> {
    let mut out: std::collections::BTreeMap<String, String> = [
        ("PATH", DEFAULT_PATH),
        ("HOME", "/"),
        ("HOSTNAME", pod_name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    out.extend(kubernetes_service_env(api_server));
    out.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let preload = match out.get("LD_PRELOAD").filter(|p| !p.is_empty()) {
        Some(theirs) => format!("{}:{theirs}", shim.display()),
        None => shim.display().to_string(),
    };
    out.insert("LD_PRELOAD".into(), preload);
    out.insert(POD_IP_FOR_SHIM.into(), ip.to_string());
    out.into_iter().collect()
}

/// A container's PATH unless it sets its own (Debian's, as in pgop's image).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
        let env: std::collections::BTreeMap<_, _> = kubernetes_service_env("https://[::1]:6443")
            .into_iter()
            .collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "::1");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://[::1]:6443");
    }

    #[test]
    fn container_security_overrides_the_pods() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {}, "spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 2000, "runAsNonRoot": true}, "containers": []}})).unwrap();
        let own: Container = serde_json::from_value(json!({"name": "c", "securityContext": {"runAsUser": 65532, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false}})).unwrap();
        let plain: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        assert_eq!(
            security(&pod, &own),
            Security {
                user: Some((65532, 2000)),
                run_as_non_root: true,
                read_only_root: true,
                no_new_privileges: true
            }
        );
        assert_eq!(
            security(&pod, &plain),
            Security {
                user: Some((1000, 2000)),
                run_as_non_root: true,
                ..Default::default()
            }
        );
        let bare: Pod =
            serde_json::from_value(json!({"metadata": {}, "spec": {"containers": []}})).unwrap();
        assert_eq!(security(&bare, &plain), Security::default());
    }

    #[test]
    fn the_containers_variables_win_and_the_shim_comes_first() {
        let theirs: std::collections::BTreeMap<String, String> = [
            ("PATH", "/opt/bin"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("LD_PRELOAD", "/usr/lib/libjemalloc.so"),
            (POD_IP_FOR_SHIM, "1.2.3.4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env: std::collections::BTreeMap<String, String> = container_env(
            "https://127.0.0.1:6443",
            "pod-a",
            &theirs,
            Path::new("/k/lib/shim.so"),
            Ipv4Addr::new(127, 1, 0, 9),
        )
        .into_iter()
        .collect();
        assert_eq!(env["PATH"], "/opt/bin");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.0.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "6443");
        assert_eq!(env["HOSTNAME"], "pod-a");
        assert_eq!(env["LD_PRELOAD"], "/k/lib/shim.so:/usr/lib/libjemalloc.so");
        assert_eq!(env[POD_IP_FOR_SHIM], "127.1.0.9", "the kubelet's own");
        let plain = container_env(
            "https://127.0.0.1:6443",
            "p",
            &Default::default(),
            Path::new("/s.so"),
            Ipv4Addr::LOCALHOST,
        );
        assert!(plain.contains(&("LD_PRELOAD".into(), "/s.so".into())));
        assert!(plain.contains(&("PATH".into(), DEFAULT_PATH.into())));
    }
}
