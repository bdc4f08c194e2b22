//! The gRPC client side: one lazily connected channel to the scheduler, and one per worker
//! address (taken from the scheduler's `ListWorkers`), cached by address and pruned to the
//! addresses the scheduler last listed. Every call is bounded by the request timeout.
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use pgop_proto::v1::scheduler_client::SchedulerClient;
use pgop_proto::v1::worker_client::WorkerClient;
use pgop_proto::v1::{
    ClusterAssignment, ClusterHistory, ClusterLogs, ClusterState, EffectiveConfig,
    GetClusterRequest, GetConfigRequest, GetQueueRequest, ListAssignmentsRequest,
    ListClustersRequest, ListWorkersRequest, QueueState, SyncClusterResponse, WorkerInfo,
};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::error::{ApiError, InvalidAddress};

pub struct Backend {
    /// The scheduler's replicas (see `pgop_common::addresses`): a standby answers
    /// UNAVAILABLE and the next one is asked.
    scheduler_addr: String,
    /// Scheduler channels by resolved address.
    schedulers: Mutex<HashMap<String, Channel>>,
    /// Worker channels by normalised address.
    workers: Mutex<HashMap<String, Channel>>,
    timeout: Duration,
}

/// `host:port` gets `http://`; an address with a scheme is kept as it is.
pub fn normalize_address(address: &str) -> Result<String, InvalidAddress> {
    let address = address.trim();
    if address.is_empty() {
        return Err(InvalidAddress {
            address: address.into(),
            reason: "empty".into(),
        });
    }
    Ok(if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    })
}

fn endpoint(address: &str, timeout: Duration) -> Result<Endpoint, InvalidAddress> {
    let uri = normalize_address(address)?;
    Endpoint::from_shared(uri)
        .map(|e| e.connect_timeout(timeout))
        .map_err(|e| InvalidAddress {
            address: address.into(),
            reason: e.to_string(),
        })
}

fn worker_label(id: &str) -> String {
    format!("worker {id}")
}

impl Backend {
    /// Connects lazily: nothing is dialled until the first request. `scheduler_addr` may
    /// name the scheduler's replicas comma-separated.
    pub fn new(scheduler_addr: &str, timeout: Duration) -> Result<Self, InvalidAddress> {
        let mut listed = 0;
        for address in scheduler_addr.split(',').filter(|a| !a.trim().is_empty()) {
            endpoint(address, timeout)?;
            listed += 1;
        }
        if listed == 0 {
            return Err(InvalidAddress {
                address: scheduler_addr.into(),
                reason: "empty".into(),
            });
        }
        Ok(Self {
            scheduler_addr: scheduler_addr.into(),
            schedulers: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            timeout,
        })
    }

