//! One reconcile of a live cluster: build the desired objects (pure builders), write the
//! ones that differ, and report what the cluster's status should be.
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, Service,
    ServiceAccount, VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use pgop_common::config::OperatorConfig;
use pgop_common::crd::{PostgresStatus, Postgresql};
use rand::distr::{Alphanumeric, SampleString};

use crate::clients::apply::{
    apply, apply_adjusted, apply_as, create_if_absent, create_or_relabel, delete_as, Applied,
    ApplyError, FIELD_MANAGER,
};
use crate::pure::builders::{
    logical_backup, pdb, pooler, restart, secrets, service_account, services,
    spilo_env::{self, PodEnvironment},
    statefulset,
    validate::validate,
    volumes, BuildError,
};
use pgop_common::discovery::ServedVersions;

use crate::cache::children::Observed;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("setting the finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    #[error("{0}")]
    PodEnvironment(String),
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

/// What a reconcile of the objects leaves for the steps after it.
#[derive(Debug)]
pub struct Synced {
    pub written: Written,
    /// What the pods must carry to be up to date: others are rolled.
    pub template: restart::TemplateHashes,
    /// What the manifest asks for that is refused while the rest is in sync (shrinking a
    /// volume).
    pub problems: Vec<String>,
}

impl Written {
    fn note(&mut self, applied: Applied, kind: &str, name: Option<&String>) {
        if applied == Applied::Written {
            self.0.push(format!(
                "{kind}/{}",
                name.map(String::as_str).unwrap_or("?")
            ));
        }
    }

    /// Runs a stage's writes concurrently; notes the written ones in the stage's order.
    async fn stage(&mut self, writes: Vec<Write<'_>>) -> Result<(), SyncError> {
        for (applied, label) in futures::future::try_join_all(writes).await? {
            if applied == Applied::Written {
                self.0.push(label);
            }
        }
        Ok(())
    }
}

/// One object's write in a stage: how it went, and `Kind/name`.
type Write<'a> = futures::future::BoxFuture<'a, Result<(Applied, String), SyncError>>;

fn labelled<'a>(
    label: String,
    applied: impl std::future::Future<Output = Result<Applied, ApplyError>> + Send + 'a,
) -> Write<'a> {
    Box::pin(async move { Ok((applied.await?, label)) })
}

fn write<'a>(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kind: &str,
    applied: impl std::future::Future<Output = Result<Applied, ApplyError>> + Send + 'a,
) -> Write<'a> {
    labelled(format!("{kind}/{}", name_of(metadata)), applied)
}

/// Credentials as Zalando generates them: 64 random alphanumerics.
pub fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 64)
}

