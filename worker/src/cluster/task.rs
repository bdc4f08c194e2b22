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
use crate::pure::lifecycle::{Lifecycle, Step};
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

/// What a pass tells of when the next one should come, besides its result.
#[derive(Clone, Copy, PartialEq)]
enum Pace {
    AsUsual,
    /// Held back (waiting for a turn or a maintenance window): a grant wakes the task.
    Held,
    /// Failed in a way no retry can fix: the next change of manifest or configuration will.
    NeedsAChange,
}

/// What arrived since the last pass began.
#[derive(Default)]
struct Inbox {
    count: u32,
    /// What the next pass is for, as its span and inspection show it.
    trigger: String,
    /// Someone asked for a pass (Worker/SyncCluster): it runs even if nothing changed.
    sync_requested: bool,
}

/// Problems as last shown to the user, to tell what is news.
#[derive(Default)]
struct Shown {
    /// What the last pass refused of the manifest (a volume shrink).
    objects: String,
    /// Role definitions the last database sync refused.
    roles: String,
    /// Why Patroni's configuration could not be synced, as last logged.
    patroni: String,
}

pub struct ClusterTask {
    pub key: String,
    pub task_id: u64,
    namespace: String,
    name: String,
    /// The object: awaited, managed, paused or deleted.
    lifecycle: Lifecycle,
    /// The rolling update's state between passes.
    rollout: Rollout,
    patroni_sync: PatroniSync,
    shown: Shown,
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
    /// How the passes have been ending: what is tried again, and when.
    standing: Standing,
    /// The Warning Events shown for the current generation.
    warnings: Warnings,
    reported: Option<ClusterStatus>,
    inbox: Inbox,
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
            lifecycle: Lifecycle::default(),
            rollout,
            patroni_sync: PatroniSync::default(),
            shown: Shown::default(),
            pods: BTreeMap::new(),
            children: Children::default(),
            secrets: SecretsMemo::default(),
            objects_memo: ObjectsMemo::default(),
            status: None,
            generation: 0,
            standing: Standing::default(),
            warnings: Warnings::default(),
            reported: None,
            inbox: Inbox::default(),
            ctx,
            config,
            nodes,
            outbound,
        }
    }

    pub fn take(&mut self, input: Input) {
        self.inbox.count += 1;
        if input.voids_objects() {
            self.objects_memo.void();
        }
        let trigger = &mut self.inbox.trigger;
        match input {
            Input::Object(event) => {
                *trigger = event_name(event.r#type).to_string();
                let today = chrono::Utc::now().date_naive();
                if self.lifecycle.arrive(event, today).recreated {
                    // Another object under the same name: what we knew of the old one is void.
                    self.status = None;
                    self.standing = Standing::default();
                    self.warnings = Warnings::default();
                }
            }
            Input::SyncRequest => {
                *trigger = "SYNC-REQUEST".into();
                self.inbox.sync_requested = true;
            }
            Input::TurnGranted => {
                self.rollout.granted();
                *trigger = "TURN".into();
            }
            Input::Reported => self.children.complete(),
            Input::Child(child) => {
                if trigger.is_empty() {
                    *trigger = format!("{}/{}", child.kind, child.name);
                }
                // The shared ones are kept by the registry for all clusters.
                if !child.cluster.is_empty() {
                    self.children.take(child);
                }
            }
            Input::Pod(pod) => {
                if trigger.is_empty() {
                    *trigger = "POD".into();
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
            let inbox = self.mark_running();
            // Every line of the pass carries its cluster (and the log ring files it) from here.
            let span = tracing::info_span!(
                "pass",
                cluster = %self.key,
                trigger = %inbox.trigger,
                generation = tracing::field::Empty
            );
            let next = tokio::select! {
                biased;
                // Dropping the pass mid-way is safe: every write is idempotent.
                _ = cancel.cancelled() => return,
                // Boxed: a pass's state (its writes in flight, each step's locals) is large
                // and lives only while the pass runs; inline, every cluster's task would keep
                // room for it all the time.
                next = Box::pin(self.reconcile_once(inbox.sync_requested).instrument(span)) => next,
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
            .lifecycle
            .object()
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
        let (pending, event) = (self.inbox.count, self.inbox.trigger.clone());
        self.ctx.view.update(&self.key, |v| {
            v.pending = pending;
            v.pending_event = event;
            v.queued_since.get_or_insert_with(std::time::Instant::now);
        });
    }

    /// Marks the pass running; what arrived for it.
    fn mark_running(&mut self) -> Inbox {
        let inbox = std::mem::take(&mut self.inbox);
        let shown = inbox.trigger.clone();
        self.ctx.view.update(&self.key, |v| {
            v.running = true;
            v.pending = 0;
            if !shown.is_empty() {
                v.trigger = shown;
            }
        });
        inbox
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
            .lifecycle
            .object()
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

    async fn reconcile_once(&mut self, sync_requested: bool) -> Next {
        let config = self.config.borrow().clone();
        match self.lifecycle.step() {
            Step::Wait => {
                // Assigned without state yet: nothing to do until the object arrives.
                self.ctx.view.update(&self.key, |v| {
                    v.running = false;
                    v.queued_since = None;
                });
                Next::Idle
            }
            Step::Delete {
                object,
                confirmations,
                since,
                then_continue,
            } => {
                let object = object.clone();
                let next = self.deletion(&object, confirmations, since, &config).await;
                self.warnings.settle();
                match next {
                    Next::Finished => {
                        self.lifecycle.deletion_done();
                        match then_continue {
                            true => Next::RetryIn(Duration::ZERO),
                            false => Next::Finished,
                        }
                    }
                    other => other,
                }
            }
            Step::Reconcile(object) => {
                let object = object.clone();
                self.reconcile_object(object, config, sync_requested).await
            }
        }
    }

    /// A deleted object's objects removed (unless delete protection keeps them), then its
    /// DELETEs confirmed.
    async fn deletion(
        &mut self,
        object: &ClusterEvent,
        confirmations: u32,
        since: chrono::NaiveDate,
        config: &Arc<OperatorConfig>,
    ) -> Next {
        self.set_generation(generation_of(object));
        let deleted = crate::pure::manifest::metadata(&object.manifest_json);
        if let Some(reason) = self
            .deletion_refused(object, deleted.as_ref(), config, since)
            .await
        {
            // The manifest is gone: its objects stay, as Zalando leaves them.
            tracing::warn!("deletion refused, the cluster's objects stay: {reason}");
            for _ in 0..confirmations {
                self.report(DELETED, "", "");
            }
            return Next::Finished;
        }
        self.delete(object, config, confirmations).await
    }

    /// A pass over the live object.
    async fn reconcile_object(
        &mut self,
        object: ClusterEvent,
        config: Arc<OperatorConfig>,
        sync_requested: bool,
    ) -> Next {
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
        let mut pace = Pace::AsUsual;
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
                if self.lifecycle.resume() {
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
                        let (result, paced) = self.sync(&reference, &pg, &config, instances).await;
                        pace = paced;
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
        // Whatever became of it, the change has had its pass.
        self.lifecycle.take_change();
        self.conclude(result, team, instances, pace, judged, &reference)
            .await
    }

    fn reported_message(&self) -> String {
        self.reported
            .as_ref()
            .map(|r| r.message.clone())
            .unwrap_or_default()
    }

    /// The objects, then the pods (a rolling update, Patroni's configuration).
    async fn sync(
        &mut self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        pg: &Postgresql,
        config: &Arc<OperatorConfig>,
        instances: u32,
    ) -> (SyncResult, Pace) {
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
                if self.lifecycle.take_change() && !written.is_empty() {
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
                self.roll(
                    reference,
                    pg,
                    instances,
                    &synced.template,
                    config,
                    window_open,
                )
                .await
            }
            Err(SyncError::Build(BuildError::Invalid(m))) => {
                (SyncResult::Invalid(m), Pace::AsUsual)
            }
            Err(e) => {
                let pace = match e.needs_a_change() {
                    true => Pace::NeedsAChange,
                    false => Pace::AsUsual,
                };
                (SyncResult::Failed(e.to_string()), pace)
            }
        }
    }

    /// Status, Events, the report to the scheduler and the view, from how the pass ended.
    async fn conclude(
        &mut self,
        result: SyncResult,
        team: String,
        instances: u32,
        pace: Pace,
        judged: Judged,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
    ) -> Next {
        let previous = self.cluster_status();
        let status = next_status(&previous, &result);
        let mut message = match &result {
            SyncResult::Invalid(m) | SyncResult::Failed(m) => m.clone(),
            SyncResult::Updating(m) => m.clone(),
            SyncResult::Synced { pods_ready: false } => "waiting for the pods' roles".into(),
            SyncResult::Synced { pods_ready: true } => [&self.shown.objects, &self.shown.roles]
                .into_iter()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        };
        let mut next = match &result {
            // Held back (a turn's grant wakes the task; a maintenance window opens later).
            SyncResult::Updating(_) if pace == Pace::Held => Next::RetryIn(HELD_POLL),
            // The next step of a rolling update; pod events usually come sooner.
            SyncResult::Updating(_) => Next::RetryIn(ROLLING_POLL),
            SyncResult::Invalid(_) => Next::Idle,
            SyncResult::Failed(m) => {
                // Retrying soon cannot help a failure that needs a change: the next change of
                // manifest or configuration will; meanwhile it is repaired at the pace of
                // `repair_period`.
                let retry = match pace == Pace::NeedsAChange {
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
        if self.lifecycle.pause() {
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
        self.shown.objects = problems;
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
    ) -> (SyncResult, Pace) {
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
        let result = match progress {
            Ok(RollingProgress::Done) => {
                let ready = pods_ready(&pods.iter().collect::<Vec<_>>(), instances);
                if ready {
                    if let Some(updating) = self.sync_patroni(reference, &pods, pg, config).await {
                        return (updating, Pace::AsUsual);
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
            Ok(RollingProgress::Held(reason)) => return (SyncResult::Updating(reason), Pace::Held),
            Err(e) => SyncResult::Failed(e.to_string()),
        };
        (result, Pace::AsUsual)
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
        if problem != self.shown.patroni {
            if !problem.is_empty() {
                tracing::warn!("Patroni's configuration not synced: {problem}");
            }
            self.shown.patroni = problem;
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
        self.shown.roles = problems;
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
        let today = chrono::Utc::now().date_naive();
        if let Some(reason) = self
            .deletion_refused(object, Some(metadata), config, today)
            .await
        {
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
        day: chrono::NaiveDate,
    ) -> Option<String> {
        let reason = crate::pure::delete_protection::deletion_refused(metadata, config, day)?;
        let reference = cluster_reference(&self.namespace, &self.name, &object.uid);
        self.warn(&reference, "DeleteRefused", &reason).await;
        if self.shown.objects != reason {
            self.ctx.view.record(&self.key, "delete-refused", &reason);
            self.shown.objects = reason.clone();
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
    use crate::clients::mock_api::{as_reported, recording_client, Recorder, Seen};
    use crate::cluster::view::View;
    use pgop_common::discovery::ServedVersions;
    use pgop_common::metrics::Counters;

    /// A task for `default/acid-pass` against the recording API server, and what it reports
    /// to the scheduler.
    fn task() -> (
        ClusterTask,
        Recorder,
        mpsc::UnboundedReceiver<WorkerMessage>,
    ) {
        let config = OperatorConfig {
            // No PostgreSQL to connect to here.
            enable_database_access: false,
            ..OperatorConfig::default()
        };
        let (client, recorder) = recording_client();
        let ctx = Context::new(
            client,
            View::new("worker-0".into()),
            1,
            ServedVersions::default(),
            "default".into(),
            Counters::new(),
        );
        let (outbound, reports) = mpsc::unbounded_channel();
        let task = ClusterTask::new(
            "default/acid-pass".into(),
            1,
            Arc::new(ctx),
            watch::channel(Arc::new(config)).1,
            watch::channel(Arc::new(Nodes::new())).1,
            outbound,
        );
        (task, recorder, reports)
    }

    fn added() -> ClusterEvent {
        let mut pg = crate::pure::roles::desired::tests::manifest(
            "acid-pass",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n",
        );
        pg.metadata.uid = Some("uid-1".into());
        pg.metadata.generation = Some(1);
        ClusterEvent {
            r#type: ClusterEventType::Add as i32,
            namespace: "default".into(),
            name: "acid-pass".into(),
            uid: "uid-1".into(),
            manifest_json: serde_json::to_vec(&pg).unwrap(),
            ..ClusterEvent::default()
        }
    }

    /// An UPDATE to `instances` instances (generation 2).
    fn updated_to(instances: i32) -> ClusterEvent {
        let mut event = added();
        let mut pg: serde_json::Value = serde_json::from_slice(&event.manifest_json).unwrap();
        pg["spec"]["numberOfInstances"] = instances.into();
        pg["metadata"]["generation"] = 2.into();
        event.manifest_json = serde_json::to_vec(&pg).unwrap();
        event.r#type = ClusterEventType::Update as i32;
        event
    }

    fn master() -> PodState {
        PodState {
            namespace: "default".into(),
            cluster: "acid-pass".into(),
            name: "acid-pass-0".into(),
            role: "master".into(),
            phase: "Running".into(),
            ready: true,
            ..PodState::default()
        }
    }

    /// `METHOD kind` of each request (`PATCH statefulsets`, `PATCH postgresqls/status`).
    fn summary(requests: &[Seen]) -> Vec<String> {
        requests
            .iter()
            .map(|r| {
                let parts: Vec<&str> = r.path.rsplit('/').collect();
                let what = match parts.as_slice() {
                    ["status", _, kind, ..] => format!("{kind}/status"),
                    [_, kind, ..] if r.method != "POST" => kind.to_string(),
                    [kind, ..] => kind.to_string(),
                    [] => String::new(),
                };
                format!("{} {what}", r.method)
            })
            .collect()
    }

    fn statuses(reports: &mut mpsc::UnboundedReceiver<WorkerMessage>) -> Vec<String> {
        std::iter::from_fn(|| reports.try_recv().ok())
            .filter_map(|m| match m.message {
                Some(worker_message::Message::Status(s)) => Some(s.status),
                _ => None,
            })
            .collect()
    }

    /// What the watcher reports after a pass's writes: each object as written.
    fn report_written(task: &mut ClusterTask, requests: &[Seen]) {
        for request in requests.iter().filter(|r| r.method != "GET") {
            let body = request.body.as_ref().unwrap();
            if body["kind"] == "postgresql"
                || body["kind"] == "Event"
                || body.get("status").is_some()
            {
                continue;
            }
            let state = as_reported(body);
            match state.cluster.is_empty() {
                true => task.ctx.shared.take(state),
                false => task.take(Input::Child(state)),
            }
        }
    }

    /// The first passes: objects written and reported, the master up; Running.
    async fn brought_up(task: &mut ClusterTask, recorder: &Recorder) {
        task.take(Input::Object(added()));
        task.take(Input::Reported);
        task.reconcile_once(false).await;
        report_written(task, &recorder.take());
        task.take(Input::Pod(master()));
        task.reconcile_once(false).await;
        recorder.take();
        assert_eq!(task.cluster_status(), s::RUNNING);
    }

    #[tokio::test]
    async fn a_manifest_change_reads_updating_and_rewrites_only_what_it_changes() {
        let (mut task, recorder, mut reports) = task();
        brought_up(&mut task, &recorder).await;
        statuses(&mut reports);

        task.take(Input::Object(updated_to(2)));
        task.reconcile_once(false).await;
        let requests = recorder.take();
        assert_eq!(
            summary(&requests),
            [
                // Only what the change touches, each read first (reported as applied before).
                "GET statefulsets",
                "PATCH statefulsets",
                "GET poddisruptionbudgets",
                "PATCH poddisruptionbudgets",
                // Written objects make the change visible...
                "PATCH postgresqls/status",
                // ...and the pass that carried it out ends it.
                "PATCH postgresqls/status",
                "POST events",
            ]
        );
        let body = |i: usize| requests[i].body.clone().unwrap();
        assert_eq!(body(1)["spec"]["replicas"], 2);
        assert_eq!(body(4)["status"]["PostgresClusterStatus"], s::UPDATING);
        assert_eq!(body(5)["status"]["PostgresClusterStatus"], s::RUNNING);
        assert_eq!(
            statuses(&mut reports),
            [s::RUNNING],
            "waiting for the new pod"
        );

        // The same generation again (the watcher's resync) changes nothing.
        report_written(&mut task, &requests);
        task.take(Input::Object(updated_to(2)));
        task.reconcile_once(false).await;
        assert_eq!(summary(&recorder.take()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_waiting_task_keeps_no_room_for_a_pass() {
        let (task, _recorder, _reports) = task();
        let task_size = std::mem::size_of_val(&task);
        let (_tx, rx) = mpsc::unbounded_channel();
        let (finished, _) = mpsc::unbounded_channel();
        let running = task.run(rx, CancellationToken::new(), finished);
        let size = std::mem::size_of_val(&running);
        // The loop's own waiting (the queue, the slot, the timers) is a few KiB; a pass
        // inline made it ~36 KiB per cluster in a debug build.
        assert!(
            size < task_size + 4096,
            "a task of {task_size} bytes runs in a future of {size} bytes"
        );
    }

    #[tokio::test]
    async fn an_invalid_manifest_is_said_once_in_the_status_and_a_warning() {
        let (mut task, recorder, mut reports) = task();
        let mut invalid = added();
        let mut pg: serde_json::Value = serde_json::from_slice(&invalid.manifest_json).unwrap();
        pg["spec"]["numberOfInstances"] = "many".into();
        invalid.manifest_json = serde_json::to_vec(&pg).unwrap();
        task.take(Input::Object(invalid.clone()));
        task.take(Input::Reported);
        assert!(
            matches!(task.reconcile_once(false).await, Next::Idle),
            "no retry"
        );
        let requests = recorder.take();
        assert_eq!(
            summary(&requests),
            ["GET postgresqls", "PATCH postgresqls/status", "POST events"],
            "nothing written for it"
        );
        let status = requests[1].body.clone().unwrap()["status"].clone();
        let event = requests[2].body.clone().unwrap();
        assert_eq!(status["PostgresClusterStatus"], s::INVALID);
        let message = status["message"].as_str().unwrap();
        assert!(message.contains("does not parse"), "{message}");
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["note"], message);
        assert_eq!(statuses(&mut reports), [s::INVALID]);

        // Resyncs of the same manifest say nothing new.
        task.take(Input::Object(invalid));
        task.reconcile_once(false).await;
        assert!(recorder.take().is_empty());
    }

    #[tokio::test]
    async fn a_new_cluster_is_written_once_and_a_pass_in_sync_sends_nothing() {
        let (mut task, recorder, mut reports) = task();

        // Assigned: the object, and the report that none of its objects exists yet.
        task.take(Input::Object(added()));
        task.take(Input::Reported);
        // No pod yet: their events wake the task.
        assert!(matches!(task.reconcile_once(false).await, Next::Idle));
        let first = recorder.take();
        let requests = summary(&first);
        assert_eq!(requests[0], "GET postgresqls", "the live status first");
        assert_eq!(
            requests.iter().filter(|r| r.starts_with("GET")).count(),
            1,
            "objects reported absent are written without a read: {requests:#?}"
        );
        for written in ["PATCH statefulsets", "PATCH services", "POST secrets"] {
            assert!(requests.contains(&written.to_string()), "{requests:#?}");
        }
        assert_eq!(
            requests[requests.len() - 2..],
            ["PATCH postgresqls/status", "POST events"],
            "the status, then its Event: {requests:#?}"
        );
        let status = &first[first.len() - 2];
        let event = &first[first.len() - 1];
        assert_eq!(
            status.body.as_ref().unwrap()["status"]["PostgresClusterStatus"],
            s::CREATING
        );
        assert_eq!(event.body.as_ref().unwrap()["reason"], s::CREATING);
        assert_eq!(statuses(&mut reports), [s::CREATING]);

        // The watcher reports what was written, and the pod comes up as master.
        report_written(&mut task, &first);
        task.take(Input::Pod(master()));
        assert!(matches!(task.reconcile_once(false).await, Next::Idle));
        let second = recorder.take();
        assert_eq!(
            summary(&second),
            ["PATCH postgresqls/status", "POST events"],
            "only the status and its Event: {second:#?}"
        );
        assert_eq!(
            second[0].body.as_ref().unwrap()["status"]["PostgresClusterStatus"],
            s::RUNNING
        );
        assert_eq!(second[1].body.as_ref().unwrap()["reason"], s::RUNNING);
        assert_eq!(statuses(&mut reports), [s::RUNNING]);

        // In sync: a resync, a sync request and a pod's heartbeat send nothing at all.
        task.take(Input::Object(added()));
        assert!(matches!(task.reconcile_once(false).await, Next::Idle));
        task.take(Input::SyncRequest);
        assert!(matches!(task.reconcile_once(true).await, Next::Idle));
        task.take(Input::Pod(master()));
        assert!(matches!(task.reconcile_once(false).await, Next::Idle));
        assert!(recorder.take().is_empty());
        assert!(statuses(&mut reports).is_empty(), "nothing new to report");
    }

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
