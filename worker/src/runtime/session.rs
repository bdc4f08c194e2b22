//! The worker's one long-lived session with the scheduler: Hello, heartbeats, and the
//! scheduler's assignments, events and release requests handed to the registry. When the
//! session ends for any reason the worker fences itself (stops every cluster task) before
//! it reconnects, so two workers never act on one cluster.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgop_common::retry::{Backoff, RetryPolicy};
use pgop_proto::v1::scheduler_client::SchedulerClient;
use pgop_proto::v1::{scheduler_message, worker_message, Heartbeat, Hello, WorkerMessage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::cluster::view::View;
use crate::runtime::registry::{Command, RegistryHandle};

pub struct SessionSettings {
    /// The scheduler, or its replicas comma-separated.
    pub scheduler_addr: String,
    pub worker_id: String,
    pub advertise_addr: String,
    pub capacity: u32,
    pub heartbeat_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connecting to the scheduler at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("scheduler: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("the scheduler closed the session")]
    Closed,
}

/// Keeps a session with the scheduler open; `open` says whether one is (the worker's
/// readiness).
pub async fn run(
    settings: SessionSettings,
    registry: RegistryHandle,
    view: View,
    open: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    // The scheduler's replicas (see pgop_common::addresses): a standby refuses (UNAVAILABLE)
    // and the next is tried at once; the reconnect back-off after a round without a session.
    let mut backoff = RetryPolicy::RECONNECT.backoff();
    let mut round: Vec<String> = Vec::new();
    loop {
        if round.is_empty() {
            round = pgop_common::addresses::resolve(&settings.scheduler_addr).await;
            round.reverse();
        }
        let Some(address) = round.pop() else {
            tracing::error!("no scheduler address: scheduler_addr is empty");
            return;
        };
        let address = &address;
        let result = session(
            &settings,
            address,
            &registry,
            &view,
            &open,
            &shutdown,
            &mut backoff,
        )
        .await;
        open.store(false, Ordering::Relaxed);
        registry.fence().await;
        if shutdown.is_cancelled() {
            return;
        }
        if let (Err(e), false) = (&result, round.is_empty()) {
            tracing::info!(scheduler = %address, "session: {e}; trying the next address");
            continue;
        }
        let delay = backoff.next_delay();
        if let Err(e) = result {
            tracing::warn!(scheduler = %address, "session ended: {e}; reconnecting in {delay:?}");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One session with the scheduler at `address`; `backoff` starts over once it is open.
async fn session(
    settings: &SessionSettings,
    address: &str,
    registry: &RegistryHandle,
    view: &View,
    open: &AtomicBool,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let connect_error = |source| SessionError::Connect {
        addr: address.to_string(),
        source,
    };
    // HTTP/2 pings notice a vanished scheduler (or a partition) within seconds, well before
    // the scheduler's heartbeat timeout hands this worker's clusters to another one, and
    // before a new leader takes sessions (`pgop_common::fencing`).
    let channel = Endpoint::from_shared(address.to_string())
        .map_err(connect_error)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(pgop_common::fencing::WORKER_PING_INTERVAL)
        .keep_alive_timeout(pgop_common::fencing::WORKER_PING_TIMEOUT)
        .keep_alive_while_idle(true);
    let connect = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        c = channel.connect() => c,
    };
    let mut client = SchedulerClient::new(connect.map_err(connect_error)?);
    // Unbounded: cluster tasks report (statuses, releases) without ever waiting on the
    // network, so a slow connection never holds up a pass; about one message per pass, sent
    // as fast as HTTP/2 takes them, and dropped with the session.
    let (outbound, rx) = mpsc::unbounded_channel();
    let _ = outbound.send(WorkerMessage {
        message: Some(worker_message::Message::Hello(Hello {
            worker_id: settings.worker_id.clone(),
            capacity: settings.capacity,
            address: settings.advertise_addr.clone(),
        })),
    });
    let mut inbound = client
        .session(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(scheduler = %address, worker = %settings.worker_id, "session open");
    open.store(true, Ordering::Relaxed);
    backoff.reset();
    registry.send(Command::SessionStarted(outbound.clone()));
    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                // Stop every cluster first, so their last messages (statuses, releases) reach
                // the scheduler before it hands the clusters to another worker.
                registry.fence().await;
                drop(outbound);
                let closed = async { while let Ok(Some(_)) = inbound.message().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(2), closed).await;
                return Ok(());
            }
            _ = heartbeat.tick() => {
                let (clusters, queued) = view.counts();
                let _ = outbound.send(WorkerMessage {
                    message: Some(worker_message::Message::Heartbeat(Heartbeat { clusters, queued })),
                });
            }
            message = inbound.message() => match message? {
                None => return Err(SessionError::Closed),
                Some(m) => match m.message {
                    Some(scheduler_message::Message::Assign(a)) => registry.send(Command::Assign(a)),
                    Some(scheduler_message::Message::Event(e)) => registry.send(Command::Event(e)),
                    Some(scheduler_message::Message::Release(r)) => registry.send(Command::Release(r.cluster)),
                    Some(scheduler_message::Message::RollingTurn(t)) => registry.send(Command::TurnGranted(t.cluster)),
                    None => {}
                },
            },
        }
    }
}
