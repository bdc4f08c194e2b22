//! What every cluster task shares: the Kubernetes client, the event recorder, the
//! inspection view and the reconcile slots that bound concurrency.
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use pgop_common::metrics::Counters;
use tokio::sync::Semaphore;

use crate::cache::children::SharedChildren;
use crate::clients::patroni::Patroni;
use crate::cluster::view::View;
use pgop_common::discovery::ServedVersions;

pub struct Context {
    pub client: Client,
    pub view: View,
    /// One permit per concurrent reconcile.
    pub slots: Arc<Semaphore>,
    /// API versions this cluster serves for version-dependent kinds.
    pub served: ServedVersions,
    /// Where objects the configuration names without a namespace live.
    pub operator_namespace: String,
    /// For the teams API.
    pub http: reqwest::Client,
    /// Served on the admin port (`admin_addr`).
    pub metrics: Arc<Counters>,
    /// Patroni's REST API on the pods.
    pub patroni: Patroni,
    /// What the clusters of each namespace share, as the watcher reported it.
    pub(crate) shared: SharedChildren,
}

/// SQL statements run by role syncs, by kind and outcome (`ok`, `failed`).
pub const SQL_STATEMENTS: &str = "pgop_sql_statements_total";

/// The reporting controller of pgop's Events.
const CONTROLLER: &str = "pgop-worker";

impl Context {
    pub fn new(
        client: Client,
        view: View,
        concurrency: usize,
        served: ServedVersions,
        operator_namespace: String,
        metrics: Arc<Counters>,
    ) -> Self {
        metrics.describe(
            SQL_STATEMENTS,
            "SQL statements run by role and database syncs, by kind and outcome.",
        );
        Self {
            client,
            view,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            served,
            operator_namespace,
            patroni: Patroni::new(reqwest::Client::new()),
            http: reqwest::Client::new(),
            metrics,
            shared: SharedChildren::default(),
        }
    }

    /// A Normal Kubernetes Event on the postgresql object. Failing to record one is logged,
    /// never fatal: the status carries the same information. Every call makes a new Event
    /// (callers only report news): kube's Recorder would fold events of the same reason into
    /// one series and keep the first note, losing what happened since.
    pub async fn event(&self, regarding: &ObjectReference, reason: &str, note: String) {
        let name = regarding.name.as_deref().unwrap_or(CONTROLLER);
        let unique = format!(
            "{name}.{:x}",
            k8s_openapi::jiff::Timestamp::now().as_nanosecond()
        );
        self.record(regarding, unique, "Normal", reason, note).await;
    }

    /// A Warning Event for one problem of one generation of the manifest, named after both
    /// (see [`crate::pure::warnings`]): when another worker already recorded it, it stays the one.
    pub async fn warning(
        &self,
        regarding: &ObjectReference,
        generation: i64,
        reason: &str,
        note: String,
    ) {
        let note = truncate(note, 1000);
        let name = crate::pure::warnings::event_name(
            regarding.name.as_deref().unwrap_or(CONTROLLER),
            regarding.uid.as_deref().unwrap_or_default(),
            generation,
            reason,
            &note,
        );
        self.record(regarding, name, "Warning", reason, note).await;
    }

    async fn record(
        &self,
        regarding: &ObjectReference,
        name: String,
        type_: &str,
        reason: &str,
        note: String,
    ) {
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            type_: Some(type_.into()),
            reason: Some(reason.to_string()),
            action: Some(reason.to_string()),
            // The Events API caps notes at 1 kB.
            note: Some(truncate(note, 1000)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.view.worker_id().to_string()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {}
            // The same Warning, recorded by this cluster's previous owner.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                let cluster = format!("{namespace}/{}", regarding.name.as_deref().unwrap_or(""));
                tracing::warn!(%cluster, "recording event {reason}: {e}");
            }
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The reference Events and logs use for a postgresql object.
pub fn cluster_reference(namespace: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("acid.zalan.do/v1".into()),
        kind: Some("postgresql".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid: (!uid.is_empty()).then(|| uid.to_string()),
        ..Default::default()
    }
}
