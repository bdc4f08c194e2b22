//! Removing a deleted cluster's objects. The manifest is gone by then, so everything is
//! found by name or by the cluster's selector labels.
use crate::cache::children::Seen;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};
use pgop_common::config::OperatorConfig;

use crate::clients::apply::{delete_as, ApplyError};
use crate::pure::builders::logical_backup::logical_backup_job_name;
use crate::pure::builders::pdb::pdb_names;
use pgop_common::discovery::ServedVersions;

/// A deletion reads what it removes: it is rare, and must not trust a report that lags.
const UNOBSERVED: Seen = Seen::Unobserved;

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("deleting {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {0}")]
    Apply(#[from] ApplyError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The StatefulSet is gone but these many pods still stop; Patroni would recreate its
    /// objects if they were removed now.
    PodsStopping(usize),
    Done,
}

/// `application=spilo,cluster-name=<name>`: what selects every object of the cluster.
pub fn cluster_selector(config: &OperatorConfig, name: &str) -> String {
    crate::pure::builders::labels::cluster_selector(config, name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn ignore_missing<T>(what: &str, result: Result<T, kube::Error>) -> Result<(), DeleteError> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(DeleteError::Kube {
            what: what.to_string(),
            source,
        }),
    }
}

/// One step of the deletion: the StatefulSet, the poolers and the backup job first, then
/// (once the database pods are gone) the Services, Patroni's objects, the disruption
/// budgets, the Secrets and the volume claims as configured.
pub async fn delete_cluster(
    client: &Client,
    served: &ServedVersions,
    namespace: &str,
    name: &str,
    config: &OperatorConfig,
    secrets_elsewhere: &[(String, String)],
) -> Result<Progress, DeleteError> {
    let selector = ListParams::default().labels(&cluster_selector(config, name));
    let background = DeleteParams::background();

    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    ignore_missing("StatefulSet", sts.delete(name, &background).await)?;
    let poolers = [format!("{name}-pooler"), format!("{name}-pooler-repl")];
    for pooler in &poolers {
        delete_as::<Deployment>(client, namespace, pooler, "v1", &UNOBSERVED).await?;
    }
    let job = logical_backup_job_name(config, name);
    delete_as::<CronJob>(client, namespace, &job, &served.cron_job, &UNOBSERVED).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let stopping = pods
        .list_metadata(&selector)
        .await
        .map_err(|source| DeleteError::Kube {
            what: "pods (listing)".into(),
            source,
        })?
        .items
        .len();
    if stopping > 0 {
        return Ok(Progress::PodsStopping(stopping));
    }

    // `<cluster>-config` is Patroni's, made in Endpoints mode to keep its DCS object alive.
    let services = [
        name.to_string(),
        format!("{name}-repl"),
        format!("{name}-config"),
    ];
    for service in services.iter().chain(&poolers) {
        delete_as::<Service>(client, namespace, service, "v1", &UNOBSERVED).await?;
    }
    for budget in pdb_names(config, name) {
        delete_as::<PodDisruptionBudget>(
            client,
            namespace,
            &budget,
            &served.pod_disruption_budget,
            &UNOBSERVED,
        )
        .await?;
    }
    // Patroni's DCS objects (Endpoints or ConfigMaps, depending on the configuration).
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    ignore_missing(
        "Endpoints",
        endpoints.delete_collection(&background, &selector).await,
    )?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    ignore_missing(
        "ConfigMaps",
        config_maps.delete_collection(&background, &selector).await,
    )?;
    if config.enable_secrets_deletion {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        ignore_missing(
            "Secrets",
            secrets.delete_collection(&background, &selector).await,
        )?;
        for (other, secret) in secrets_elsewhere {
            let api: Api<Secret> = Api::namespaced(client.clone(), other);
            ignore_missing("Secret", api.delete(secret, &background).await)?;
        }
    }
    if config.enable_persistent_volume_claim_deletion {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
        ignore_missing(
            "PersistentVolumeClaims",
            claims.delete_collection(&background, &selector).await,
        )?;
    }
    Ok(Progress::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selector_follows_the_configuration() {
        let mut config = OperatorConfig::default();
        assert_eq!(
            cluster_selector(&config, "acid-a"),
            "application=spilo,cluster-name=acid-a"
        );
        config.cluster_name_label = "cluster".into();
        config.cluster_labels = [("app".to_string(), "db".to_string())].into();
        assert_eq!(cluster_selector(&config, "x"), "app=db,cluster=x");
    }
}
