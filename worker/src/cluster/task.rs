//! One task per owned cluster: it keeps the latest manifest and pods, coalesces whatever
//! arrives while it waits for a reconcile slot, and reconciles one pass at a time. Tasks of
//! different clusters never wait on each other except for the bounded slots.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::{cluster_status as s, PostgresStatus, Postgresql};
use pgop_proto::v1::{
    worker_message, ChildState, ClusterEvent, ClusterEventType, ClusterStatus, NodeState, PodState,
    WorkerMessage,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cache::children::{Children, KnownSecrets, Observed, SecretsMemo};
use crate::cache::objects_memo::ObjectsMemo;
use crate::cluster::context::{cluster_reference, Context};
use crate::cluster::deletion::{delete_cluster, Progress};
use crate::cluster::patroni_sync::{PatroniProgress, PatroniSync};
use crate::cluster::reconcile::{
    read_status, sync_objects, write_status, SyncError, Synced, Written,
};
use crate::cluster::rollout::{master_address, PodGoal, RollingProgress, Rollout};
use crate::cluster::view::now_rfc3339;
use crate::pure::builders::restart::TemplateHashes;
use crate::pure::builders::{statefulset::desired_instances, BuildError};
use crate::pure::maintenance::in_maintenance_window;
use crate::pure::rolling::NodeRules;
use crate::pure::standing::{Judged, Retry, Standing, Wake};
use crate::pure::status::{next_status, pods_ready, SyncResult};
use crate::pure::warnings::Warnings;

/// Every node by name, as the watcher last reported it.
pub type Nodes = BTreeMap<String, NodeState>;

/// What the scheduler sends about one cluster.
#[derive(Debug)]
pub enum Input {
    Object(ClusterEvent),
    Pod(PodState),
    /// Someone asked for a pass now (Worker/SyncCluster).
    SyncRequest,
    /// The scheduler granted the cluster's turn to replace pods.
    TurnGranted,
    /// One of the objects pgop writes for the cluster changed (or one its namespace's
    /// clusters share).
    Child(ChildState),
    /// Every object reported with the assignment has arrived: what is not among them is
    /// absent.
    Reported,
}

impl Input {
    /// Whether the objects must be built and compared again: events of the object itself,
    /// of the objects pgop writes for it and sync requests; pods and turns change nothing
    /// they are built from.
    pub fn voids_objects(&self) -> bool {
        match self {
            Input::Object(_) | Input::SyncRequest | Input::Child(_) | Input::Reported => true,
            Input::Pod(_) | Input::TurnGranted => false,
        }
    }
}

/// The status a worker reports once a deleted cluster's objects are gone; the scheduler
/// forgets the cluster only then.
pub const DELETED: &str = "Deleted";
/// What inspection shows while a deleted cluster's pods stop.
const DELETING: &str = "Deleting";

/// How a task ended by itself (a deleted cluster, fully cleaned up).
pub struct Finished {
    pub key: String,
    pub task_id: u64,
    /// Inputs that arrived after the task decided to finish; the registry replays them.
    pub rx: mpsc::UnboundedReceiver<Input>,
}

enum Next {
    Idle,
    RetryIn(Duration),
    Finished,
}

pub struct ClusterTask {
    pub key: String,
    pub task_id: u64,
    namespace: String,
    name: String,
    object: Option<ClusterEvent>,
    /// A DELETE not yet carried out when a newer object arrived: it runs first, so the new
    /// object starts from nothing instead of adopting the old one's children.
    pending_delete: Option<ClusterEvent>,
    /// DELETEs received and covered by `pending_delete`, and by `object`: the scheduler
    /// waits for one "Deleted" per DELETE it sent.
    pending_delete_count: u32,
    object_delete_count: u32,
    /// The rolling update's state between passes.
    rollout: Rollout,
    /// The manifest changed since the last pass: the status reads Updating meanwhile.
    update_pending: bool,
    /// The manifest pauses the cluster (see [`crate::pure::manifest::paused`]).
    paused: bool,
    /// The last pass was held back rather than waiting on the pods.
    held: bool,
    /// When the (first pending) DELETE arrived.
    deleted_on: Option<chrono::NaiveDate>,
    patroni_sync: PatroniSync,
    /// Why Patroni's configuration could not be synced, as last logged.
    patroni_problem: String,
    /// What the last pass refused of the manifest (a volume shrink), as shown to the user.
    object_problems: String,
    /// Role definitions the last database sync refused, as shown to the user.
    role_problems: String,
    pods: BTreeMap<String, PodState>,
    /// The objects pgop writes for the cluster, as the watcher reported them.
    children: Children,
    /// The credentials Secrets as the role sync last read them.
    secrets: SecretsMemo,
    /// The last object sync, reused while only pods change.
    objects_memo: ObjectsMemo,
    /// The status as last read or written; None until read from the live object.
    status: Option<PostgresStatus>,
    /// The manifest's generation in the current pass.
    generation: i64,
    /// Someone asked for a pass (Worker/SyncCluster): it runs even if nothing changed.
    sync_requested: bool,
    /// How the passes have been ending: what is tried again, and when.
    standing: Standing,
    /// The Warning Events shown for the current generation.
    warnings: Warnings,
    reported: Option<ClusterStatus>,
    pending: u32,
    pending_event: String,
    ctx: Arc<Context>,
    config: watch::Receiver<Arc<OperatorConfig>>,
    nodes: watch::Receiver<Arc<Nodes>>,
    outbound: mpsc::UnboundedSender<WorkerMessage>,
}

/// How soon a cluster in a rolling update looks again when no pod event wakes it.
const ROLLING_POLL: Duration = Duration::from_secs(2);
/// How soon a cluster held back (waiting for a turn or a maintenance window) looks again.
const HELD_POLL: Duration = Duration::from_secs(60);

fn event_name(kind: i32) -> &'static str {
    ClusterEventType::try_from(kind)
        .map(|t| t.as_str_name().trim_start_matches("CLUSTER_EVENT_TYPE_"))
        .unwrap_or("UNKNOWN")
}

