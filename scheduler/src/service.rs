//! The Scheduler gRPC service: worker sessions and inspection.
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures::{Stream, StreamExt};
use std::collections::BTreeMap;

use pgop_common::config;
use pgop_common::lease::Leadership;
use pgop_proto::v1::scheduler_server::Scheduler;
use pgop_proto::v1::{
    worker_message, ClusterAssignment, EffectiveConfig, EventRecord, GetClusterRequest,
    GetConfigRequest, ListAssignmentsRequest, ListAssignmentsResponse, ListWorkersRequest,
    ListWorkersResponse, SchedulerMessage, WatchEventsRequest, WorkerMessage,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::actor::Input;

pub struct SchedulerService {
    inputs: mpsc::UnboundedSender<Input>,
    events: broadcast::Sender<EventRecord>,
    sessions: AtomicU64,
    /// Ends long-lived streams, which would otherwise hold up a graceful shutdown.
    shutdown: CancellationToken,
    /// Whether this replica holds the lease (always, without leader election): only the
    /// leader takes sessions and answers; its sessions end the moment it stops leading, so
    /// their workers fence themselves before another leader hands out their clusters.
    leading: Leadership,
    /// When this replica last started leading, and how long after that it refuses worker
    /// sessions (`pgop_common::fencing`): the previous leader's workers are fencing.
    leading_since: Arc<Mutex<Option<Instant>>>,
    takeover_grace: Duration,
}

impl SchedulerService {
    pub fn new(
        inputs: mpsc::UnboundedSender<Input>,
        events: broadcast::Sender<EventRecord>,
        shutdown: CancellationToken,
        leading: Leadership,
        takeover_grace: Duration,
    ) -> Self {
        let leading_since = Arc::new(Mutex::new(None));
        let mut changes = leading.changes();
        let since = leading_since.clone();
        tokio::spawn(async move {
            loop {
                let leads = *changes.borrow_and_update();
                *since.lock().unwrap_or_else(|e| e.into_inner()) = leads.then(Instant::now);
                if changes.changed().await.is_err() {
                    break;
                }
            }
        });
        Self {
            inputs,
            events,
            sessions: AtomicU64::new(0),
            shutdown,
            leading,
            leading_since,
            takeover_grace,
        }
    }

    /// Refuses worker sessions while the previous leader's workers may still be acting.
    fn taken_over(&self) -> Result<(), Status> {
        let since = *self.leading_since.lock().unwrap_or_else(|e| e.into_inner());
        match since.map(|s| s.elapsed()) {
            Some(led) if led < self.takeover_grace => Err(Status::unavailable(format!(
                "this scheduler took the lease {:.1}s ago and takes worker sessions after {:.1}s, \
                 once the previous leader's workers have stopped; retry",
                led.as_secs_f64(),
                self.takeover_grace.as_secs_f64()
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses on a standby, so that clients go on to the leader.
    fn lead(&self) -> Result<(), Status> {
        match self.leading.leads() {
            true => Ok(()),
            false => Err(Status::unavailable(format!(
                "this scheduler is a standby: the replica holding the lease {} answers; \
                 retry with another address",
                crate::LEASE_NAME
            ))),
        }
    }

    /// Completes when this replica stops leading.
    fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut leading = self.leading.changes();
        async move {
            let _ = leading.wait_for(|leads| !leads).await;
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.inputs
            .send(make(tx))
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?;
        rx.await
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    type SessionStream = BoxStream<SchedulerMessage>;
    type WatchEventsStream = BoxStream<EventRecord>;

    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.lead()?;
        self.taken_over()?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(WorkerMessage {
                message: Some(worker_message::Message::Hello(h)),
            }) if !h.worker_id.is_empty() => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a session starts with Hello carrying a worker_id",
                ))
            }
        };
        let session = self.sessions.fetch_add(1, Ordering::Relaxed);
        // Unbounded: the actor never waits on one slow worker (the others carry on). The
        // backlog is that worker's own clusters' events; a worker that stops reading misses
        // its heartbeats, is declared dead and its channel dropped.
        let (tx, rx) = mpsc::unbounded_channel();
        let id = hello.worker_id.clone();
        self.inputs
            .send(Input::Joined {
                id: id.clone(),
                session,
                address: hello.address,
                capacity: hello.capacity,
                tx,
            })
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?;
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        if inputs
                            .send(Input::FromWorker {
                                id: id.clone(),
                                session,
                                message,
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(worker = %id, "session stream failed: {e}");
                        break;
                    }
                }
            }
            let _ = inputs.send(Input::Gone { id, session });
        });
        let stream = UnboundedReceiverStream::new(rx)
            .take_until(self.shutdown.clone().cancelled_owned())
            // Fenced: a replica that no longer leads ends every session.
            .take_until(self.lost());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_assignments(
        &self,
        _: Request<ListAssignmentsRequest>,
    ) -> Result<Response<ListAssignmentsResponse>, Status> {
        self.lead()?;
        let clusters = self.ask(Input::Assignments).await?;
        Ok(Response::new(ListAssignmentsResponse { clusters }))
    }

    async fn get_cluster(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterAssignment>, Status> {
        self.lead()?;
        let r = request.into_inner();
        if r.namespace.is_empty() || r.name.is_empty() {
            return Err(Status::invalid_argument("namespace and name are required"));
        }
        let key = format!("{}/{}", r.namespace, r.name);
        self.ask(|reply| Input::Assignment(key.clone(), reply))
            .await?
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("cluster {key} is not known")))
    }

    async fn list_workers(
        &self,
        _: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        self.lead()?;
        let workers = self.ask(Input::Workers).await?;
        Ok(Response::new(ListWorkersResponse { workers }))
    }

    async fn get_config(
        &self,
        _: Request<GetConfigRequest>,
    ) -> Result<Response<EffectiveConfig>, Status> {
        self.lead()?;
        let event = self.ask(Input::Config).await?;
        let (data, source) = match event {
            Some(c) if !c.deleted => (c.data.into_iter().collect(), "configmap"),
            _ => (BTreeMap::new(), "defaults"),
        };
        let config = config::from_config_map_data(&data)
            // The watcher forwards only configurations that load.
            .map_err(|e| Status::internal(format!("the configuration does not load: {e}")))?;
        Ok(Response::new(EffectiveConfig {
            json: config::effective_config_json(&config).to_string(),
            unknown_keys: config.unknown_keys.clone(),
            source: source.into(),
        }))
    }

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.lead()?;
        let filter = request.into_inner().cluster;
        let stream = pgop_proto::event_records(self.events.subscribe(), filter);
        let stream = stream
            .take_until(self.shutdown.clone().cancelled_owned())
            .take_until(self.lost());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(takeover_grace: Duration) -> SchedulerService {
        let (inputs, _) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1);
        SchedulerService::new(
            inputs,
            events,
            CancellationToken::new(),
            pgop_common::lease::always(),
            takeover_grace,
        )
    }

    /// A new leader refuses worker sessions for the takeover grace, then takes them.
    #[tokio::test(start_paused = true)]
    async fn sessions_are_refused_during_the_takeover_grace() {
        let service = service(Duration::from_secs(5));
        tokio::task::yield_now().await;
        let refused = service.taken_over().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(refused.message().contains("retry"), "{}", refused.message());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(service.taken_over().is_err(), "still within the grace");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(service.taken_over().is_ok(), "past the grace");

        let alone = self::service(Duration::ZERO);
        tokio::task::yield_now().await;
        assert!(
            alone.taken_over().is_ok(),
            "no grace without leader election"
        );
    }
}