/// Brings every child object of `pg` to its desired state. Checks the manifest first, so
/// an invalid one touches nothing. What `observed` shows as pgop left it costs no request.
pub(crate) async fn sync_objects(
    client: &Client,
    served: &ServedVersions,
    namespace: &str,
    pg: &Postgresql,
    config: &OperatorConfig,
    observed: &Observed<'_>,
) -> Result<Synced, SyncError> {
    validate(pg, config)?;
    let pod_env = pod_environment(client, namespace, config).await?;
    let statefulset = statefulset::desired_statefulset_with(pg, config, &pod_env)?;
    let template = statefulset
        .spec
        .as_ref()
        .map(|spec| restart::TemplateHashes::of(&spec.template, config.enable_lazy_spilo_upgrade))
        .unwrap_or_default();
    let account = service_account::desired_service_account(pg, config)?;
    let binding = service_account::desired_role_binding(pg, config)?;
    let cluster = pg.metadata.name.as_deref().unwrap_or_default();

    // Stages, each written concurrently: what the pods need (their account, credentials,
    // Services), then the StatefulSet, then the rest. A new cluster's pass costs a few round
    // trips instead of one per object.
    let mut written = Written::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
    let service_api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let endpoints_api: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    let credentials: Vec<(Api<Secret>, Secret)> = secrets::credential_secrets(pg, config)
        .into_iter()
        .map(|target| {
            let secret = secrets::desired_secret(pg, config, &target, &random_password());
            (Api::namespaced(client.clone(), &target.namespace), secret)
        })
        .collect();
    let services = services::desired_services(pg, config);
    // Patroni owns the Endpoints' addresses; pgop only makes sure the object exists.
    let endpoints = services::desired_endpoints(pg, config);
    let mut first: Vec<Write<'_>> = vec![
        write(&account.metadata, "ServiceAccount", async {
            let seen = observed.seen(namespace, "ServiceAccount", &name_of(&account.metadata));
            create_if_absent(&accounts, &account, &seen).await
        }),
        write(&binding.metadata, "RoleBinding", async {
            let seen = observed.seen(namespace, "RoleBinding", &name_of(&binding.metadata));
            create_if_absent(&bindings, &binding, &seen).await
        }),
    ];
    for (api, secret) in &credentials {
        first.push(write(&secret.metadata, "Secret", async move {
            let secret_namespace = secret.metadata.namespace.as_deref().unwrap_or(namespace);
            let seen = observed.seen(secret_namespace, "Secret", &name_of(&secret.metadata));
            create_or_relabel(api, secret, &seen).await
        }));
    }
    for service in &services {
        first.push(write(&service.metadata, "Service", async {
            let seen = observed.seen(namespace, "Service", &name_of(&service.metadata));
            apply(&service_api, service, &seen).await
        }));
    }
    if let Some(endpoints) = &endpoints {
        first.push(write(&endpoints.metadata, "Endpoints", async {
            let seen = observed.seen(namespace, "Endpoints", &name_of(&endpoints.metadata));
            create_if_absent(&endpoints_api, endpoints, &seen).await
        }));
    }
    written.stage(first).await?;

    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let seen = observed.seen(namespace, "StatefulSet", &name_of(&statefulset.metadata));
    let applied = apply_adjusted(
        &sts_api,
        &statefulset,
        &seen,
        statefulset::keep_immutable_fields,
    )
    .await?;
    written.note(applied, "StatefulSet", statefulset.metadata.name.as_ref());
    let problems = resize_claims(client, namespace, pg, config, observed, &mut written).await?;

    let pooler_secret = pooler::pooler_user(pg, config).map(|user| {
        let target = secrets::credential_secret(pg, config, &user);
        let secret = secrets::desired_secret(pg, config, &target, &random_password());
        (
            Api::<Secret>::namespaced(client.clone(), &target.namespace),
            secret,
        )
    });
    if let Some((api, secret)) = &pooler_secret {
        // The pooler's pods read its credentials: the Secret comes before the Deployment.
        let secret_namespace = secret.metadata.namespace.as_deref().unwrap_or(namespace);
        let seen = observed.seen(secret_namespace, "Secret", &name_of(&secret.metadata));
        let applied = create_or_relabel(api, secret, &seen).await?;
        written.note(applied, "Secret", secret.metadata.name.as_ref());
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let mut poolers = Vec::new();
    for role in pooler::PoolerRole::ALL {
        let name = pooler::pooler_name(pg, role);
        let wanted = match pooler::pooler_enabled(pg, config, role) {
            true => Some((
                pooler::desired_pooler_deployment(pg, config, role)?,
                pooler::desired_pooler_service(pg, config, role),
            )),
            false => None,
        };
        poolers.push((name, wanted));
    }
    let budgets = pdb::desired_pdbs(pg, config);
    let job_name = logical_backup::logical_backup_job_name(config, cluster);
    let job = logical_backup::desired_logical_backup(pg, config)?;
    let mut rest: Vec<Write<'_>> = Vec::new();
    for (name, wanted) in &poolers {
        match wanted {
            Some((deployment, service)) => {
                rest.push(labelled(format!("Deployment/{name}"), async {
                    let seen = observed.seen(namespace, "Deployment", name);
                    apply(&deployments, deployment, &seen).await
                }));
                rest.push(labelled(format!("Service/{name}"), async {
                    let seen = observed.seen(namespace, "Service", name);
                    apply(&service_api, service, &seen).await
                }));
            }
            // Disabled (or never enabled): removed if present.
            None => {
                rest.push(labelled(format!("Deployment (removed)/{name}"), async {
                    let seen = observed.seen(namespace, "Deployment", name);
                    delete_as::<Deployment>(client, namespace, name, "v1", &seen).await
                }));
                rest.push(labelled(format!("Service (removed)/{name}"), async {
                    let seen = observed.seen(namespace, "Service", name);
                    delete_as::<Service>(client, namespace, name, "v1", &seen).await
                }));
            }
        }
    }
    for budget in &budgets {
        rest.push(write(&budget.metadata, "PodDisruptionBudget", async {
            let seen = observed.seen(namespace, "PodDisruptionBudget", &name_of(&budget.metadata));
            apply_as(
                client,
                namespace,
                budget,
                &served.pod_disruption_budget,
                &seen,
            )
            .await
        }));
    }
    rest.push(labelled(format!("CronJob/{job_name}"), async {
        let seen = observed.seen(namespace, "CronJob", &job_name);
        let version = &served.cron_job;
        match &job {
            Some(job) => apply_as(client, namespace, job, version, &seen).await,
            None => delete_as::<CronJob>(client, namespace, &job_name, version, &seen).await,
        }
    }));
    written.stage(rest).await?;

    if let Some(present) = crate::cluster::finalizer::wanted_change(pg, config.enable_finalizers) {
        crate::cluster::finalizer::set(
            client,
            namespace,
            cluster,
            pg.metadata.uid.as_deref().unwrap_or_default(),
            present,
        )
        .await
        .map_err(SyncError::Finalizer)?;
        written.0.push(format!(
            "finalizer {}",
            if present { "added" } else { "removed" }
        ));
    }
    tracing::debug!(%namespace, %cluster, written = ?written.0, "objects in sync");
    Ok(Synced {
        written,
        template,
        problems,
    })
}

