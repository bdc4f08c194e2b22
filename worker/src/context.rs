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

use crate::discovery::ServedVersions;
use crate::patroni::Patroni;
use crate::view::View;

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
    /// Served on `metrics_addr`.
    pub metrics: Arc<Counters>,
    /// Patroni's REST API on the pods.
    pub patroni: Patroni,
}

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
            crate::role_sync::SQL_STATEMENTS,
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
        }
    }

    /// A Kubernetes Event on the postgresql object. Failing to record one is logged, never
    /// fatal: the status carries the same information. Every call makes a new Event (callers
    /// only report news): kube's Recorder would fold events of the same reason into one
    /// series and keep the first note, losing what happened since.
    pub async fn event(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let name = regarding.name.as_deref().unwrap_or(CONTROLLER);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
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
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(cluster = %format!("{namespace}/{name}"), "recording event {reason}: {e}");
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
