//! A container's environment as the kubelet computes it: `envFrom` first, then `env` in
//! order with `$(VAR)` expansion, values from Secrets, ConfigMaps and the pod's own fields.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// Secrets and ConfigMaps of the pod's namespace, decoded to strings.
#[derive(Debug, Default, Clone)]
pub struct ReferencedData {
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvError {
    #[error("secret {0:?} not found")]
    SecretMissing(String),
    #[error("key {key:?} not found in secret {name:?}")]
    SecretKeyMissing { name: String, key: String },
    #[error("configmap {0:?} not found")]
    ConfigMapMissing(String),
    #[error("key {key:?} not found in configmap {name:?}")]
    ConfigMapKeyMissing { name: String, key: String },
    #[error("unsupported field path {0:?}")]
    FieldPath(String),
}

/// Names of the Secrets and ConfigMaps a container's environment refers to.
pub fn referenced_names(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut secrets = BTreeSet::new();
    let mut config_maps = BTreeSet::new();
    for source in container.env_from.iter().flatten() {
        if let Some(r) = &source.secret_ref {
            secrets.insert(r.name.clone());
        }
        if let Some(r) = &source.config_map_ref {
            config_maps.insert(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(r) = &from.secret_key_ref {
            secrets.insert(r.name.clone());
        }
        if let Some(r) = &from.config_map_key_ref {
            config_maps.insert(r.name.clone());
        }
    }
    (secrets, config_maps)
}

/// The resolved environment, in definition order (later definitions win).
pub fn resolve_env(
    pod: &Pod,
    pod_ip: &str,
    host_ip: &str,
    container: &Container,
    data: &ReferencedData,
) -> Result<BTreeMap<String, String>, EnvError> {
    let mut env = BTreeMap::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(r) = &source.secret_ref {
            match data.secrets.get(&r.name) {
                Some(values) => env.extend(
                    values
                        .iter()
                        .map(|(k, v)| (format!("{prefix}{k}"), v.clone())),
                ),
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::SecretMissing(r.name.clone())),
            }
        }
        if let Some(r) = &source.config_map_ref {
            match data.config_maps.get(&r.name) {
                Some(values) => env.extend(
                    values
                        .iter()
                        .map(|(k, v)| (format!("{prefix}{k}"), v.clone())),
                ),
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::ConfigMapMissing(r.name.clone())),
            }
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = resolve_var(pod, pod_ip, host_ip, var, data)? {
            let expanded = expand(&value, &env);
            env.insert(var.name.clone(), expanded);
        }
    }
    Ok(env)
}

fn resolve_var(
    pod: &Pod,
    pod_ip: &str,
    host_ip: &str,
    var: &EnvVar,
    data: &ReferencedData,
) -> Result<Option<String>, EnvError> {
    let Some(from) = &var.value_from else {
        return Ok(Some(var.value.clone().unwrap_or_default()));
    };
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional == Some(true);
        return match data.secrets.get(&r.name) {
            None if optional => Ok(None),
            None => Err(EnvError::SecretMissing(r.name.clone())),
            Some(values) => match values.get(&r.key) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(EnvError::SecretKeyMissing {
                    name: r.name.clone(),
                    key: r.key.clone(),
                }),
            },
        };
    }
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional == Some(true);
        return match data.config_maps.get(&r.name) {
            None if optional => Ok(None),
            None => Err(EnvError::ConfigMapMissing(r.name.clone())),
            Some(values) => match values.get(&r.key) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(EnvError::ConfigMapKeyMissing {
                    name: r.name.clone(),
                    key: r.key.clone(),
                }),
            },
        };
    }
    if let Some(field) = &from.field_ref {
        return field_value(pod, pod_ip, host_ip, &field.field_path).map(Some);
    }
    // resourceFieldRef: processes here are not limited, so the value carries no meaning; an
    // empty string keeps programs that only check for presence working.
    Ok(Some(String::new()))
}

/// Values of the downward API field paths the kubelet supports.
pub fn field_value(pod: &Pod, pod_ip: &str, host_ip: &str, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let bracketed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['").and_then(|r| r.strip_suffix("']")))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        _ => {
            if let Some(key) = bracketed("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = bracketed("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(EnvError::FieldPath(path.to_string()));
            }
        }
    })
}

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` escapes a `$`,
/// undefined references stay as written.
pub(crate) fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "acid-test-0", "namespace": "ns", "uid": "u-1", "labels": {"team": "acid"}},
            "spec": {"nodeName": "node-1", "containers": []}
        }))
        .unwrap()
    }

    fn container(env: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "postgres", "env": env})).unwrap()
    }

    fn data() -> ReferencedData {
        let mut d = ReferencedData::default();
        d.secrets.insert(
            "creds".into(),
            [("password".to_string(), "s3cret".to_string())].into(),
        );
        d.config_maps.insert(
            "cfg".into(),
            [("MODE".to_string(), "fast".to_string())].into(),
        );
        d
    }

    #[test]
    fn table_of_sources() {
        let cases = [
            (json!([{"name": "A", "value": "plain"}]), "A", Ok("plain")),
            (
                json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}]),
                "A",
                Ok("s3cret"),
            ),
            (
                json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}}]),
                "A",
                Ok("fast"),
            ),
            (
                json!([{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
                "A",
                Ok("acid-test-0"),
            ),
            (
                json!([{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]),
                "A",
                Ok("127.1.0.5"),
            ),
            (
                json!([{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}}]),
                "A",
                Ok("acid"),
            ),
            (
                json!([{"name": "B", "value": "x"}, {"name": "A", "value": "$(B)-$(C)-$$(B)"}]),
                "A",
                Ok("x-$(C)-$(B)"),
            ),
            (
                json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]),
                "A",
                Err(EnvError::SecretMissing("nope".into())),
            ),
            (
                json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}}]),
                "A",
                Err(EnvError::SecretKeyMissing {
                    name: "creds".into(),
                    key: "user".into(),
                }),
            ),
        ];
        for (env, name, expected) in cases {
            let got = resolve_env(
                &pod(),
                "127.1.0.5",
                "127.0.0.1",
                &container(env.clone()),
                &data(),
            );
            match (got, expected) {
                (Ok(env_map), Ok(want)) => {
                    assert_eq!(env_map.get(name).map(String::as_str), Some(want), "{env}")
                }
                (Err(e), Err(want)) => assert_eq!(e, want, "{env}"),
                (got, want) => panic!("{env}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn optional_reference_to_missing_secret_leaves_variable_unset() {
        let c = container(
            json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}}]),
        );
        let env = resolve_env(&pod(), "", "", &c, &data()).unwrap();
        assert!(!env.contains_key("A"));
    }

    #[test]
    fn env_overrides_env_from_and_prefix_applies() {
        let mut c = container(json!([{"name": "P_MODE", "value": "slow"}]));
        c.env_from = serde_json::from_value(json!([{"configMapRef": {"name": "cfg"}, "prefix": "P_"}, {"secretRef": {"name": "creds"}}])).unwrap();
        let env = resolve_env(&pod(), "", "", &c, &data()).unwrap();
        assert_eq!(env["P_MODE"], "slow");
        assert_eq!(env["password"], "s3cret");
        let (secrets, cms) = referenced_names(&c);
        assert!(secrets.contains("creds") && cms.contains("cfg"));
    }
}
