//! Pure builders: desired Kubernetes objects as functions of (manifest, operator
//! configuration). No I/O here; applying, waiting and status writing live elsewhere.
//!
//! The behaviour follows Zalando's operator (`pkg/cluster/k8sres.go`, `util.go`), so that
//! a cluster moved from Zalando's operator to pgop keeps the same objects.
pub mod labels;
pub mod logical_backup;
pub mod pdb;
pub mod pooler;
pub mod restart;
pub mod secrets;
pub mod service_account;
pub mod services;
pub mod spilo_env;
pub mod statefulset;
pub mod validate;
pub mod volumes;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgop_common::crd::Postgresql;

/// A manifest the builders cannot turn into objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("invalid manifest: {0}")]
    Invalid(String),
    #[error("invalid operator configuration: {0}")]
    Config(String),
}

pub use crate::pure::manifest::cluster_name;

/// Metadata shared by every object of the cluster: its name and the manifest's namespace.
fn object_meta(pg: &Postgresql, name: impl Into<String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: pg.metadata.namespace.clone(),
        ..ObjectMeta::default()
    }
}

/// `None` for an empty map, so that empty label/annotation sets are not serialized.
fn non_empty<K, V>(
    map: std::collections::BTreeMap<K, V>,
) -> Option<std::collections::BTreeMap<K, V>> {
    (!map.is_empty()).then_some(map)
}

/// A limit below its request would make the pod unschedulable: it is raised to the
/// request; with `set_memory_request_to_limit` the memory request is raised to its limit.
fn fit_limits_and_requests(
    requests: &mut std::collections::BTreeMap<
        String,
        k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    >,
    limits: &mut std::collections::BTreeMap<
        String,
        k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    >,
    set_memory_request_to_limit: bool,
) {
    let amount = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.and_then(|q| quantity::parse(&q.0).ok()).unwrap_or(0)
    };
    for resource in ["cpu", "memory"] {
        if let (Some(request), Some(limit)) = (requests.get(resource), limits.get(resource)) {
            if amount(Some(limit)) < amount(Some(request)) {
                limits.insert(resource.into(), request.clone());
            }
        }
    }
    if set_memory_request_to_limit {
        if let Some(limit) = limits.get("memory") {
            if amount(requests.get("memory")) < amount(Some(limit)) {
                requests.insert("memory".into(), limit.clone());
            }
        }
    }
}

