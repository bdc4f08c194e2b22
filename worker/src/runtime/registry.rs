//! The worker's owned clusters: a single task that starts, feeds, releases and fences the
//! per-cluster tasks, so ownership changes happen in the order the scheduler sent them.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use pgop_common::config::{from_config_map_data, OperatorConfig};
use pgop_proto::v1::{
    watch_event, worker_message, Assign, Released, RollingTurn, WatchEvent, WorkerMessage,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::context::Context;
use crate::cluster::task::{ClusterTask, Finished, Input, Nodes};

pub enum Command {
    /// A new scheduler session: reports and releases go to `outbound` from now on.
    SessionStarted(mpsc::UnboundedSender<WorkerMessage>),
    Assign(Assign),
    Event(WatchEvent),
    Release(String),
    /// Stop every cluster task (the session is gone: the scheduler may give the clusters
    /// to another worker) and answer once they have all stopped.
    Fence(oneshot::Sender<()>),
    /// Reconcile a cluster now; answers whether this worker owns it.
    Sync(String, oneshot::Sender<bool>),
    /// The scheduler granted a cluster's turn to replace pods.
    TurnGranted(String),
}

struct Running {
    task_id: u64,
    tx: mpsc::UnboundedSender<Input>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

pub struct Registry {
    ctx: Arc<Context>,
    tasks: HashMap<String, Running>,
    next_task_id: u64,
    outbound: Option<mpsc::UnboundedSender<WorkerMessage>>,
    /// Releases whose tasks are still stopping.
    releasing: Vec<JoinHandle<()>>,
    config: watch::Sender<Arc<OperatorConfig>>,
    nodes: watch::Sender<Arc<Nodes>>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
}

#[derive(Clone)]
pub struct RegistryHandle(mpsc::UnboundedSender<Command>);

impl RegistryHandle {
    pub fn send(&self, command: Command) {
        // The registry only ends at shutdown, when nothing needs its answers any more.
        let _ = self.0.send(command);
    }

    pub async fn fence(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Fence(tx));
        let _ = rx.await;
    }
}

impl Registry {
    pub fn start(ctx: Arc<Context>, shutdown: CancellationToken) -> RegistryHandle {
        // Unbounded: the session's reader feeds this and must never wait on it (a reader that
        // stalls stops the heartbeats, and the scheduler declares the worker dead); the
        // registry only routes, in memory, faster than HTTP/2 flow control delivers.
        let (tx, rx) = mpsc::unbounded_channel();
        // At most one message per cluster task, sent as it ends.
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let registry = Self {
            ctx,
            tasks: HashMap::new(),
            next_task_id: 0,
            outbound: None,
            releasing: Vec::new(),
            config: watch::Sender::new(Arc::new(OperatorConfig::default())),
            nodes: watch::Sender::new(Arc::default()),
            finished_tx,
            finished_rx,
        };
        tokio::spawn(registry.run(rx, shutdown));
        RegistryHandle(tx)
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.fence().await;
                    return;
                }
                finished = self.finished_rx.recv() => {
                    if let Some(f) = finished { self.finished(f) }
                }
                command = commands.recv() => match command {
                    Some(c) => self.handle(c).await,
                    None => { self.fence().await; return; }
                },
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::SessionStarted(outbound) => self.outbound = Some(outbound),
            Command::Assign(assign) => {
                let key = assign.cluster.clone();
                // The cluster is shown (and keeps history) from its assignment on.
                self.ctx.view.update(&key, |_| {});
                tracing::info!(cluster = %key, pods = assign.pods.len(), "assigned");
                self.ctx.view.record(&key, "assigned", "");
                // What the cluster's objects are reported as, before the object: its first
                // pass starts from the whole report.
                for child in assign.children {
                    self.deliver(&key, Input::Child(child));
                }
                self.deliver(&key, Input::Reported);
                for pod in assign.pods {
                    self.deliver(&key, Input::Pod(pod));
                }
                if let Some(current) = assign.current {
                    self.deliver(&key, Input::Object(current));
                }
                // An assignment without state still makes the cluster ours.
                self.task(&key);
            }
            Command::Event(event) => match event.event {
                Some(watch_event::Event::Cluster(c)) => {
                    let key = format!("{}/{}", c.namespace, c.name);
                    self.deliver(&key, Input::Object(c));
                }
                Some(watch_event::Event::Pod(p)) => {
                    // A pod of a cluster without a task is the last word of a finished
                    // deletion: nothing to act on.
                    let key = format!("{}/{}", p.namespace, p.cluster);
                    if let Some(running) = self.tasks.get(&key) {
                        let _ = running.tx.send(Input::Pod(p));
                    }
                }
                Some(watch_event::Event::Child(c)) if c.cluster.is_empty() => {
                    // Shared by the namespace's clusters: each of them looks again.
                    self.ctx.shared.take(c.clone());
                    let prefix = format!("{}/", c.namespace);
                    for (_, running) in self.tasks.iter().filter(|(k, _)| k.starts_with(&prefix)) {
                        let _ = running.tx.send(Input::Child(c.clone()));
                    }
                }
                Some(watch_event::Event::Child(c)) => {
                    let key = format!("{}/{}", c.namespace, c.cluster);
                    if let Some(running) = self.tasks.get(&key) {
                        let _ = running.tx.send(Input::Child(c));
                    }
                }
                Some(watch_event::Event::Config(c)) => self.configure(c),
                Some(watch_event::Event::Node(node)) => self.nodes.send_modify(|nodes| {
                    let nodes = Arc::make_mut(nodes);
                    if node.deleted {
                        nodes.remove(&node.name);
                    } else {
                        nodes.insert(node.name.clone(), node);
                    }
                }),
                Some(watch_event::Event::SnapshotDone(_)) | None => {}
            },
            Command::Release(key) => self.release(key),
            Command::Fence(done) => {
                self.fence().await;
                let _ = done.send(());
            }
            Command::TurnGranted(key) => match self.tasks.get(&key) {
                Some(running) => {
                    let _ = running.tx.send(Input::TurnGranted);
                }
                // The cluster left meanwhile: its turn goes back at once.
                None => {
                    if let Some(outbound) = &self.outbound {
                        let _ = outbound.send(WorkerMessage {
                            message: Some(worker_message::Message::RollingTurn(RollingTurn {
                                cluster: key,
                                done: true,
                            })),
                        });
                    }
                }
            },
            Command::Sync(key, owned) => {
                let sent = self
                    .tasks
                    .get(&key)
                    .is_some_and(|running| running.tx.send(Input::SyncRequest).is_ok());
                let _ = owned.send(sent);
            }
        }
    }

    fn configure(&mut self, event: pgop_proto::v1::ConfigEvent) {
        if event.deleted {
            tracing::info!("operator configuration deleted: defaults apply");
            self.config
                .send_replace(Arc::new(OperatorConfig::default()));
            return;
        }
        let data: BTreeMap<String, String> = event.data.into_iter().collect();
        match from_config_map_data(&data) {
            Ok(config) => {
                if **self.config.borrow() != config {
                    tracing::info!("operator configuration changed");
                    self.ctx
                        .view
                        .set_limits(config.cluster_history_entries, config.ring_log_lines);
                    self.config.send_replace(Arc::new(config));
                }
            }
            // Keep working with the last good configuration rather than with defaults.
            Err(e) => {
                tracing::error!("operator configuration rejected, keeping the previous one: {e}")
            }
        }
    }

    /// The running task of `key`, started if there is none: the scheduler sends events
    /// only for clusters this worker owns.
    fn task(&mut self, key: &str) -> &Running {
        if !self.tasks.contains_key(key) {
            // Unbounded: a full queue would stop the registry, and with it every cluster,
            // behind one slow pass. What waits here is one cluster's events during one pass;
            // the task takes them all before its next pass and coalesces them.
            let running = self.spawn(key, mpsc::unbounded_channel());
            self.tasks.insert(key.to_string(), running);
        }
        &self.tasks[key]
    }

    fn spawn(
        &mut self,
        key: &str,
        (tx, rx): (mpsc::UnboundedSender<Input>, mpsc::UnboundedReceiver<Input>),
    ) -> Running {
        self.next_task_id += 1;
        let task_id = self.next_task_id;
        let cancel = CancellationToken::new();
        let outbound = self
            .outbound
            .clone()
            // No session yet: what the task reports goes nowhere (the scheduler re-sends
            // state when a session opens).
            .unwrap_or_else(|| mpsc::unbounded_channel().0);
        let task = ClusterTask::new(
            key.to_string(),
            task_id,
            self.ctx.clone(),
            self.config.subscribe(),
            self.nodes.subscribe(),
            outbound,
        );
        let handle = tokio::spawn(task.run(rx, cancel.clone(), self.finished_tx.clone()));
        Running {
            task_id,
            tx,
            cancel,
            handle,
        }
    }

    fn deliver(&mut self, key: &str, input: Input) {
        // A task only ends on cancel or through `finished`, so its queue is open here.
        let _ = self.task(key).tx.send(input);
    }

    /// A deleted cluster's task ended. Anything sent to it meanwhile starts a new one.
    fn finished(&mut self, f: Finished) {
        let Some(running) = self.tasks.get(&f.key) else {
            return;
        };
        if running.task_id != f.task_id {
            return;
        }
        let mut rx = f.rx;
        let mut leftover = Vec::new();
        while let Ok(input) = rx.try_recv() {
            leftover.push(input);
        }
        self.tasks.remove(&f.key);
        // Pod changes alone (the deleted cluster's pods going away) need no new task.
        if !leftover.iter().any(|i| matches!(i, Input::Object(_))) {
            self.ctx.view.remove(&f.key);
            return;
        }
        tracing::debug!(cluster = %f.key, inputs = leftover.len(), "restarting the cluster's task");
        // The same queue as any task's, refilled with what the ended one had not taken.
        let (tx, rx) = mpsc::unbounded_channel();
        for input in leftover {
            let _ = tx.send(input);
        }
        let running = self.spawn(&f.key, (tx, rx));
        self.tasks.insert(f.key, running);
    }

    fn release(&mut self, key: String) {
        let outbound = self.outbound.clone();
        let running = self.tasks.remove(&key);
        if let Some(running) = &running {
            running.cancel.cancel();
        }
        let view = self.ctx.view.clone();
        self.releasing.retain(|h| !h.is_finished());
        // `Released` only once the task has stopped: the next owner starts after it.
        self.releasing.push(tokio::spawn(async move {
            if let Some(running) = running {
                let _ = running.handle.await;
            }
            view.remove(&key);
            view.record(&key, "released", "");
            tracing::info!(cluster = %key, "released");
            if let Some(outbound) = outbound {
                let _ = outbound.send(WorkerMessage {
                    message: Some(worker_message::Message::Released(Released { cluster: key })),
                });
            }
        }));
    }

    async fn fence(&mut self) {
        // The scheduler sends the shared objects again with the next session; deletions
        // missed meanwhile must not leave them reported present.
        self.ctx.shared.clear();
        for releasing in std::mem::take(&mut self.releasing) {
            let _ = releasing.await;
        }
        let tasks: Vec<Running> = self.tasks.drain().map(|(_, r)| r).collect();
        if !tasks.is_empty() {
            tracing::warn!(
                clusters = tasks.len(),
                "fencing: stopping every cluster task"
            );
        }
        for running in &tasks {
            running.cancel.cancel();
        }
        let stopped = tasks.len();
        for running in tasks {
            let _ = running.handle.await;
        }
        if stopped > 0 {
            tracing::info!(clusters = stopped, "fenced: every cluster task stopped");
        }
        self.outbound = None;
        self.ctx.view.clear();
    }
}
