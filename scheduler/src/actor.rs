//! The one task that owns the scheduler state: sessions, the watcher subscription and
//! inspection queries reach it through a channel, so no lock is ever held across I/O and
//! a slow worker never blocks the others (each has its own unbounded outbound queue).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgop_proto::v1::{
    scheduler_message, worker_message, ClusterAssignment, EventRecord, RollingTurn,
    SchedulerMessage, WatchEvent, WorkerInfo, WorkerMessage,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::state::{ClusterEntry, Outbox, Ownership, SchedulerState};
use crate::turns::{Grants, RollingTurns};

pub type WorkerTx = mpsc::UnboundedSender<Result<SchedulerMessage, tonic::Status>>;

pub enum Input {
    Watch(WatchEvent),
    SnapshotStarted,
    Joined {
        id: String,
        session: u64,
        address: String,
        capacity: u32,
        tx: WorkerTx,
    },
    FromWorker {
        id: String,
        session: u64,
        message: WorkerMessage,
    },
    Gone {
        id: String,
        session: u64,
    },
    Assignments(oneshot::Sender<Vec<ClusterAssignment>>),
    /// One cluster's assignment by key (`namespace/name`): asked once per REST call on a
    /// cluster, so it must not cost a pass over the fleet.
    Assignment(String, oneshot::Sender<Option<ClusterAssignment>>),
    Workers(oneshot::Sender<Vec<WorkerInfo>>),
    Config(oneshot::Sender<Option<pgop_proto::v1::ConfigEvent>>),
}

struct Session {
    session: u64,
    tx: WorkerTx,
    last_heartbeat: Instant,
    last_heartbeat_wall: String,
}

pub struct Actor {
    state: SchedulerState,
    turns: RollingTurns,
    sessions: HashMap<String, Session>,
    heartbeat_timeout: Duration,
    events: broadcast::Sender<EventRecord>,
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

impl Actor {
    pub fn new(
        heartbeat_timeout: Duration,
        rolling_updates: usize,
        events: broadcast::Sender<EventRecord>,
    ) -> Self {
        Self {
            state: SchedulerState::default(),
            turns: RollingTurns::new(rolling_updates),
            sessions: HashMap::new(),
            heartbeat_timeout,
            events,
        }
    }

    fn record(&self, cluster: &str, kind: &str, detail: String) {
        let _ = self.events.send(EventRecord {
            at: now_rfc3339(),
            cluster: cluster.to_string(),
            kind: kind.to_string(),
            detail,
            trigger: String::new(),
        });
    }

    fn dispatch(&mut self, out: Outbox) {
        use pgop_proto::v1::scheduler_message::Message;
        for (worker, message) in out {
            match &message.message {
                Some(Message::Assign(a)) => {
                    self.record(&a.cluster, "assigned", format!("to {worker}"))
                }
                Some(Message::Release(r)) => {
                    self.record(&r.cluster, "releasing", format!("from {worker}"))
                }
                _ => {}
            }
            if let Some(session) = self.sessions.get(&worker) {
                // A closed queue means the session is ending; its Gone input follows.
                let _ = session.tx.send(Ok(message));
            }
        }
    }

    /// Sends each granted turn to its worker.
    fn grant(&mut self, grants: Grants) {
        let out = grants
            .into_iter()
            .map(|(worker, cluster)| {
                self.record(&cluster, "rolling-turn", format!("to {worker}"));
                (
                    worker,
                    SchedulerMessage {
                        message: Some(scheduler_message::Message::RollingTurn(RollingTurn {
                            cluster,
                            done: false,
                        })),
                    },
                )
            })
            .collect();
        self.dispatch(out);
    }

