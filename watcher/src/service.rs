//! The Watcher gRPC service: a subscription is the snapshot followed by live events.
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use pgop_proto::v1::watcher_server::Watcher;
use pgop_proto::v1::{GetWatcherStateRequest, SubscribeRequest, WatchEvent, WatcherState};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use crate::store::Store;

pub struct WatcherService {
    pub store: Arc<Store>,
    /// Subscriptions wait until every watch has listed once: a partial snapshot would make
    /// the scheduler delete the clusters it does not mention.
    pub lists: Arc<crate::kube_watch::InitialLists>,
    pub namespaces: Vec<String>,
    /// Ends subscriptions on shutdown; they would otherwise hold up a graceful stop.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Whether this replica holds the lease (always, without leader election): only the
    /// leader serves subscriptions, and they end the moment it stops leading.
    pub leading: pgop_common::lease::Leadership,
}

#[tonic::async_trait]
impl Watcher for WatcherService {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let subscriber = request.into_inner().subscriber;
        if !self.leading.leads() {
            return Err(Status::unavailable(format!(
                "this watcher is a standby: the replica holding the lease {} serves \
                 subscriptions; retry with another address",
                crate::LEASE_NAME
            )));
        }
        if !self.lists.complete() {
            return Err(Status::unavailable(
                "the watcher has not finished listing Kubernetes yet; retry shortly",
            ));
        }
        let (snapshot, live) = self.store.subscribe();
        tracing::info!(%subscriber, events = snapshot.len(), "new subscription: sending the snapshot");
        let live = BroadcastStream::new(live).map(|r| match r {
            Ok(e) => Ok(Arc::unwrap_or_clone(e)),
            // Too slow to keep up: end the stream; a resubscription starts from a snapshot.
            Err(BroadcastStreamRecvError::Lagged(n)) => Err(Status::resource_exhausted(format!(
                "subscriber lagged {n} events behind; resubscribe"
            ))),
        });
        let mut leading = self.leading.changes();
        let lost = async move {
            let _ = leading.wait_for(|leads| !leads).await;
        };
        let stream = futures::stream::iter(snapshot.into_iter().map(Ok))
            .chain(live)
            .take_until(self.shutdown.clone().cancelled_owned())
            // Fenced: a replica that no longer leads sends nothing more.
            .take_until(lost);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_state(
        &self,
        _: Request<GetWatcherStateRequest>,
    ) -> Result<Response<WatcherState>, Status> {
        let (clusters, pods, children, sequence) = self.store.counts();
        Ok(Response::new(WatcherState {
            clusters: clusters as u32,
            pods: pods as u32,
            children: children as u32,
            namespaces: self.namespaces.clone(),
            subscribers: self.store.subscribers() as u32,
            sequence,
        }))
    }
}
