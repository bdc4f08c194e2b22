//! The Worker gRPC service: inspection of what this worker owns and does.
use std::pin::Pin;

use futures::{Stream, StreamExt};
use pgop_proto::v1::worker_server::Worker;
use pgop_proto::v1::{
    ClusterHistory, ClusterLogs, ClusterState, EventRecord, GetClusterRequest, GetQueueRequest,
    ListClustersRequest, ListClustersResponse, QueueState, SyncClusterResponse, WatchEventsRequest,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::cluster::view::View;
use crate::runtime::registry::{Command, RegistryHandle};

pub struct WorkerService {
    pub view: View,
    pub registry: RegistryHandle,
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
        let key = cluster_key(request)?;
        self.view
            .cluster(&key)
            .map(Response::new)
            .ok_or_else(|| self.not_owned(&key))
    }

    async fn sync_cluster(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<SyncClusterResponse>, Status> {
        let key = cluster_key(request)?;
        let (tx, rx) = oneshot::channel();
        self.registry.send(Command::Sync(key.clone(), tx));
        match rx.await {
            Ok(true) => Ok(Response::new(SyncClusterResponse {
                worker: self.view.worker_id().to_string(),
            })),
            Ok(false) => Err(self.not_owned(&key)),
            Err(_) => Err(Status::unavailable("the worker is shutting down")),
        }
    }

    async fn get_cluster_logs(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterLogs>, Status> {
        let key = cluster_key(request)?;
        let entries = self.view.logs(&key).ok_or_else(|| self.not_owned(&key))?;
        Ok(Response::new(ClusterLogs {
            worker: self.view.worker_id().to_string(),
            entries,
        }))
    }

    async fn get_cluster_history(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterHistory>, Status> {
        let key = cluster_key(request)?;
        let entries = self
            .view
            .history(&key)
            .ok_or_else(|| self.not_owned(&key))?;
        Ok(Response::new(ClusterHistory {
            worker: self.view.worker_id().to_string(),
            entries,
        }))
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

impl WorkerService {
    fn not_owned(&self, key: &str) -> Status {
        Status::not_found(format!(
            "cluster {key} is not owned by worker {}",
            self.view.worker_id()
        ))
    }
}

/// `namespace/name` of a request naming one cluster.
fn cluster_key(request: Request<GetClusterRequest>) -> Result<String, Status> {
    let r = request.into_inner();
    if r.namespace.is_empty() || r.name.is_empty() {
        return Err(Status::invalid_argument("namespace and name are required"));
    }
    Ok(format!("{}/{}", r.namespace, r.name))
}
