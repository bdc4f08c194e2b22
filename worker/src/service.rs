//! The Worker gRPC service: inspection of what this worker owns and does.
use std::pin::Pin;

use futures::{Stream, StreamExt};
use pgop_proto::v1::worker_server::Worker;
use pgop_proto::v1::{
    ClusterState, EventRecord, GetClusterRequest, GetQueueRequest, ListClustersRequest,
    ListClustersResponse, QueueState, WatchEventsRequest,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::view::View;

pub struct WorkerService {
    pub view: View,
    /// Ends event streams on shutdown; they would otherwise hold up a graceful stop.
    pub shutdown: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    type WatchEventsStream = BoxStream<EventRecord>;

    async fn list_clusters(
        &self,
        _: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        Ok(Response::new(ListClustersResponse {
            clusters: self.view.clusters(),
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterState>, Status> {
        let r = request.into_inner();
        if r.namespace.is_empty() || r.name.is_empty() {
            return Err(Status::invalid_argument("namespace and name are required"));
        }
        let key = format!("{}/{}", r.namespace, r.name);
        self.view.cluster(&key).map(Response::new).ok_or_else(|| {
            Status::not_found(format!(
                "cluster {key} is not owned by worker {}",
                self.view.worker_id()
            ))
        })
    }

    async fn get_queue(&self, _: Request<GetQueueRequest>) -> Result<Response<QueueState>, Status> {
        let (entries, running) = self.view.queue();
        Ok(Response::new(QueueState {
            worker_id: self.view.worker_id().to_string(),
            entries,
            running,
        }))
    }

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let filter = request.into_inner().cluster;
        let stream = pgop_proto::event_records(self.view.subscribe(), filter);
        Ok(Response::new(Box::pin(
            stream.take_until(self.shutdown.clone().cancelled_owned()),
        )))
    }
}