    /// The normalised addresses of the cached worker channels, sorted.
    pub fn cached_worker_addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = self.cache().keys().cloned().collect();
        addresses.sort();
        addresses
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        // The map stays consistent even if a holder panicked.
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `message` with the timeout and maps the outcome to the gateway's errors.
    async fn call<M, T, F>(
        &self,
        backend: &str,
        message: M,
        send: impl FnOnce(tonic::Request<M>) -> F,
    ) -> Result<T, ApiError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // A late call is dropped, which resets its HTTP/2 stream.
        // (No grpc-timeout header: tonic's own timeout would race this one and answer
        // Cancelled instead.)
        match tokio::time::timeout(self.timeout, send(tonic::Request::new(message))).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ApiError::from_status(backend, status)),
            Err(_) => Err(ApiError::Timeout {
                backend: backend.into(),
                after: self.timeout,
            }),
        }
    }

    /// Asks the scheduler replicas in turn until one that is not a standby answers.
    async fn ask_scheduler<M, T, F>(
        &self,
        message: M,
        send: impl Fn(SchedulerClient<Channel>, tonic::Request<M>) -> F,
    ) -> Result<T, ApiError>
    where
        M: Clone,
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut answer = None;
        let resolved = pgop_common::addresses::resolve(&self.scheduler_addr).await;
        // Replicas come and go (new pods, new addresses): keep the channels of current ones.
        self.schedulers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|address, _| resolved.contains(address));
        for address in resolved {
            let client = self.scheduler_client(&address)?;
            let result = self
                .call("scheduler", message.clone(), |r| send(client, r))
                .await;
            match result {
                Err(e @ ApiError::Unavailable { .. }) => answer = Some(Err(e)),
                other => return other,
            }
        }
        answer.unwrap_or_else(|| {
            Err(ApiError::Unavailable {
                backend: "scheduler".into(),
                message: format!("{} resolves to no address", self.scheduler_addr),
            })
        })
    }

    /// The channel to one scheduler replica, made once (connected lazily) and kept.
    fn scheduler_client(&self, address: &str) -> Result<SchedulerClient<Channel>, ApiError> {
        let mut channels = self
            .schedulers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(SchedulerClient::new(channel.clone()));
        }
        let channel = endpoint(address, self.timeout)
            .map_err(|e| ApiError::Unavailable {
                backend: "scheduler".into(),
                message: e.to_string(),
            })?
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(SchedulerClient::new(channel))
    }

    /// The operator configuration in force, as the scheduler has it (credentials redacted).
    pub async fn config(&self) -> Result<EffectiveConfig, ApiError> {
        self.ask_scheduler(GetConfigRequest {}, |mut client, r| async move {
            client.get_config(r).await
        })
        .await
    }

    /// Every cluster the scheduler knows, with its owner and state.
    pub async fn assignments(&self) -> Result<Vec<ClusterAssignment>, ApiError> {
        let response = self
            .ask_scheduler(ListAssignmentsRequest {}, |mut client, r| async move {
                client.list_assignments(r).await
            })
            .await?;
        Ok(response.clusters)
    }

    /// The scheduler's assignment of one cluster; 404 when it does not know it.
    pub async fn assignment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ClusterAssignment, ApiError> {
        let request = GetClusterRequest {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.ask_scheduler(request, |mut client, r| async move {
            client.get_cluster(r).await
        })
        .await
        .map_err(|e| match e {
            ApiError::Backend { status, .. } if status.code() == Code::NotFound => {
                ApiError::NotFound(format!("could not find cluster {namespace}/{name}"))
            }
            e => e,
        })
    }

    /// The live workers, sorted by id. Forgets the channels of addresses no longer listed.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, ApiError> {
        let mut workers = self
            .ask_scheduler(ListWorkersRequest {}, |mut client, r| async move {
                client.list_workers(r).await
            })
            .await?
            .workers;
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        let listed: Vec<String> = workers
            .iter()
            .filter_map(|w| normalize_address(&w.address).ok())
            .collect();
        self.cache().retain(|address, _| listed.contains(address));
        Ok(workers)
    }

    /// One live worker; 404 when the scheduler does not list it.
    pub async fn worker(&self, id: &str) -> Result<WorkerInfo, ApiError> {
        self.workers()
            .await?
            .into_iter()
            .find(|w| w.worker_id == id)
            .ok_or_else(|| ApiError::NotFound(format!("could not find worker {id}")))
    }

    fn worker_client(&self, worker: &WorkerInfo) -> Result<WorkerClient<Channel>, ApiError> {
        let unusable = |e: InvalidAddress| ApiError::Unavailable {
            backend: worker_label(&worker.worker_id),
            message: e.to_string(),
        };
        let address = normalize_address(&worker.address).map_err(unusable)?;
        let mut cache = self.cache();
        let channel = match cache.get(&address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = endpoint(&address, self.timeout)
                    .map_err(unusable)?
                    .connect_lazy();
                cache.insert(address, channel.clone());
                channel
            }
        };
        Ok(WorkerClient::new(channel))
    }

    /// The worker's state of a cluster; `None` when the worker does not have it (yet).
    pub async fn worker_cluster(
        &self,
        worker: &WorkerInfo,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ClusterState>, ApiError> {
        let mut client = self.worker_client(worker)?;
        let request = GetClusterRequest {
            namespace: namespace.into(),
            name: name.into(),
        };
        match self
            .call(&worker_label(&worker.worker_id), request, |r| async move {
                client.get_cluster(r).await
            })
            .await
        {
            Ok(state) => Ok(Some(state)),
            Err(ApiError::Backend { status, .. }) if status.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The worker's event queue.
    /// Every cluster a worker owns, with its state.
    pub async fn worker_clusters(
        &self,
        worker: &WorkerInfo,
    ) -> Result<Vec<ClusterState>, ApiError> {
        let mut client = self.worker_client(worker)?;
        let response = self
            .call(
                &worker_label(&worker.worker_id),
                ListClustersRequest {},
                |r| async move { client.list_clusters(r).await },
            )
            .await?;
        Ok(response.clusters)
    }

    /// The live worker that owns `namespace/name`; 404 when the scheduler does not know
    /// the cluster, 503 while no live worker owns it (a move).
    pub async fn owner(&self, namespace: &str, name: &str) -> Result<WorkerInfo, ApiError> {
        let (assignment, workers) =
            tokio::try_join!(self.assignment(namespace, name), self.workers())?;
        workers
            .into_iter()
            .find(|w| !assignment.worker.is_empty() && w.worker_id == assignment.worker)
            .ok_or_else(|| ApiError::Unavailable {
                backend: "scheduler".into(),
                message: format!("no live worker owns {namespace}/{name} right now"),
            })
    }

    pub async fn sync_cluster(
        &self,
        worker: &WorkerInfo,
        namespace: &str,
        name: &str,
    ) -> Result<SyncClusterResponse, ApiError> {
        let mut client = self.worker_client(worker)?;
        self.call(
            &worker_label(&worker.worker_id),
            cluster_request(namespace, name),
            |r| async move { client.sync_cluster(r).await },
        )
        .await
    }

    pub async fn cluster_logs(
        &self,
        worker: &WorkerInfo,
        namespace: &str,
        name: &str,
    ) -> Result<ClusterLogs, ApiError> {
        let mut client = self.worker_client(worker)?;
        self.call(
            &worker_label(&worker.worker_id),
            cluster_request(namespace, name),
            |r| async move { client.get_cluster_logs(r).await },
        )
        .await
    }

    pub async fn cluster_history(
        &self,
        worker: &WorkerInfo,
        namespace: &str,
        name: &str,
    ) -> Result<ClusterHistory, ApiError> {
        let mut client = self.worker_client(worker)?;
        self.call(
            &worker_label(&worker.worker_id),
            cluster_request(namespace, name),
            |r| async move { client.get_cluster_history(r).await },
        )
        .await
    }

    pub async fn worker_queue(&self, worker: &WorkerInfo) -> Result<QueueState, ApiError> {
        let mut client = self.worker_client(worker)?;
        self.call(
            &worker_label(&worker.worker_id),
            GetQueueRequest {},
            |r| async move { client.get_queue(r).await },
        )
        .await
    }
}

fn cluster_request(namespace: &str, name: &str) -> GetClusterRequest {
    GetClusterRequest {
        namespace: namespace.into(),
        name: name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_scheme() {
        assert_eq!(
            normalize_address("127.0.0.1:50052").unwrap(),
            "http://127.0.0.1:50052"
        );
        assert_eq!(
            normalize_address("http://127.0.0.1:50052").unwrap(),
            "http://127.0.0.1:50052"
        );
        assert!(normalize_address(" ").is_err());
        assert!(endpoint("http://bad host:1", Duration::from_secs(1)).is_err());
    }
}