    pub async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let input = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => { self.expire_silent_workers(); continue; }
                input = inputs.recv() => match input { Some(i) => i, None => return },
            };
            self.handle(input);
        }
    }

    fn expire_silent_workers(&mut self) {
        let silent: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.last_heartbeat.elapsed() > self.heartbeat_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            tracing::warn!(worker = %id, "no heartbeat within {:?}: declaring the worker dead", self.heartbeat_timeout);
            self.sessions.remove(&id);
            let out = self.state.worker_left(&id);
            self.record("", "worker-dead", id);
            self.dispatch(out);
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Watch(ev) => {
                if let Some(pgop_proto::v1::watch_event::Event::Cluster(c)) = &ev.event {
                    let kind = pgop_proto::v1::ClusterEventType::try_from(c.r#type)
                        .map(|t| t.as_str_name())
                        .unwrap_or("?");
                    self.record(
                        &format!("{}/{}", c.namespace, c.name),
                        "event",
                        kind.trim_start_matches("CLUSTER_EVENT_TYPE_").to_string(),
                    );
                }
                let out = self.state.watch_event(ev);
                self.dispatch(out);
            }
            Input::SnapshotStarted => self.state.snapshot_started(),
            Input::Joined {
                id,
                session,
                address,
                capacity,
                tx,
            } => {
                tracing::info!(worker = %id, %address, capacity, session, "worker joined");
                let now = Instant::now();
                let previous = self.sessions.insert(
                    id.clone(),
                    Session {
                        session,
                        tx,
                        last_heartbeat: now,
                        last_heartbeat_wall: now_rfc3339(),
                    },
                );
                if let Some(previous) = previous {
                    // The previous session's stream ends here (its sender is dropped); its
                    // later Gone carries the old session number and is ignored.
                    tracing::warn!(
                        worker = %id,
                        previous = previous.session,
                        session,
                        "a newer session of the worker replaces its previous one"
                    );
                    let _ = previous.tx.send(Err(tonic::Status::aborted(
                        "superseded by a newer session of the same worker",
                    )));
                    self.record("", "worker-reconnected", id.clone());
                }
                let out = self.state.worker_joined(&id, address, capacity);
                self.record("", "worker-joined", id);
                self.dispatch(out);
            }
            Input::FromWorker {
                id,
                session,
                message,
            } => {
                let Some(s) = self.sessions.get_mut(&id).filter(|s| s.session == session) else {
                    return;
                };
                s.last_heartbeat = Instant::now();
                s.last_heartbeat_wall = now_rfc3339();
                match message.message {
                    Some(worker_message::Message::Heartbeat(h)) => {
                        self.state.heartbeat(&id, h.clusters, h.queued)
                    }
                    Some(worker_message::Message::Released(r)) => {
                        self.record(&r.cluster, "released", format!("by {id}"));
                        let out = self.state.released(&id, &r.cluster);
                        self.dispatch(out);
                    }
                    Some(worker_message::Message::Status(st)) => {
                        if self
                            .state
                            .cluster_status(&id, &st.cluster, st.status, st.team)
                        {
                            self.record(&st.cluster, "deleted", format!("confirmed by {id}"));
                        }
                    }
                    Some(worker_message::Message::RollingTurn(turn)) => {
                        let grants = if turn.done {
                            self.turns.done(&id, &turn.cluster)
                        } else {
                            self.turns.request(&id, &turn.cluster)
                        };
                        self.grant(grants);
                    }
                    Some(worker_message::Message::Hello(_)) | None => {}
                }
            }
            Input::Gone { id, session } => {
                if self.sessions.get(&id).is_some_and(|s| s.session == session) {
                    tracing::warn!(worker = %id, "worker session ended: moving its clusters");
                    self.sessions.remove(&id);
                    let out = self.state.worker_left(&id);
                    let grants = self.turns.worker_left(&id);
                    self.record("", "worker-left", id);
                    self.dispatch(out);
                    self.grant(grants);
                }
            }
            Input::Assignments(reply) => {
                let list = self
                    .state
                    .clusters
                    .iter()
                    .map(|(key, e)| assignment_of(key, e))
                    .collect();
                let _ = reply.send(list);
            }
            Input::Assignment(key, reply) => {
                let found = self
                    .state
                    .clusters
                    .get(&key)
                    .map(|e| assignment_of(&key, e));
                let _ = reply.send(found);
            }
            Input::Config(reply) => {
                let _ = reply.send(self.state.config().cloned());
            }
            Input::Workers(reply) => {
                // One pass over the clusters, not one per worker.
                let mut owned: HashMap<&str, u32> = HashMap::new();
                for entry in self.state.clusters.values() {
                    if let Ownership::Assigned(worker) = &entry.ownership {
                        *owned.entry(worker.as_str()).or_default() += 1;
                    }
                }
                let list = self
                    .state
                    .workers
                    .iter()
                    .map(|(id, w)| WorkerInfo {
                        worker_id: id.clone(),
                        address: w.address.clone(),
                        capacity: w.capacity,
                        clusters: owned.get(id.as_str()).copied().unwrap_or_default(),
                        queued: w.queued,
                        last_heartbeat: self
                            .sessions
                            .get(id)
                            .map(|s| s.last_heartbeat_wall.clone())
                            .unwrap_or_default(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
        }
    }
}

/// What inspection shows of one cluster's assignment.
fn assignment_of(key: &str, entry: &ClusterEntry) -> ClusterAssignment {
    let (worker, state) = match &entry.ownership {
        Ownership::Assigned(w) => (w.clone(), "Assigned"),
        Ownership::Releasing { from } => (from.clone(), "Moving"),
        Ownership::Unassigned => (String::new(), "Unassigned"),
    };
    // Deleted in Kubernetes, not yet confirmed by its owner (`worker`).
    let state = if entry.deleting() { "Deleting" } else { state };
    ClusterAssignment {
        cluster: key.to_string(),
        worker,
        state: state.into(),
        status: entry.status.clone(),
        team: entry.team.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(
        actor: &mut Actor,
        session: u64,
    ) -> mpsc::UnboundedReceiver<Result<SchedulerMessage, tonic::Status>> {
        let (tx, rx) = mpsc::unbounded_channel();
        actor.handle(Input::Joined {
            id: "w1".into(),
            session,
            address: "a".into(),
            capacity: 1,
            tx,
        });
        rx
    }

    fn added(ns: &str, name: &str) -> Input {
        Input::Watch(WatchEvent {
            sequence: 0,
            event: Some(pgop_proto::v1::watch_event::Event::Cluster(
                pgop_proto::v1::ClusterEvent {
                    r#type: pgop_proto::v1::ClusterEventType::Add as i32,
                    namespace: ns.into(),
                    name: name.into(),
                    ..Default::default()
                },
            )),
        })
    }

    fn ask<T>(actor: &mut Actor, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> T {
        let (tx, mut rx) = oneshot::channel();
        actor.handle(make(tx));
        rx.try_recv().expect("answered at once")
    }

    #[test]
    fn one_cluster_is_looked_up_by_key_and_workers_count_theirs() {
        let (events, _) = broadcast::channel(16);
        let mut actor = Actor::new(Duration::from_secs(10), 4, events);
        let _stream = joined(&mut actor, 1);
        actor.handle(Input::SnapshotStarted);
        for name in ["a", "b", "c"] {
            actor.handle(added("ns", name));
        }
        let b = ask(&mut actor, |r| Input::Assignment("ns/b".into(), r)).expect("known");
        assert_eq!((b.cluster.as_str(), b.worker.as_str()), ("ns/b", "w1"));
        assert_eq!(b.state, "Assigned");
        assert!(ask(&mut actor, |r| Input::Assignment("ns/z".into(), r)).is_none());
        assert_eq!(ask(&mut actor, Input::Assignments).len(), 3);
        let workers = ask(&mut actor, Input::Workers);
        assert_eq!(workers.len(), 1);
        assert_eq!(workers[0].clusters, 3);
    }

    #[test]
    fn a_newer_session_ends_the_previous_one_which_cannot_remove_it() {
        let (events, _) = broadcast::channel(16);
        let mut actor = Actor::new(Duration::from_secs(10), 4, events);
        let mut old = joined(&mut actor, 1);
        let _new = joined(&mut actor, 2);
        match old.try_recv() {
            Ok(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::Aborted);
                assert!(status.message().contains("superseded"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(old.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)),
            "the old stream ends"
        );
        actor.handle(Input::Gone {
            id: "w1".into(),
            session: 1,
        });
        assert_eq!(actor.sessions["w1"].session, 2);
        assert!(actor.state.workers.contains_key("w1"));
    }
}