fn name_of(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    metadata.name.clone().unwrap_or_default()
}

/// Grows the cluster's data volume claims to `volume.size` (`storage_resize_mode`); the
/// refusals (a shrink) are returned for the status. The claims are the ones the watcher
/// reported.
async fn resize_claims(
    client: &Client,
    namespace: &str,
    pg: &Postgresql,
    config: &OperatorConfig,
    observed: &Observed<'_>,
    written: &mut Written,
) -> Result<Vec<String>, SyncError> {
    if config.storage_resize_mode == "off" {
        return Ok(Vec::new());
    }
    let cluster = pg.metadata.name.as_deref().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let failed = |source| {
        SyncError::Apply(ApplyError::Kube {
            kind: "PersistentVolumeClaim".into(),
            name: format!("of {cluster}"),
            source,
        })
    };
    let claims = observed.children.claims();
    let resize = volumes::claim_resize(pg, config, &claims);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    for name in &resize.grow {
        let patch = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(resize.size.clone()),
                    )])),
                    limits: None,
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        };
        api.patch(name, &params, &Patch::Merge(&patch))
            .await
            .map_err(failed)?;
        written.0.push(format!(
            "PersistentVolumeClaim/{name} (resized to {})",
            resize.size
        ));
    }
    Ok(resize.problems)
}

/// The extra pod environment the configuration names (`pod_environment_configmap`, read from
/// the namespace it names or the cluster's; `pod_environment_secret`, the cluster's): the
/// ConfigMap's values, and only the Secret's keys (its values stay in the Secret).
async fn pod_environment(
    client: &Client,
    namespace: &str,
    config: &OperatorConfig,
) -> Result<PodEnvironment, SyncError> {
    let (config_map, secret) = spilo_env::pod_environment_sources(config);
    let mut env = PodEnvironment::default();
    if let Some((ns, name)) = config_map {
        let ns = ns.as_deref().unwrap_or(namespace);
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let found = api.get_opt(&name).await.map_err(|e| {
            SyncError::PodEnvironment(format!("reading ConfigMap {ns}/{name}: {e}"))
        })?;
        let found = found.ok_or_else(|| {
            SyncError::PodEnvironment(format!(
                "ConfigMap {ns}/{name} (pod_environment_configmap) does not exist"
            ))
        })?;
        env.config_map = found.data.unwrap_or_default();
    }
    if let Some((_, name)) = secret {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let found = api.get_opt(&name).await.map_err(|e| {
            SyncError::PodEnvironment(format!("reading Secret {namespace}/{name}: {e}"))
        })?;
        let found = found.ok_or_else(|| {
            SyncError::PodEnvironment(format!(
                "Secret {namespace}/{name} (pod_environment_secret) does not exist"
            ))
        })?;
        env.secret_keys = found.data.unwrap_or_default().into_keys().collect();
        env.secret_name = Some(name);
    }
    Ok(env)
}

