use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pgop_common::admin::Admin;
use pgop_common::config::WatchedNamespaces;
use pgop_proto::v1::watcher_server::WatcherServer;
use pgop_watcher::service::WatcherService;
use pgop_watcher::store::{startup_config, PodLabels, Store};
use pgop_watcher::{kube_watch, ConfigSource, Settings, OPERATOR_CONFIGURATION_OBJECT_ENV};

const IDENTITY_NEEDED: &str =
    "leader election needs this replica's identity: set PGOP_IDENTITY or POD_NAME";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (settings, shutdown) = pgop_common::settings::start::<Settings>()?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;

    // The operator configuration (the ConfigMap, or the OperatorConfiguration named by
    // POSTGRES_OPERATOR_CONFIGURATION_OBJECT or the setting) decides what to watch, so it is
    // read once before the watches start.
    let source = settings.config_source(
        std::env::var(OPERATOR_CONFIGURATION_OBJECT_ENV)
            .ok()
            .as_deref(),
    );
    let shown_source = source.shown(&settings.namespace);
    let raw = kube_watch::read_config(client.clone(), &settings.namespace, &source)
        .await
        .with_context(|| match &source {
            ConfigSource::ConfigMap(_) => format!("reading the operator {shown_source}"),
            ConfigSource::OperatorConfiguration(_) => format!(
                "reading the operator {shown_source} (is the OperatorConfiguration CRD, \
                 manifests/operatorconfiguration.crd.yaml, installed?)"
            ),
        })?;
    // An invalid configuration stops the start (what to watch would be a guess), unless
    // WATCHED_NAMESPACE decides that anyway.
    let env_namespaces = std::env::var("WATCHED_NAMESPACE").ok();
    let (config, problem) =
        startup_config(raw.as_ref(), env_namespaces.as_deref()).with_context(|| {
            format!(
                "the operator configuration ({shown_source}) is invalid; fix it, or set \
                 WATCHED_NAMESPACE to start with the default configuration"
            )
        })?;
    if let Some(e) = &problem {
        tracing::error!(
            source = %shown_source,
            "the operator configuration is invalid ({e}); WATCHED_NAMESPACE decides what to \
             watch, defaults serve for labels and the resync period; workers get no \
             configuration until it is fixed"
        );
    }
    if !config.unknown_keys.is_empty() {
        tracing::warn!(source = %shown_source, keys = ?config.unknown_keys, "unknown operator configuration keys (ignored)");
    }
    let namespaces = config.watched_namespaces(&settings.namespace, env_namespaces.as_deref());
    let shown = match &namespaces {
        WatchedNamespaces::All => vec!["*".to_string()],
        WatchedNamespaces::Some(list) => list.clone(),
    };
    let selector = config
        .cluster_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let store = Arc::new(Store::new(PodLabels {
        cluster: config.cluster_name_label.clone(),
        role: config.pod_role_label.clone(),
    }));
    // The configuration started with is the first good one: an invalid edit before the
    // configuration watch starts does not replace it.
    if let (Some(raw), None) = (raw, &problem) {
        store.apply_raw_config(Some(raw))?;
    }

    // The configuration and node watches, and one cluster, one pod and one watch per child
    // kind, whatever the watched namespaces (see `kube_watch::apis`).
    let streams = 1;
    // The kinds pgop writes for clusters, under the versions this cluster serves.
    let served = pgop_common::discovery::discover(&client)
        .await
        .context("discovering the served API versions")?;
    let child_kinds = pgop_watcher::children::child_kinds(&served, &config);
    let lists = Arc::new(kube_watch::InitialLists::new(
        2 + (2 + child_kinds.len()) * streams,
    ));
    for kind in child_kinds {
        tokio::spawn(kube_watch::watch_children(
            client.clone(),
            namespaces.clone(),
            kind,
            kube_watch::ChildLabels {
                cluster: config.cluster_name_label.clone(),
                pods: selector.clone(),
            },
            store.clone(),
            lists.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(kube_watch::watch_config(
        client.clone(),
        settings.namespace.clone(),
        source,
        store.clone(),
        lists.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(kube_watch::watch_clusters(
        client.clone(),
        namespaces.clone(),
        store.clone(),
        lists.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(kube_watch::watch_pods(
        client.clone(),
        namespaces.clone(),
        selector,
        store.clone(),
        lists.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(kube_watch::watch_nodes(
        client.clone(),
        store.clone(),
        lists.clone(),
        shutdown.clone(),
    ));
    let resync = settings
        .resync_period_seconds
        .map(Duration::from_secs)
        .unwrap_or(config.resync_period);
    {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(resync.max(Duration::from_secs(1)));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => tracing::info!(clusters = store.resync(), "periodic resync"),
                }
            }
        });
    }

    let (leading, lease) = match settings.leader_election {
        false => (pgop_common::lease::always(), None),
        true => {
            let (leading, task) = pgop_common::lease::run(
                client.clone(),
                pgop_common::lease::LeaseSettings {
                    namespace: settings.namespace.clone(),
                    name: pgop_watcher::LEASE_NAME.into(),
                    identity: pgop_common::lease::identity(&settings.identity)
                        .context(IDENTITY_NEEDED)?,
                    duration: Duration::from_secs(settings.lease_duration_seconds.max(3)),
                },
                shutdown.clone(),
            );
            (leading, Some(task))
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    pgop_proto::follow_leadership(
        health,
        <WatcherServer<WatcherService> as tonic::server::NamedService>::NAME,
        leading.changes(),
    );
    // Ready once listed, standby or not: a standby refuses subscriptions and clients try the
    // next replica, and a Deployment whose standby were never ready could not roll.
    let admin = Admin {
        ready: Arc::new({
            let lists = lists.clone();
            move || match lists.complete() {
                false => Err("the watches have not listed Kubernetes yet".into()),
                true => Ok(()),
            }
        }),
        counters: None,
    };
    let admin = pgop_common::admin::spawn(&settings.admin_addr, admin, &shutdown);
    let (reflection_v1, reflection_v1alpha) = pgop_proto::reflection_services()?;
    let addr = settings
        .grpc_addr
        .parse()
        .with_context(|| format!("grpc_addr {:?}", settings.grpc_addr))?;
    tracing::info!(%addr, namespaces = ?shown, resync = ?resync, source = %shown_source, "watcher serving");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(WatcherServer::new(WatcherService {
            store,
            lists,
            namespaces: shown,
            shutdown: shutdown.clone(),
            leading,
        }))
        .serve_with_shutdown(addr, shutdown.cancelled_owned())
        .await?;
    if let Some(lease) = lease {
        // Released, so that the standby takes over at once (the task bounds its request).
        let _ = lease.await;
    }
    admin
        .await?
        .with_context(|| format!("admin_addr {:?}", settings.admin_addr))?;
    Ok(())
}
