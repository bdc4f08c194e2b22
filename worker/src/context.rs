//! What every cluster task shares: the Kubernetes client, the event recorder, the
//! inspection view and the reconcile slots that bound concurrency.
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use pgop_common::metrics::Counters;
use tokio::sync::Semaphore;

use crate::discovery::ServedVersions;
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
    recorder: Recorder,
}

impl Context {
    pub fn new(
        client: Client,
        view: View,
        concurrency: usize,
        served: ServedVersions,
        operator_namespace: String,
        metrics: Arc<Counters>,
    ) -> Self {
        let reporter = Reporter {
            controller: "pgop-worker".into(),
            instance: Some(view.worker_id().to_string()),
        };
        metrics.describe(
            crate::role_sync::SQL_STATEMENTS,
            "SQL statements run by role and database syncs, by kind and outcome.",
        );
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            view,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            served,
            operator_namespace,
            http: reqwest::Client::new(),
            metrics,
        }
    }

    /// A Kubernetes Event on the postgresql object. Failing to record one is logged, never
    /// fatal: the status carries the same information.
    pub async fn event(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            // The Events API caps notes at 1 kB.
            note: Some(truncate(note, 1000)),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(
                cluster = regarding.name.as_deref().unwrap_or_default(),
                "recording event {reason}: {e}"
            );
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
