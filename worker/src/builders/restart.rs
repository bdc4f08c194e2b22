//! What makes a pod outdated. The pod template carries `pgop.io/restart-hash`, a hash of the
//! parts of the template that only a new pod can pick up; a pod whose hash differs from the
//! StatefulSet's (or that carries Zalando's rolling-update flag) is recreated by the rolling
//! update. The hash lives on the pods themselves, so an interrupted rotation resumes after
//! any pgop process restarts, and pods already recreated are never recreated again.
//!
//! Left out of the hash, as Zalando's `compareStatefulSetWith` leaves them out:
//! - `bootstrap.dcs` of `SPILO_CONFIGURATION`: Patroni's dynamic configuration, patched live
//!   through its REST API;
//! - the template's annotations: they need no restart;
//! - container images with `enable_lazy_spilo_upgrade`: pods get the new image when they
//!   are recreated for another reason.
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use super::statefulset::POSTGRES_CONTAINER;

/// The template annotation (and so the pod annotation) holding the restart hash.
pub const RESTART_HASH_ANNOTATION: &str = "pgop.io/restart-hash";
/// Zalando's flag for a pod that must be recreated; pgop sets it on outdated pods and honours
/// it when set by hand.
pub const ROLLING_UPDATE_FLAG: &str = "zalando-postgres-operator-rolling-update-required";

const SPILO_CONFIGURATION: &str = "SPILO_CONFIGURATION";

/// The restart hash of `template`, ignoring images when `lazy_image_upgrade`.
pub fn restart_hash(template: &PodTemplateSpec, lazy_image_upgrade: bool) -> String {
    let mut template = template.clone();
    if let Some(metadata) = template.metadata.as_mut() {
        metadata.annotations = None;
    }
    if let Some(spec) = template.spec.as_mut() {
        for container in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            if lazy_image_upgrade {
                container.image = None;
            }
            if container.name != POSTGRES_CONTAINER {
                continue;
            }
            for var in container.env.iter_mut().flatten() {
                if var.name == SPILO_CONFIGURATION {
                    var.value = var.value.as_deref().map(without_dcs);
                }
            }
        }
    }
    crate::apply::content_hash(&serde_json::to_string(&template).unwrap_or_default())
}

/// `SPILO_CONFIGURATION` without `bootstrap.dcs` (unchanged when it is not JSON).
fn without_dcs(configuration: &str) -> String {
    match serde_json::from_str::<Value>(configuration) {
        Ok(mut value) => {
            if let Some(bootstrap) = value.get_mut("bootstrap").and_then(Value::as_object_mut) {
                bootstrap.remove("dcs");
            }
            value.to_string()
        }
        Err(_) => configuration.to_string(),
    }
}

/// Whether Zalando's rolling-update flag is set (Go's `ParseBool` true values).
pub fn flag_set(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::statefulset::desired_statefulset;
    use crate::roles::desired::tests::manifest;
    use pgop_common::config::OperatorConfig;

    const BASE: &str = "  teamId: acid\n  numberOfInstances: 2\n  volume: {size: 1Gi}\n  postgresql:\n    version: \"15\"\n    parameters:\n      max_connections: \"100\"\n      shared_buffers: 32MB\n";

    fn hash(spec: &str, config: &OperatorConfig) -> String {
        let pg = manifest("acid-r", spec);
        let sts = desired_statefulset(&pg, config).unwrap();
        let template = sts.spec.unwrap().template;
        let annotated = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(RESTART_HASH_ANNOTATION))
            .cloned();
        let computed = restart_hash(&template, config.enable_lazy_spilo_upgrade);
        assert_eq!(
            annotated.as_ref(),
            Some(&computed),
            "the template carries its hash"
        );
        computed
    }

    #[test]
    fn what_needs_new_pods() {
        let config = OperatorConfig::default();
        let lazy = OperatorConfig {
            enable_lazy_spilo_upgrade: true,
            ..OperatorConfig::default()
        };
        let image = |c: &OperatorConfig| OperatorConfig {
            docker_image: "registry.local/spilo-15:new".into(),
            ..c.clone()
        };
        let base = hash(BASE, &config);
        // (what changed, manifest, configuration, new pods?)
        let table: Vec<(&str, String, OperatorConfig, bool)> = vec![
            ("nothing", BASE.into(), config.clone(), false),
            (
                "a DCS parameter",
                BASE.replace("\"100\"", "\"200\""),
                config.clone(),
                false,
            ),
            (
                "patroni ttl",
                format!("{BASE}  patroni: {{ttl: 45}}\n"),
                config.clone(),
                false,
            ),
            (
                "a local parameter",
                BASE.replace("32MB", "64MB"),
                config.clone(),
                true,
            ),
            (
                "pod annotations",
                format!("{BASE}  podAnnotations: {{team: db}}\n"),
                config.clone(),
                false,
            ),
            (
                "resources",
                format!("{BASE}  resources: {{requests: {{cpu: 200m}}}}\n"),
                config.clone(),
                true,
            ),
            (
                "the instance count",
                BASE.replace("numberOfInstances: 2", "numberOfInstances: 3"),
                config.clone(),
                false,
            ),
            ("the image", BASE.into(), image(&config), true),
        ];
        for (what, spec, config, new_pods) in table {
            assert_eq!(hash(&spec, &config) != base, new_pods, "{what}");
        }
        // Lazy upgrade: the image alone keeps the pods, anything else still rolls them.
        let lazy_base = hash(BASE, &lazy);
        assert_eq!(hash(BASE, &image(&lazy)), lazy_base, "lazy image change");
        assert_ne!(
            hash(&BASE.replace("32MB", "64MB"), &image(&lazy)),
            lazy_base,
            "lazy, with another change"
        );
    }

    #[test]
    fn zalando_flag_values() {
        for (value, set) in [
            ("true", true),
            ("True", true),
            ("1", true),
            ("false", false),
            ("", false),
            ("yes", false),
        ] {
            assert_eq!(flag_set(value), set, "{value:?}");
        }
    }
}
