//! The pods' service account and its RoleBinding, created in each namespace that holds a
//! cluster: Patroni uses them to manage its leader Endpoints/ConfigMaps and pod labels.
//!
//! As in Zalando, the operator configuration may replace both with a definition of its own
//! (`pod_service_account_definition`, `pod_service_account_role_binding_definition`).
//! Definitions are read as JSON, the form of Zalando's defaults; YAML needs `serde_yaml`
//! as a (non-dev) dependency of the worker.
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;
use serde::de::DeserializeOwned;

use super::BuildError;

/// Zalando binds the service account to a ClusterRole of the same name, which the
/// administrator creates once (`postgres-pod` by default).
const ROLE_KIND: &str = "ClusterRole";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const SERVICE_ACCOUNT_KIND: &str = "ServiceAccount";

/// The ServiceAccount named `pod_service_account_name` in the cluster's namespace. A
/// configured definition keeps its other fields but not its name or namespace (Zalando
/// also renames it to `pod_service_account_name`).
pub fn desired_service_account(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<ServiceAccount, BuildError> {
    let mut account: ServiceAccount = match &config.pod_service_account_definition {
        Some(definition) => parse_definition(definition, "pod_service_account_definition")?,
        None => ServiceAccount::default(),
    };
    account.metadata.name = Some(config.pod_service_account_name.clone());
    account.metadata.namespace = pg.metadata.namespace.clone();
    Ok(account)
}

/// The RoleBinding granting the pods' service account its ClusterRole in the cluster's
/// namespace; by default both are named `pod_service_account_name`. Service-account
/// subjects without a namespace get the cluster's.
pub fn desired_role_binding(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<RoleBinding, BuildError> {
    let account = &config.pod_service_account_name;
    let mut binding: RoleBinding = match &config.pod_service_account_role_binding_definition {
        Some(definition) => {
            parse_definition(definition, "pod_service_account_role_binding_definition")?
        }
        None => RoleBinding {
            role_ref: RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: ROLE_KIND.into(),
                name: account.clone(),
            },
            subjects: Some(vec![Subject {
                kind: SERVICE_ACCOUNT_KIND.into(),
                name: account.clone(),
                ..Subject::default()
            }]),
            ..RoleBinding::default()
        },
    };
    if binding.role_ref.name.is_empty() || binding.role_ref.kind.is_empty() {
        return Err(BuildError::Config(
            "pod_service_account_role_binding_definition has no roleRef kind and name".into(),
        ));
    }
    if binding
        .metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        binding.metadata.name = Some(account.clone());
    }
    binding.metadata.namespace = pg.metadata.namespace.clone();
    for subject in binding.subjects.iter_mut().flatten() {
        if subject.kind == SERVICE_ACCOUNT_KIND && subject.namespace.is_none() {
            subject.namespace = pg.metadata.namespace.clone();
        }
    }
    Ok(binding)
}

/// Reads a configured object; k8s-openapi rejects a definition of another `kind`.
fn parse_definition<T: DeserializeOwned>(definition: &str, key: &str) -> Result<T, BuildError> {
    serde_json::from_str(definition).map_err(|e| {
        BuildError::Config(format!(
            "{key} is not a valid JSON definition of the expected object: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::builders::labels::tests::minimal;

    #[test]
    fn defaults_follow_zalando() {
        let pg = minimal();
        let config = OperatorConfig::default();
        let account = desired_service_account(&pg, &config).unwrap();
        assert_eq!(account.metadata.name.as_deref(), Some("postgres-pod"));
        assert_eq!(account.metadata.namespace.as_deref(), Some("default"));

        let binding = desired_role_binding(&pg, &config).unwrap();
        assert_eq!(binding.metadata.name.as_deref(), Some("postgres-pod"));
        assert_eq!(binding.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            binding.role_ref,
            RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "postgres-pod".into(),
            }
        );
        assert_eq!(
            binding.subjects,
            Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "postgres-pod".into(),
                namespace: Some("default".into()),
                api_group: None,
            }])
        );
    }

    #[test]
    fn configured_definitions() {
        let pg = minimal();
        let config = OperatorConfig {
            pod_service_account_name: "pg-pods".into(),
            pod_service_account_definition: Some(
                r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"other","namespace":"x","annotations":{"iam":"role"}},"automountServiceAccountToken":true}"#.into(),
            ),
            pod_service_account_role_binding_definition: Some(
                r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"pg-binding"},
                   "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"custom-role"},
                   "subjects":[{"kind":"ServiceAccount","name":"pg-pods"},{"kind":"ServiceAccount","name":"monitor","namespace":"ops"}]}"#.into(),
            ),
            ..OperatorConfig::default()
        };
        let account = desired_service_account(&pg, &config).unwrap();
        assert_eq!(account.metadata.name.as_deref(), Some("pg-pods"));
        assert_eq!(account.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(account.automount_service_account_token, Some(true));
        assert_eq!(
            account.metadata.annotations.unwrap()["iam"],
            "role".to_string()
        );

        let binding = desired_role_binding(&pg, &config).unwrap();
        assert_eq!(binding.metadata.name.as_deref(), Some("pg-binding"));
        assert_eq!(binding.role_ref.name, "custom-role");
        let namespaces: Vec<_> = binding
            .subjects
            .unwrap()
            .into_iter()
            .map(|s| s.namespace.unwrap_or_default())
            .collect();
        assert_eq!(namespaces, ["default", "ops"]);
    }

    #[test]
    fn bad_definitions_are_configuration_errors() {
        let pg = minimal();
        let cases = [
            (Some("not json"), None),
            (Some(r#"{"apiVersion":"v1","kind":"ConfigMap"}"#), None),
            (None, Some(r#"{"kind":"RoleBinding"}"#)),
            (None, Some(r#"{"apiVersion":"v1","kind":"ServiceAccount"}"#)),
        ];
        for (account, binding) in cases {
            let config = OperatorConfig {
                pod_service_account_definition: account.map(String::from),
                pod_service_account_role_binding_definition: binding.map(String::from),
                ..OperatorConfig::default()
            };
            let err = match account {
                Some(_) => desired_service_account(&pg, &config).unwrap_err(),
                None => desired_role_binding(&pg, &config).unwrap_err(),
            };
            match err {
                BuildError::Config(message) => {
                    assert!(message.contains("pod_service_account"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