impl ClusterTask {
    pub fn new(
        key: String,
        task_id: u64,
        ctx: Arc<Context>,
        config: watch::Receiver<Arc<OperatorConfig>>,
        nodes: watch::Receiver<Arc<Nodes>>,
        outbound: mpsc::UnboundedSender<WorkerMessage>,
    ) -> Self {
        let (namespace, name) = key.split_once('/').unwrap_or(("", &key));
        let rollout = Rollout::new(key.clone(), outbound.clone());
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            key,
            task_id,
            object: None,
            pending_delete: None,
            pending_delete_count: 0,
            object_delete_count: 0,
            role_problems: String::new(),
            object_problems: String::new(),
            rollout,
            update_pending: false,
            paused: false,
            held: false,
            deleted_on: None,
            patroni_sync: PatroniSync::default(),
            patroni_problem: String::new(),
            pods: BTreeMap::new(),
            children: Children::default(),
            secrets: SecretsMemo::default(),
            objects_memo: ObjectsMemo::default(),
            status: None,
            generation: 0,
            sync_requested: false,
            standing: Standing::default(),
            warnings: Warnings::default(),
            reported: None,
            pending: 0,
            pending_event: String::new(),
            ctx,
            config,
            nodes,
            outbound,
        }
    }

    pub fn take(&mut self, input: Input) {
        self.pending += 1;
        if input.voids_objects() {
            self.objects_memo.void();
        }
        match input {
            Input::Object(mut event) => {
                self.pending_event = event_name(event.r#type).to_string();
                let recreated = self
                    .object
                    .as_ref()
                    .is_some_and(|o| !o.uid.is_empty() && o.uid != event.uid);
                if recreated {
                    // Another object under the same name: what we knew of the old one is void.
                    self.status = None;
                    self.standing = Standing::default();
                    self.warnings = Warnings::default();
                }
                self.update_pending |= event.r#type == ClusterEventType::Update as i32;
                let is_delete = event.r#type == ClusterEventType::Delete as i32;
                if is_delete {
                    self.object_delete_count += 1;
                    // Delete protection compares with the day of the deletion, not of the pass.
                    self.deleted_on
                        .get_or_insert_with(|| chrono::Utc::now().date_naive());
                }
                if let Some(previous) = self.object.take() {
                    if is_delete && event.manifest_json.is_empty() && previous.uid == event.uid {
                        // A DELETE made up by the scheduler has no manifest: keep the last one
                        // seen, which names what the cluster put in other namespaces.
                        event.manifest_json = previous.manifest_json.clone();
                    }
                    if !is_delete && previous.r#type == ClusterEventType::Delete as i32 {
                        // One deletion by name covers every DELETE received so far.
                        self.pending_delete = Some(previous);
                        self.pending_delete_count += std::mem::take(&mut self.object_delete_count);
                    }
                }
                self.object = Some(event);
            }
            Input::SyncRequest => {
                self.pending_event = "SYNC-REQUEST".into();
                self.sync_requested = true;
            }
            Input::TurnGranted => {
                self.rollout.granted();
                self.pending_event = "TURN".into();
            }
            Input::Reported => self.children.complete(),
            Input::Child(child) => {
                if self.pending_event.is_empty() {
                    self.pending_event = format!("{}/{}", child.kind, child.name);
                }
                // The shared ones are kept by the registry for all clusters.
                if !child.cluster.is_empty() {
                    self.children.take(child);
                }
            }
            Input::Pod(pod) => {
                if self.pending_event.is_empty() {
                    self.pending_event = "POD".into();
                }
                if pod.deleted {
                    self.pods.remove(&pod.name);
                } else {
                    self.pods.insert(pod.name.clone(), pod);
                }
            }
        }
    }

    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Input>,
        cancel: CancellationToken,
        finished: mpsc::UnboundedSender<Finished>,
    ) {
        // A new task reconciles at once; after that, only when something happened.
        let mut dirty = true;
        let mut retry_at: Option<Instant> = None;
        loop {
            if !dirty {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    input = rx.recv() => match input {
                        Some(input) => self.take(input),
                        None => return,
                    },
                    changed = self.config.changed() => if changed.is_err() { return },
                    changed = self.nodes.changed() => {
                        if changed.is_err() { return }
                        // Most node changes concern other clusters' pods.
                        if !self.on_leaving_node() { continue }
                    }
                    _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
                }
            }
            while let Ok(input) = rx.try_recv() {
                self.take(input);
            }
            self.mark_queued();
            let permit = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                permit = self.ctx.slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            // Whatever arrived while waiting for the slot is handled by this same pass.
            while let Ok(input) = rx.try_recv() {
                self.take(input);
            }
            dirty = false;
            retry_at = None;
            let trigger = self.mark_running();
            // Every line of the pass carries its cluster (and the log ring files it) from here.
            let span = tracing::info_span!(
                "pass",
                cluster = %self.key,
                trigger = %trigger,
                generation = tracing::field::Empty
            );
            let next = tokio::select! {
                biased;
                // Dropping the pass mid-way is safe: every write is idempotent.
                _ = cancel.cancelled() => return,
                next = self.reconcile_once().instrument(span) => next,
            };
            drop(permit);
            match next {
                Next::Idle => {}
                Next::RetryIn(delay) => retry_at = Some(Instant::now() + delay),
                Next::Finished => {
                    let _ = finished.send(Finished {
                        key: self.key.clone(),
                        task_id: self.task_id,
                        rx,
                    });
                    return;
                }
            }
        }
    }

    /// Whether one of the cluster's pods is on a node pods must leave.
    fn on_leaving_node(&self) -> bool {
        let Some(pg) = self
            .object
            .as_ref()
            .and_then(|o| crate::pure::manifest::parse(&o.manifest_json).ok())
        else {
            return false;
        };
        let rules = NodeRules::of(&pg, &self.config.borrow());
        let nodes = self.nodes.borrow().clone();
        self.pods
            .values()
            .any(|p| !p.node_name.is_empty() && rules.leaving(&nodes, &p.node_name))
    }

    fn mark_queued(&self) {
        let (pending, event) = (self.pending, self.pending_event.clone());
        self.ctx.view.update(&self.key, |v| {
            v.pending = pending;
            v.pending_event = event;
            v.queued_since.get_or_insert_with(std::time::Instant::now);
        });
    }

    /// Marks the pass running; what triggered it.
    fn mark_running(&mut self) -> String {
        self.pending = 0;
        let trigger = std::mem::take(&mut self.pending_event);
        let shown = trigger.clone();
        self.ctx.view.update(&self.key, |v| {
            v.running = true;
            v.pending = 0;
            if !shown.is_empty() {
                v.trigger = shown;
            }
        });
        trigger
    }

    /// The manifest generation this pass works on, also on the pass's span.
    fn set_generation(&mut self, generation: i64) {
        self.generation = generation;
        tracing::Span::current().record("generation", generation);
    }

    /// `PostgresClusterStatus` as last read or written.
    fn cluster_status(&self) -> String {
        self.status
            .as_ref()
            .map(|s| s.postgres_cluster_status.clone())
            .unwrap_or_default()
    }

    fn finish_view(&self, message: &str, instances: u32) {
        let pods: Vec<PodState> = self.pods.values().cloned().collect();
        let status = self.cluster_status();
        let uid = self
            .object
            .as_ref()
            .map(|o| o.uid.clone())
            .unwrap_or_default();
        let team = self
            .reported
            .as_ref()
            .map(|r| r.team.clone())
            .unwrap_or_default();
        self.ctx.view.update(&self.key, |v| {
            v.running = false;
            v.queued_since = None;
            v.status = status;
            v.message = message.to_string();
            v.uid = uid;
            v.instances = instances;
            v.pods = pods;
            v.team = team;
            v.last_reconcile = now_rfc3339();
            v.reconciles += 1;
        });
    }

    fn report(&mut self, status: &str, team: &str, message: &str) {
        let report = ClusterStatus {
            cluster: self.key.clone(),
            status: status.to_string(),
            team: team.to_string(),
            message: message.to_string(),
        };
        // Every "Deleted" counts: the scheduler waits for one per DELETE it sent.
        if status == DELETED || self.reported.as_ref() != Some(&report) {
            let _ = self.outbound.send(WorkerMessage {
                message: Some(worker_message::Message::Status(report.clone())),
            });
            self.reported = Some(report);
        }
    }

    async fn reconcile_once(&mut self) -> Next {
        let Some(object) = self.object.clone() else {
            // Assigned without state yet: nothing to do until the object arrives.
            self.ctx.view.update(&self.key, |v| {
                v.running = false;
                v.queued_since = None;
            });
            return Next::Idle;
        };
        let config = self.config.borrow().clone();
        let sync_requested = std::mem::take(&mut self.sync_requested);
        if let Some(old) = self.pending_delete.clone() {
            self.set_generation(generation_of(&old));
            let next = self.delete(&old, &config, self.pending_delete_count).await;
            self.warnings.settle();
            return match next {
                Next::Finished => {
                    self.pending_delete = None;
                    self.pending_delete_count = 0;
                    Next::RetryIn(Duration::ZERO)
                }
                other => other,
            };
        }
        if object.r#type == ClusterEventType::Delete as i32 {
            self.set_generation(generation_of(&object));
            let deleted = crate::pure::manifest::metadata(&object.manifest_json);
            if let Some(reason) = self
                .deletion_refused(&object, deleted.as_ref(), &config)
                .await
            {
                // The manifest is gone: its objects stay, as Zalando leaves them.
                tracing::warn!("deletion refused, the cluster's objects stay: {reason}");
                for _ in 0..std::mem::take(&mut self.object_delete_count) {
                    self.report(DELETED, "", "");
                }
                return Next::Finished;
            }
            let next = self
                .delete(&object, &config, self.object_delete_count)
                .await;
            self.warnings.settle();
            if matches!(next, Next::Finished) {
                self.object_delete_count = 0;
            }
            return next;
        }
        let reference = cluster_reference(&self.namespace, &self.name, &object.uid);
        let metadata = crate::pure::manifest::metadata(&object.manifest_json).unwrap_or_default();
        self.set_generation(metadata.generation.unwrap_or_default());
        if metadata.deletion_timestamp.is_some() {
            // Whatever the spec holds: a manifest pgop's types refuse is deleted all the same.
            let next = self.finalize(&object, &metadata, &config).await;
            self.warnings.settle();
            return next;
        }
        let judged = Judged::of(&object.uid, &metadata, config.clone());
        let now = chrono::Utc::now();
        if let Some(wake) = self
            .standing
            .unchanged(&judged, now)
            .filter(|_| !sync_requested)
        {
            // Our own status write, a resync, a pod: nothing the verdict depends on changed.
            self.finish_view(&self.reported_message(), 0);
            return match wake {
                Wake::OnChange => Next::Idle,
                Wake::After(delay) => Next::RetryIn(delay),
            };
        }
        if self.status.is_none() {
            self.status = self.live_status(&object.manifest_json).await;
        }
        let mut permanent = false;
        let (result, team, instances) = match crate::pure::manifest::parse(&object.manifest_json) {
            Err(e) => (
                SyncResult::Invalid(format!("the manifest does not parse: {e}")),
                String::new(),
                0,
            ),
            Ok(pg) if crate::pure::manifest::paused(&pg) => {
                return self.pause(&reference, &pg).await
            }
            Ok(pg) => {
                if self.paused {
                    self.paused = false;
                    self.ctx.view.record(&self.key, "resumed", "");
                    self.ctx
                        .event(
                            &reference,
                            "Resumed",
                            "pgop manages the cluster again".into(),
                        )
                        .await;
                }
                let databases = crate::pure::roles::database_names(&pg);
                self.ctx.view.update(&self.key, |v| v.databases = databases);
                let instances = desired_instances(&pg, &config).max(0) as u32;
                let team = pg.spec.team_id.clone();
                let pods: Vec<PodState> = self.pods.values().cloned().collect();
                let handover = self
                    .rollout
                    .hand_over_before_scale_down(&self.ctx, &reference, &pods, instances)
                    .await;
                let mut result = match handover {
                    Ok(Some(note)) => {
                        tracing::info!("{note}");
                        self.ctx.view.record(&self.key, "scale-down", &note);
                        SyncResult::Updating(note)
                    }
                    Err(e) => SyncResult::Failed(e.to_string()),
                    Ok(None) => {
                        let (result, needs_a_change) =
                            self.sync(&reference, &pg, &config, instances).await;
                        permanent = needs_a_change;
                        result
                    }
                };
                if result == (SyncResult::Synced { pods_ready: true }) {
                    if let Err(e) = self.sync_database(&reference, &pg, &config).await {
                        result = SyncResult::Failed(format!("syncing roles and databases: {e}"));
                    }
                }
                (result, team, instances)
            }
        };
        self.update_pending = false;
        self.conclude(result, team, instances, permanent, judged, &reference)
            .await
    }

    fn reported_message(&self) -> String {
        self.reported
            .as_ref()
            .map(|r| r.message.clone())
            .unwrap_or_default()
    }

    /// The objects, then the pods (a rolling update, Patroni's configuration). True with a
    /// failure no retry can fix.
    async fn sync(
        &mut self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        pg: &Postgresql,
        config: &Arc<OperatorConfig>,
        instances: u32,
    ) -> (SyncResult, bool) {
        let synced = match self.objects_memo.recall(config) {
            Some((template, problems)) => Ok(Synced {
                written: Written::default(),
                template,
                problems,
            }),
            None => {
                let observed = Observed {
                    namespace: &self.namespace,
                    children: &self.children,
                    shared: &self.ctx.shared,
                    shared_name: &config.pod_service_account_name,
                };
                let synced = sync_objects(
                    &self.ctx.client,
                    &self.ctx.served,
                    &self.namespace,
                    pg,
                    config,
                    &observed,
                )
                .await;
                match &synced {
                    Ok(s) => self.objects_memo.remember(config, &s.template, &s.problems),
                    Err(_) => self.objects_memo.forget(),
                }
                synced
            }
        };
        match synced {
            Ok(synced) => {
                let written = &synced.written.0;
                // A manifest change that changes objects reads Updating until carried out;
                // one that changes nothing (an annotation pgop ignores) writes nothing.
                if std::mem::take(&mut self.update_pending) && !written.is_empty() {
                    self.mark_updating().await;
                }
                if !written.is_empty() {
                    tracing::info!(?written, "objects written");
                    self.ctx
                        .view
                        .record(&self.key, "written", written.join(", "));
                }
                let (window_open, mut problems) =
                    in_maintenance_window(pg, config, chrono::Utc::now());
                problems.extend(synced.problems);
                self.show_refusals(reference, problems.join("; ")).await;
                let result = self
                    .roll(
                        reference,
                        pg,
                        instances,
                        &synced.template,
                        config,
                        window_open,
                    )
                    .await;
                (result, false)
            }
            Err(SyncError::Build(BuildError::Invalid(m))) => (SyncResult::Invalid(m), false),
            Err(e) => (SyncResult::Failed(e.to_string()), e.needs_a_change()),
        }
    }

    /// Status, Events, the report to the scheduler and the view, from how the pass ended.
    async fn conclude(
        &mut self,
        result: SyncResult,
        team: String,
        instances: u32,
        permanent: bool,
        judged: Judged,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
    ) -> Next {
        let previous = self.cluster_status();
        let status = next_status(&previous, &result);
        let mut message = match &result {
            SyncResult::Invalid(m) | SyncResult::Failed(m) => m.clone(),
            SyncResult::Updating(m) => m.clone(),
            SyncResult::Synced { pods_ready: false } => "waiting for the pods' roles".into(),
            SyncResult::Synced { pods_ready: true } => [&self.object_problems, &self.role_problems]
                .into_iter()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        };
        let mut next = match &result {
            // Held back (a turn's grant wakes the task; a maintenance window opens later).
            SyncResult::Updating(_) if std::mem::take(&mut self.held) => Next::RetryIn(HELD_POLL),
            // The next step of a rolling update; pod events usually come sooner.
            SyncResult::Updating(_) => Next::RetryIn(ROLLING_POLL),
            SyncResult::Invalid(_) => Next::Idle,
            SyncResult::Failed(m) => {
                // Retrying soon cannot help a failure that needs a change: the next change of
                // manifest or configuration will; meanwhile it is repaired at the pace of
                // `repair_period`.
                let retry = match permanent {
                    true => Retry::NeedsAChange(judged.clone(), self.config.borrow().repair_period),
                    false => Retry::BackingOff,
                };
                let delay = self.standing.failed(chrono::Utc::now(), retry);
                tracing::warn!(failures = self.standing.failures(), retry_in = ?delay, "sync failed: {m}");
                Next::RetryIn(delay)
            }
            SyncResult::Synced { .. } => Next::Idle,
        };
        match &result {
            SyncResult::Invalid(_) => self.standing.invalid(judged),
            SyncResult::Failed(_) => {}
            _ => self.standing.succeeded(),
        }
        let next_retry = self
            .standing
            .next_try()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let desired = PostgresStatus {
            postgres_cluster_status: status.to_string(),
            message: matches!(result, SyncResult::Invalid(_) | SyncResult::Failed(_))
                .then(|| message.clone()),
            next_retry: next_retry.clone(),
        };
        if self.status.as_ref() != Some(&desired) {
            match write_status(&self.ctx.client, &self.namespace, &self.name, &desired).await {
                Ok(()) => {
                    if status != previous {
                        tracing::info!(from = %previous, to = status, "status");
                        self.ctx.view.record(&self.key, "status", status);
                        if matches!(result, SyncResult::Synced { .. }) {
                            self.ctx
                                .event(reference, status, format!("cluster is {status}"))
                                .await;
                        }
                    }
                    self.status = Some(desired);
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    // A failed pass has its next try already.
                    if !matches!(result, SyncResult::Failed(_)) {
                        let delay = self.standing.failed(chrono::Utc::now(), Retry::BackingOff);
                        next = Next::RetryIn(delay);
                    }
                }
            }
        }
        if let SyncResult::Invalid(m) | SyncResult::Failed(m) = &result {
            if self.warnings.is_news(self.generation, status, m) {
                if matches!(result, SyncResult::Invalid(_)) {
                    tracing::warn!("invalid manifest: {m}");
                }
                self.ctx
                    .warning(reference, self.generation, status, m.clone())
                    .await;
            }
        }
        self.warnings.settle();
        if let Some(at) = next_retry {
            message = format!("{message}; next try at {at}");
        }
        let current = self.cluster_status();
        self.report(&current, &team, &message);
        self.finish_view(&message, instances);
        next
    }

    /// The manifest pauses the cluster: nothing is written for it until the annotation goes.
    async fn pause(
        &mut self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        pg: &Postgresql,
    ) -> Next {
        let message = format!(
            "paused: pgop leaves the cluster alone while the annotation {} is \"true\"",
            crate::pure::manifest::PAUSED_ANNOTATION
        );
        self.rollout.give_turn_back();
        // Whatever the last verdict was, the manifest is judged again when it resumes.
        self.standing.succeeded();
        if !self.paused {
            self.paused = true;
            tracing::info!("{message}");
            self.ctx.view.record(&self.key, "paused", "");
            self.ctx.event(reference, "Paused", message.clone()).await;
        }
        let status = self.cluster_status();
        self.report(&status, &pg.spec.team_id, &message);
        self.finish_view(&message, 0);
        Next::Idle
    }

    /// A Warning Event, unless this problem was shown for this generation and has held
    /// since (see [`crate::pure::warnings`]); the log line goes with it.
    async fn warn(
        &mut self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        reason: &str,
        note: &str,
    ) {
        if self.warnings.is_news(self.generation, reason, note) {
            tracing::warn!("{reason}: {note}");
            self.ctx
                .warning(reference, self.generation, reason, note.to_string())
                .await;
        }
    }

    /// What the manifest asks for and pgop refuses while the rest is in sync (a volume
    /// shrink): in the status message, and in a Warning Event.
    async fn show_refusals(
        &mut self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        problems: String,
    ) {
        if !problems.is_empty() {
            self.warn(reference, "Refused", &problems).await;
        }
        self.object_problems = problems;
    }

    /// A manifest change on a cluster that has run: the status reads Updating until the
    /// change is carried out (Zalando writes it before acting on an update too).
    async fn mark_updating(&mut self) {
        let settled = matches!(
            self.cluster_status().as_str(),
            s::RUNNING | s::SYNC_FAILED | s::UPDATE_FAILED
        );
        if !settled {
            return;
        }
        let updating = PostgresStatus {
            postgres_cluster_status: s::UPDATING.into(),
            ..PostgresStatus::default()
        };
        match write_status(&self.ctx.client, &self.namespace, &self.name, &updating).await {
            Ok(()) => {
                self.status = Some(updating);
                self.ctx.view.record(&self.key, "status", s::UPDATING);
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// The objects are in sync: the pods follow (a rolling update, one step per pass).
    async fn roll(
        &mut self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        pg: &Postgresql,
        instances: u32,
        template: &TemplateHashes,
        config: &OperatorConfig,
        window_open: bool,
    ) -> SyncResult {
        let pods: Vec<PodState> = self.pods.values().cloned().collect();
        let nodes = self.nodes.borrow().clone();
        let rules = NodeRules::of(pg, config);
        let leaving = |node: &str| rules.leaving(&nodes, node);
        let goal = PodGoal {
            pods: &pods,
            instances,
            template,
            leaving_node: &leaving,
            window_open,
            timeout: config.pod_label_wait_timeout,
        };
        let progress = self.rollout.advance(&self.ctx, reference, &goal).await;
        match progress {
            Ok(RollingProgress::Done) => {
                let ready = pods_ready(&pods.iter().collect::<Vec<_>>(), instances);
                if ready {
                    if let Some(updating) = self.sync_patroni(reference, &pods, pg, config).await {
                        return updating;
                    }
                }
                SyncResult::Synced { pods_ready: ready }
            }
            Ok(RollingProgress::Acted(note)) => {
                tracing::info!("{note}");
                self.ctx.view.record(&self.key, "pods", &note);
                SyncResult::Updating(note)
            }
            Ok(RollingProgress::Waiting(reason)) => {
                SyncResult::Updating(format!("replacing pods: {reason}"))
            }
            Ok(RollingProgress::Held(reason)) => {
                self.held = true;
                SyncResult::Updating(reason)
            }
            Err(e) => SyncResult::Failed(e.to_string()),
        }
    }

    /// Patroni's dynamic configuration as the manifest asks (see [`PatroniSync`]); Some
    /// while a change is being applied. Patroni not answering is logged, not a failure:
    /// everything else about the cluster can still be in sync.
    async fn sync_patroni(
        &mut self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        pods: &[PodState],
        pg: &Postgresql,
        config: &OperatorConfig,
    ) -> Option<SyncResult> {
        let progress = self
            .patroni_sync
            .advance(&self.ctx, reference, pods, pg, config)
            .await;
        let problem = match &progress {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        if problem != self.patroni_problem {
            if !problem.is_empty() {
                tracing::warn!("Patroni's configuration not synced: {problem}");
            }
            self.patroni_problem = problem;
        }
        match progress {
            Ok(PatroniProgress::Acted(note)) => {
                tracing::info!("{note}");
                self.ctx.view.record(&self.key, "patroni", &note);
                Some(SyncResult::Updating(note))
            }
            Ok(PatroniProgress::Settling) => Some(SyncResult::Updating(
                "waiting for Patroni to apply its new configuration".into(),
            )),
            Ok(PatroniProgress::InSync) | Err(_) => None,
        }
    }

    /// Roles and databases inside PostgreSQL. Refused definitions do not fail the sync:
    /// they are named in the status message and, when they change, in a Warning Event.
    async fn sync_database(
        &mut self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        pg: &Postgresql,
        config: &OperatorConfig,
    ) -> Result<(), crate::cluster::role_sync::RoleSyncError> {
        // Zalando's `enable_database_access: false`: the operator never connects.
        if !config.enable_database_access {
            return Ok(());
        }
        let Some(master) = master_address(&self.pods.values().cloned().collect::<Vec<_>>()) else {
            return Ok(());
        };
        // Bounded: a sync stuck on a lock or a vanished master must not hold the slot.
        let report = tokio::time::timeout(
            Duration::from_secs(120),
            crate::cluster::role_sync::sync(
                &self.ctx,
                pg,
                config,
                &master,
                KnownSecrets {
                    namespace: &self.namespace,
                    children: &self.children,
                    memo: &mut self.secrets,
                },
            ),
        )
        .await
        .map_err(|_| crate::cluster::role_sync::RoleSyncError::TimedOut)??;
        tracing::info!(statements = report.statements, "database in sync");
        if report.statements > 0 {
            self.ctx.view.record(
                &self.key,
                "sql",
                format!("{} statements", report.statements),
            );
        }
        let problems = report
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if !problems.is_empty() {
            self.warn(reference, "RoleDefinitionRefused", &problems)
                .await;
        }
        self.role_problems = problems;
        Ok(())
    }

    /// The status the object carries now: the manifest in hand may predate the previous
    /// owner's last status write. Read untyped, whatever the spec holds.
    async fn live_status(&self, manifest_json: &[u8]) -> Option<PostgresStatus> {
        match read_status(&self.ctx.client, &self.namespace, &self.name).await {
            Ok(Some(live)) => Some(live),
            Ok(None) => carried_status(manifest_json),
            Err(e) => {
                tracing::warn!("reading the live status: {e}");
                carried_status(manifest_json)
            }
        }
    }

    /// The object is being deleted and waits for pgop's finalizer: remove the cluster's
    /// objects, then the finalizer. Without the finalizer the DELETE event does the work.
    async fn finalize(
        &mut self,
        object: &ClusterEvent,
        metadata: &ObjectMeta,
        config: &OperatorConfig,
    ) -> Next {
        if !crate::cluster::finalizer::has_finalizer(metadata) {
            return Next::Idle;
        }
        if let Some(reason) = self.deletion_refused(object, Some(metadata), config).await {
            // The finalizer holds the manifest until the annotations allow the deletion.
            let message = format!("deletion waits for its annotations: {reason}");
            let status = self.cluster_status();
            let team = self.reported.as_ref().map(|r| r.team.clone());
            self.report(&status, &team.unwrap_or_default(), &message);
            self.finish_view(&message, 0);
            return Next::Idle;
        }
        match self.delete(object, config, 0).await {
            Next::Finished => {
                match crate::cluster::finalizer::set(
                    &self.ctx.client,
                    &self.namespace,
                    &self.name,
                    &object.uid,
                    false,
                )
                .await
                {
                    Ok(()) => Next::Idle,
                    Err(e) => {
                        tracing::warn!("removing the finalizer: {e}");
                        let delay = self.standing.failed(chrono::Utc::now(), Retry::BackingOff);
                        Next::RetryIn(delay)
                    }
                }
            }
            other => other,
        }
    }

    /// Why the deleted cluster's objects must stay (delete protection); shown in a Warning
    /// Event when it is news.
    async fn deletion_refused(
        &mut self,
        object: &ClusterEvent,
        metadata: Option<&ObjectMeta>,
        config: &OperatorConfig,
    ) -> Option<String> {
        let day = self
            .deleted_on
            .unwrap_or_else(|| chrono::Utc::now().date_naive());
        let reason = crate::pure::delete_protection::deletion_refused(metadata, config, day)?;
        let reference = cluster_reference(&self.namespace, &self.name, &object.uid);
        self.warn(&reference, "DeleteRefused", &reason).await;
        if self.object_problems != reason {
            self.ctx.view.record(&self.key, "delete-refused", &reason);
            self.object_problems = reason.clone();
        }
        Some(reason)
    }

    /// Whether a manifest other than the deleted object now has this name: a DELETE that
    /// arrives late (coalesced, replayed after a move) must not remove a live cluster's
    /// objects, which are the new object's now.
    async fn superseded(&self, deleted_uid: &str) -> Result<bool, kube::Error> {
        let api: Api<Postgresql> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        Ok(api.get_metadata_opt(&self.name).await?.is_some_and(|live| {
            deleted_uid.is_empty() || live.metadata.uid.as_deref() != Some(deleted_uid)
        }))
    }

    async fn delete(
        &mut self,
        object: &ClusterEvent,
        config: &OperatorConfig,
        confirmations: u32,
    ) -> Next {
        let mut removed = false;
        let progress = match self.superseded(&object.uid).await {
            Ok(true) => {
                tracing::info!("a newer manifest has the name: its objects stay");
                Ok(Progress::Done)
            }
            Ok(false) => {
                removed = true;
                delete_cluster(
                    &self.ctx.client,
                    &self.ctx.served,
                    &self.namespace,
                    &self.name,
                    config,
                    &secrets_elsewhere(&object.manifest_json, &self.namespace, config),
                )
                .await
                .map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("checking for a newer manifest: {e}")),
        };
        match progress {
            Ok(Progress::Done) => {
                if removed {
                    // A newer object under the name starts from nothing, not from the
                    // reports of what was just deleted.
                    self.children.deleted_all();
                }
                tracing::info!("deleted");
                self.ctx
                    .view
                    .record(&self.key, "deleted", "every object removed");
                let reference = cluster_reference(&self.namespace, &self.name, &object.uid);
                self.ctx
                    .event(
                        &reference,
                        "Delete",
                        "the cluster's objects were removed".into(),
                    )
                    .await;
                for _ in 0..confirmations {
                    self.report(DELETED, "", "");
                }
                Next::Finished
            }
            Ok(Progress::PodsStopping(n)) => {
                self.finish_view(&format!("deleting: {n} pods still stopping"), 0);
                self.ctx
                    .view
                    .update(&self.key, |v| v.status = DELETING.into());
                Next::RetryIn(Duration::from_secs(2))
            }
            Err(e) => {
                let reference = cluster_reference(&self.namespace, &self.name, &object.uid);
                self.warn(&reference, "DeleteFailed", &e).await;
                let delay = self.standing.failed(chrono::Utc::now(), Retry::BackingOff);
                self.finish_view(&e, 0);
                Next::RetryIn(delay)
            }
        }
    }
}

/// The credentials Secrets the deleted manifest put outside its namespace
/// (`enable_cross_namespace_secret`): they carry no owner reference, so only pgop removes
/// them. None when the DELETE came without a readable manifest.
fn secrets_elsewhere(
    manifest_json: &[u8],
    namespace: &str,
    config: &OperatorConfig,
) -> Vec<(String, String)> {
    let Ok(pg) = crate::pure::manifest::parse(manifest_json) else {
        return Vec::new();
    };
    crate::pure::builders::secrets::credential_secrets(&pg, config)
        .into_iter()
        .filter(|s| s.namespace != namespace)
        .map(|s| (s.namespace, s.name))
        .collect()
}

/// The status in the manifest the watcher passed on, whatever its spec holds.
fn carried_status(manifest_json: &[u8]) -> Option<PostgresStatus> {
    let object: serde_json::Value = serde_json::from_slice(manifest_json).ok()?;
    serde_json::from_value(object.get("status")?.clone()).ok()
}

/// The generation of the manifest an event carries (0 without one).
fn generation_of(event: &ClusterEvent) -> i64 {
    crate::pure::manifest::metadata(&event.manifest_json)
        .and_then(|m| m.generation)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_objects_are_built_from_voids_them() {
        let cases = [
            (Input::Object(ClusterEvent::default()), true),
            (Input::SyncRequest, true),
            (Input::Child(ChildState::default()), true),
            (Input::Pod(PodState::default()), false),
            (Input::TurnGranted, false),
            (Input::Reported, true),
        ];
        for (input, voids) in cases {
            assert_eq!(input.voids_objects(), voids, "{input:?}");
        }
    }
}