/// Kubernetes resource quantities, shared with the watcher (which compares live objects).
pub use pgop_common::quantity;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use pgop_common::config::OperatorConfig;
    use pgop_common::crd::Postgresql;

    use super::*;

    /// Zalando's example manifests (the compatibility corpus) and pgop's own.
    fn corpus() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let pick = |dir: PathBuf, wanted: &dyn Fn(&str) -> bool| -> Vec<PathBuf> {
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut files: Vec<PathBuf> = entries
                .map(|e| e.unwrap().path())
                .filter(|p| wanted(p.file_name().unwrap().to_str().unwrap()))
                .collect();
            files.sort();
            files
        };
        let mut files = pick(root.join("../manifests"), &|name| {
            name.ends_with("-manifest.yaml")
        });
        assert!(files.len() >= 4, "pgop's example manifests: {files:?}");
        if let Some(zalando) = pgop_common::corpus::zalando_corpus(
            "every_corpus_manifest_builds (Zalando's manifests)",
        ) {
            let zalando = pick(zalando, &|name| {
                name.contains("postgres") && name.contains("manifest") && name.ends_with(".yaml")
            });
            assert!(
                zalando.len() >= 3,
                "Zalando's example manifests: {zalando:?}"
            );
            files.extend(zalando);
        }
        files
    }

    #[test]
    fn every_corpus_manifest_builds() {
        let files = corpus();
        for config in [
            OperatorConfig::default(),
            OperatorConfig {
                kubernetes_use_configmaps: true,
                enable_readiness_probe: true,
                ..OperatorConfig::default()
            },
        ] {
            for file in &files {
                let text = std::fs::read_to_string(file).unwrap();
                let mut pg: Postgresql = serde_yaml::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                pg.metadata.namespace = Some("default".into());
                check_manifest(&pg, &config, file);
            }
        }
    }

    fn check_manifest(pg: &Postgresql, config: &OperatorConfig, file: &Path) {
        let what = file.display();
        let name = pg.metadata.name.clone().unwrap();
        validate::validate(pg, config).unwrap_or_else(|e| panic!("{what}: {e}"));

        let sts =
            statefulset::desired_statefulset(pg, config).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(sts.metadata.name.as_deref(), Some(name.as_str()), "{what}");
        let spec = sts.spec.as_ref().unwrap();
        let container = &spec.template.spec.as_ref().unwrap().containers[0];
        let image = pg
            .spec
            .docker_image
            .clone()
            .unwrap_or(config.docker_image.clone());
        assert_eq!(container.image.as_deref(), Some(image.as_str()), "{what}");
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let size = &claim
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"];
        assert_eq!(size.0, pg.spec.volume.size, "{what}");
        assert_eq!(
            spec.replicas,
            Some(pg.spec.number_of_instances),
            "{what}: no limits configured"
        );

        // What the local kubelet reads from the environment.
        let env = container.env.as_ref().unwrap();
        let value = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
                .unwrap_or_else(|| panic!("{what}: {n} missing"))
        };
        assert_eq!(value("SCOPE"), name, "{what}");
        let spilo: serde_json::Value = serde_json::from_str(&value("SPILO_CONFIGURATION")).unwrap();
        assert!(spilo["bootstrap"]["dcs"].is_object(), "{what}");
        assert_eq!(
            spilo["bootstrap"]["users"]["zalandos"]["options"],
            serde_json::json!(["CREATEDB", "NOLOGIN"]),
            "{what}"
        );
        if let Some(shared_buffers) = pg.spec.postgresql.parameters.get("shared_buffers") {
            assert_eq!(
                spilo["postgresql"]["parameters"]["shared_buffers"],
                shared_buffers.as_str(),
                "{what}"
            );
        }
        let secret_refs: Vec<String> = env
            .iter()
            .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|s| s.name.clone())
            .collect();
        let users = secrets::credential_users(pg, config);
        for user in ["postgres", "standby"] {
            let secret = secrets::secret_name(config, user, &name);
            assert!(secret_refs.contains(&secret), "{what}: {secret}");
            assert!(users.contains(&user.to_string()), "{what}: {user}");
        }

        let services = services::desired_services(pg, config);
        let names: Vec<_> = services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, [name.clone(), format!("{name}-repl")], "{what}");
        let endpoints = services::desired_endpoints(pg, config);
        assert_eq!(
            endpoints.is_none(),
            config.kubernetes_use_configmaps,
            "{what}"
        );

        let namespaces = [
            sts.metadata.namespace.clone(),
            services[0].metadata.namespace.clone(),
            services[1].metadata.namespace.clone(),
            secrets::desired_secret(
                pg,
                config,
                &secrets::credential_secret(pg, config, &users[0]),
                "x",
            )
            .metadata
            .namespace,
            service_account::desired_service_account(pg, config)
                .unwrap()
                .metadata
                .namespace,
            service_account::desired_role_binding(pg, config)
                .unwrap()
                .metadata
                .namespace,
        ];
        for namespace in namespaces {
            assert_eq!(namespace.as_deref(), Some("default"), "{what}");
        }
    }

    #[test]
    fn every_object_points_to_its_manifest_when_configured() {
        let pg: Postgresql = serde_json::from_value(serde_json::json!({
            "apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
            "metadata": {"name": "acid-own", "namespace": "ns", "uid": "u-1"},
            "spec": {"teamId": "acid", "numberOfInstances": 1, "volume": {"size": "1Gi"},
                     "postgresql": {"version": "15"}, "enableConnectionPooler": true,
                     "enableLogicalBackup": true}
        }))
        .expect("manifest");
        for enabled in [true, false] {
            let config = pgop_common::config::OperatorConfig {
                enable_owner_references: enabled,
                ..Default::default()
            };
            let mut metas = vec![
                (
                    "statefulset",
                    statefulset::desired_statefulset(&pg, &config)
                        .unwrap()
                        .metadata,
                ),
                (
                    "secret",
                    secrets::desired_secret(
                        &pg,
                        &config,
                        &secrets::credential_secret(&pg, &config, "postgres"),
                        "x",
                    )
                    .metadata,
                ),
                (
                    "pooler",
                    pooler::desired_pooler_deployment(&pg, &config, pooler::PoolerRole::Master)
                        .unwrap()
                        .metadata,
                ),
                (
                    "cronjob",
                    logical_backup::desired_logical_backup(&pg, &config)
                        .unwrap()
                        .unwrap()
                        .metadata,
                ),
            ];
            metas.extend(
                services::desired_services(&pg, &config)
                    .into_iter()
                    .map(|s| ("service", s.metadata)),
            );
            metas.extend(
                pdb::desired_pdbs(&pg, &config)
                    .into_iter()
                    .map(|p| ("pdb", p.metadata)),
            );
            for (what, meta) in metas {
                let uids: Vec<String> = meta
                    .owner_references
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| o.uid)
                    .collect();
                let want: Vec<String> = if enabled { vec!["u-1".into()] } else { vec![] };
                assert_eq!(uids, want, "{what} (enable_owner_references: {enabled})");
            }
        }
    }
}
