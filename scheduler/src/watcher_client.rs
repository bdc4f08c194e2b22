//! The scheduler's subscription to the watcher, re-established after any failure; every
//! subscription starts with a full snapshot, so nothing is lost across restarts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgop_common::retry::{Backoff, RetryPolicy};
use pgop_proto::v1::watcher_client::WatcherClient;
use pgop_proto::v1::SubscribeRequest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::actor::Input;

/// Subscribes to the first of `addresses` (see [`pgop_common::addresses`]) that serves: with
/// several watcher replicas, the standbys refuse (UNAVAILABLE) and the next address is tried
/// at once; after a round without success, the reconnect back-off.
pub async fn run(
    addresses: String,
    inputs: mpsc::UnboundedSender<Input>,
    subscribed: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = RetryPolicy::RECONNECT.backoff();
    let mut round: Vec<String> = Vec::new();
    while !shutdown.is_cancelled() {
        if round.is_empty() {
            round = pgop_common::addresses::resolve(&addresses).await;
            round.reverse();
        }
        let Some(address) = round.pop() else {
            tracing::error!("no watcher address: watcher_addr is empty");
            return;
        };
        let result = subscribe(&address, &inputs, &subscribed, &shutdown, &mut backoff).await;
        subscribed.store(false, Ordering::Relaxed);
        let Err(e) = result else {
            return;
        };
        if !round.is_empty() {
            tracing::info!(watcher = %address, "watcher subscription: {e}; trying the next address");
            continue;
        }
        let delay = backoff.next_delay();
        tracing::warn!(watcher = %address, "watcher subscription: {e}; retrying in {delay:?}");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One subscription; `backoff` starts over once it is established.
async fn subscribe(
    address: &str,
    inputs: &mpsc::UnboundedSender<Input>,
    subscribed: &AtomicBool,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), tonic::Status> {
    // HTTP/2 pings notice a vanished or partitioned watcher within seconds.
    let channel = tonic::transport::Endpoint::from_shared(address.to_string())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = WatcherClient::new(channel);
    let mut stream = client
        .subscribe(SubscribeRequest {
            subscriber: "scheduler".into(),
        })
        .await?
        .into_inner();
    tracing::info!(watcher = %address, "subscribed to the watcher");
    subscribed.store(true, Ordering::Relaxed);
    backoff.reset();
    let _ = inputs.send(Input::SnapshotStarted);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            e = stream.message() => e?,
        };
        match event {
            Some(ev) => {
                if inputs.send(Input::Watch(ev)).is_err() {
                    return Ok(());
                }
            }
            None => return Err(tonic::Status::unavailable("the watcher closed the stream")),
        }
    }
}
