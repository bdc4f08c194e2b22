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
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use serde_json::Value;

use super::statefulset::POSTGRES_CONTAINER;

/// The template annotation (and so the pod annotation) holding the restart hash.
pub const RESTART_HASH_ANNOTATION: &str = "pgop.io/restart-hash";
/// The template annotation holding a hash of the containers' images (apart from the restart
/// hash, so that switching `enable_lazy_spilo_upgrade` on or off changes no pod's hash).
pub const IMAGES_HASH_ANNOTATION: &str = "pgop.io/images-hash";
/// Zalando's flag for a pod that must be recreated; pgop sets it on outdated pods and honours
/// it when set by hand.
pub const ROLLING_UPDATE_FLAG: &str = "zalando-postgres-operator-rolling-update-required";

const SPILO_CONFIGURATION: &str = "SPILO_CONFIGURATION";

/// What a pod must carry to be up to date.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateHashes {
    pub restart: String,
    pub images: String,
    /// `enable_lazy_spilo_upgrade`: other images alone do not make a pod outdated.
    pub lazy_images: bool,
}

impl TemplateHashes {
    pub fn of(template: &PodTemplateSpec, lazy_images: bool) -> Self {
        Self {
            restart: restart_hash(template),
            images: images_hash(template),
            lazy_images,
        }
    }

    /// Whether a pod with these annotations must be recreated. A pod without the hashes
    /// (made before pgop managed it) is left alone.
    pub fn outdated(&self, annotations: &std::collections::HashMap<String, String>) -> bool {
        let differs = |key: &str, want: &str| annotations.get(key).is_some_and(|have| have != want);
        differs(RESTART_HASH_ANNOTATION, &self.restart)
            || (!self.lazy_images && differs(IMAGES_HASH_ANNOTATION, &self.images))
    }

    /// The annotations the pod template carries.
    pub fn annotations(&self) -> [(String, String); 2] {
        [
            (RESTART_HASH_ANNOTATION.to_string(), self.restart.clone()),
            (IMAGES_HASH_ANNOTATION.to_string(), self.images.clone()),
        ]
    }
}

fn containers(template: &mut PodTemplateSpec) -> impl Iterator<Item = &mut Container> {
    template.spec.iter_mut().flat_map(|spec| {
        spec.containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
    })
}

/// The hash of what only a new pod picks up, images aside.
fn restart_hash(template: &PodTemplateSpec) -> String {
    let mut template = template.clone();
    if let Some(metadata) = template.metadata.as_mut() {
        metadata.annotations = None;
    }
    for container in containers(&mut template) {
        container.image = None;
        if container.name != POSTGRES_CONTAINER {
            continue;
        }
        for var in container.env.iter_mut().flatten() {
            if var.name == SPILO_CONFIGURATION {
                var.value = var.value.as_deref().map(without_dcs);
            }
        }
    }
    pgop_common::applied::content_hash(&serde_json::to_string(&template).unwrap_or_default())
}

/// The hash of the containers' names and images.
fn images_hash(template: &PodTemplateSpec) -> String {
    let mut template = template.clone();
    let images: Vec<(String, Option<String>)> = containers(&mut template)
        .map(|c| (c.name.clone(), c.image.clone()))
        .collect();
    pgop_common::applied::content_hash(&serde_json::to_string(&images).unwrap_or_default())
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
    use crate::pure::builders::statefulset::desired_statefulset;
    use crate::pure::roles::desired::tests::manifest;
    use pgop_common::config::OperatorConfig;

    const BASE: &str = "  teamId: acid\n  numberOfInstances: 2\n  volume: {size: 1Gi}\n  postgresql:\n    version: \"15\"\n    parameters:\n      max_connections: \"100\"\n      shared_buffers: 32MB\n";

    /// Whether a pod made from `BASE` under `config` is outdated by `spec` under `changed`.
    fn outdated(spec: &str, changed: &OperatorConfig, config: &OperatorConfig) -> bool {
        let pod = template(BASE, config);
        let pod_annotations = pod
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let desired = template(spec, changed);
        TemplateHashes::of(&desired, changed.enable_lazy_spilo_upgrade).outdated(&pod_annotations)
    }

    fn template(spec: &str, config: &OperatorConfig) -> PodTemplateSpec {
        let pg = manifest("acid-r", spec);
        let template = desired_statefulset(&pg, config)
            .unwrap()
            .spec
            .unwrap()
            .template;
        let annotations = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone());
        let hashes = TemplateHashes::of(&template, config.enable_lazy_spilo_upgrade);
        for (key, value) in hashes.annotations() {
            assert_eq!(
                annotations.as_ref().and_then(|a| a.get(&key)),
                Some(&value),
                "the template carries {key}"
            );
        }
        template
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
            ("the image, lazily", BASE.into(), image(&lazy), false),
            ("lazy upgrade switched on", BASE.into(), lazy.clone(), false),
            (
                "lazily, with another change",
                BASE.replace("32MB", "64MB"),
                image(&lazy),
                true,
            ),
        ];
        for (what, spec, changed, new_pods) in table {
            assert_eq!(outdated(&spec, &changed, &config), new_pods, "{what}");
        }
        // Pods that kept the old image under lazy upgrade roll once it is switched off.
        assert!(outdated(BASE, &image(&config), &lazy));
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
