//! One reconcile of a live cluster: build the desired objects (pure builders), write the
//! ones that differ, and report what the cluster's status should be.
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use pgop_common::config::OperatorConfig;
use pgop_common::crd::{PostgresStatus, Postgresql};
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;

use crate::apply::{apply, apply_adjusted, create_if_absent, Applied, ApplyError, FIELD_MANAGER};
use crate::builders::{
    secrets, service_account, services, statefulset, validate::validate, BuildError,
};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
}

impl SyncError {
    /// Errors no retry can fix: the operator configuration or what the manifest asks for is
    /// refused (e.g. a malformed source range); only a change of either helps.
    pub fn needs_a_change(&self) -> bool {
        match self {
            SyncError::Build(BuildError::Config(_)) => true,
            SyncError::Apply(ApplyError::Kube {
                source: kube::Error::Api(e),
                ..
            }) => matches!(e.code, 400 | 422),
            _ => false,
        }
    }
}

/// Which objects a reconcile wrote (names like `StatefulSet/acid-minimal-cluster`).
#[derive(Debug, Default)]
pub struct Written(pub Vec<String>);

impl Written {
    fn note(&mut self, applied: Applied, kind: &str, name: Option<&String>) {
        if applied == Applied::Written {
            self.0.push(format!(
                "{kind}/{}",
                name.map(String::as_str).unwrap_or("?")
            ));
        }
    }
}

/// Credentials as Zalando generates them: 64 random alphanumerics.
fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 64)
}

/// Brings every child object of `pg` to its desired state. Checks the manifest first, so
/// an invalid one touches nothing.
pub async fn sync_objects(
    client: &Client,
    namespace: &str,
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<Written, SyncError> {
    validate(pg, config)?;
    let statefulset = statefulset::desired_statefulset(pg, config)?;
    let account = service_account::desired_service_account(pg, config)?;
    let binding = service_account::desired_role_binding(pg, config)?;
    let cluster = pg.metadata.name.as_deref().unwrap_or_default();

    let mut written = Written::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let applied = create_if_absent(&accounts, &account).await?;
    written.note(applied, "ServiceAccount", account.metadata.name.as_ref());
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
    let applied = create_if_absent(&bindings, &binding).await?;
    written.note(applied, "RoleBinding", binding.metadata.name.as_ref());

    let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for user in secrets::credential_users(pg, config) {
        let secret = secrets::desired_secret(pg, config, &user, &random_password());
        let applied = create_if_absent(&secret_api, &secret).await?;
        written.note(applied, "Secret", secret.metadata.name.as_ref());
    }

    let service_api: Api<Service> = Api::namespaced(client.clone(), namespace);
    for service in services::desired_services(pg, config) {
        let applied = apply(&service_api, &service).await?;
        written.note(applied, "Service", service.metadata.name.as_ref());
    }
    if let Some(endpoints) = services::desired_endpoints(pg, config) {
        // Patroni owns the addresses; pgop only makes sure the object exists.
        let api: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
        let applied = create_if_absent(&api, &endpoints).await?;
        written.note(applied, "Endpoints", endpoints.metadata.name.as_ref());
    }

    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let applied =
        apply_adjusted(&sts_api, &statefulset, statefulset::keep_immutable_fields).await?;
    written.note(applied, "StatefulSet", statefulset.metadata.name.as_ref());
    tracing::debug!(%namespace, %cluster, written = ?written.0, "objects in sync");
    Ok(written)
}

#[derive(Debug, Serialize)]
struct StatusPatch<'a> {
    status: &'a PostgresStatus,
}

/// Writes `status.PostgresClusterStatus`. A cluster deleted meanwhile is not an error.
pub async fn write_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &str,
) -> Result<(), SyncError> {
    let api: Api<Postgresql> = Api::namespaced(client.clone(), namespace);
    let patch = StatusPatch {
        status: &PostgresStatus {
            postgres_cluster_status: status.to_string(),
        },
    };
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(SyncError::Status(e)),
    }
}