/// The status the object carries now; None when the object is gone.
pub async fn read_status(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<PostgresStatus>, kube::Error> {
    let object = crate::clients::apply::postgresql_api(client, namespace)
        .get_opt(name)
        .await?;
    Ok(object.map(|o| {
        o.data
            .get("status")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default()
    }))
}

/// Writes the status: Zalando's `PostgresClusterStatus`, and pgop's `message` and
/// `nextRetry`, removed when absent. Any 2xx answer is success, whatever the object holds;
/// a cluster deleted meanwhile is not an error.
pub async fn write_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &PostgresStatus,
) -> Result<(), SyncError> {
    let patch = serde_json::json!({
        "status": {
            "PostgresClusterStatus": status.postgres_cluster_status,
            "message": status.message,
            "nextRetry": status.next_retry,
        }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match crate::clients::apply::postgresql_api(client, namespace)
        .patch_status(name, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(SyncError::Status(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::children::{Children, SharedChildren};
    use crate::clients::mock_api::{
        as_reported, client, holding_client, recording_client, Exchange,
    };

    #[tokio::test]
    async fn what_the_pods_need_is_written_at_once_and_the_statefulset_after_it() {
        let pg = crate::pure::roles::desired::tests::manifest(
            "acid-stages",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n",
        );
        let config = OperatorConfig::default();
        let shared = SharedChildren::default();
        let mut children = Children::default();
        children.complete();
        let observed = Observed {
            namespace: "default",
            children: &children,
            shared: &shared,
            shared_name: &config.pod_service_account_name,
        };
        // The account, its binding, two credentials Secrets, two Services, the Endpoints.
        let (c, server) = holding_client(7, std::time::Duration::from_secs(5));
        let synced = sync_objects(
            &c,
            &ServedVersions::default(),
            "default",
            &pg,
            &config,
            &observed,
        )
        .await
        .unwrap();
        drop(c);
        let held = server.await.unwrap();
        assert!(
            held.iter().all(|p| !p.contains("statefulsets")),
            "the StatefulSet waits for what its pods read: {held:#?}"
        );
        assert_eq!(
            synced.written.0[..2],
            ["ServiceAccount/postgres-pod", "RoleBinding/postgres-pod"]
        );
        assert!(synced
            .written
            .0
            .contains(&"StatefulSet/acid-stages".to_string()));
    }

    #[tokio::test]
    async fn a_pass_over_objects_reported_as_applied_sends_no_request() {
        let pg = crate::pure::roles::desired::tests::manifest(
            "acid-pass",
            "  teamId: acid\n  numberOfInstances: 2\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  users: {app: []}\n",
        );
        let config = OperatorConfig::default();
        let served = ServedVersions::default();
        let shared = SharedChildren::default();
        // A new cluster: the report says nothing exists, so every object is written without
        // a read first.
        let mut children = Children::default();
        children.complete();
        let (c, recorder) = recording_client();
        let observed = Observed {
            namespace: "default",
            children: &children,
            shared: &shared,
            shared_name: &config.pod_service_account_name,
        };
        let synced = sync_objects(&c, &served, "default", &pg, &config, &observed)
            .await
            .unwrap();
        let requests = recorder.take();
        assert!(
            requests
                .iter()
                .all(|r| r.method == "PATCH" || r.method == "POST"),
            "{requests:#?}"
        );
        assert_eq!(
            requests.len(),
            synced.written.0.len(),
            "{:?}",
            synced.written
        );
        assert!(synced.written.0.len() >= 9, "{:?}", synced.written);

        // The watcher reports what was written; the next pass sends nothing at all.
        for request in &requests {
            let state = as_reported(request.body.as_ref().unwrap());
            match state.kind.as_str() {
                "ServiceAccount" | "RoleBinding" => shared.take(state),
                _ => children.take(state),
            }
        }
        let (c, server) = client(vec![]);
        let observed = Observed {
            namespace: "default",
            children: &children,
            shared: &shared,
            shared_name: &config.pod_service_account_name,
        };
        let synced = sync_objects(&c, &served, "default", &pg, &config, &observed)
            .await
            .unwrap();
        drop(c);
        assert!(synced.written.0.is_empty(), "{:?}", synced.written);
        assert!(server.await.unwrap().is_empty());

        // A changed manifest changes only what it must: the StatefulSet and the
        // critical-operation budget (its minimum is the instance count), each read first.
        let written = |kind: &str, name: &str| {
            requests
                .iter()
                .filter_map(|r| r.body.clone())
                .find(|b| b["kind"] == kind && b["metadata"]["name"] == name)
                .expect("written by the first pass")
        };
        let statefulset = written("StatefulSet", "acid-pass");
        let budget = written("PodDisruptionBudget", "postgres-acid-pass-critical-op-pdb");
        let mut bigger = pg.clone();
        bigger.spec.number_of_instances = 3;
        let sts_path = "/apis/apps/v1/namespaces/default/statefulsets/acid-pass";
        let pdb_path =
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets/postgres-acid-pass-critical-op-pdb";
        let (c, server) = client(vec![
            Exchange::new("GET", sts_path, 200, statefulset.clone()),
            Exchange::new("PATCH", sts_path, 200, statefulset),
            Exchange::new("GET", pdb_path, 200, budget.clone()),
            Exchange::new("PATCH", pdb_path, 200, budget),
        ]);
        let synced = sync_objects(&c, &served, "default", &bigger, &config, &observed)
            .await
            .unwrap();
        drop(c);
        assert_eq!(
            synced.written.0,
            [
                "StatefulSet/acid-pass",
                "PodDisruptionBudget/postgres-acid-pass-critical-op-pdb"
            ]
        );
        let patches = server.await.unwrap();
        assert_eq!(patches[1].body.as_ref().unwrap()["spec"]["replicas"], 3);
        assert_eq!(patches[3].body.as_ref().unwrap()["spec"]["minAvailable"], 3);
    }
}
