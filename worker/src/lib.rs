//! pgop's worker: reconciles the postgresql clusters the scheduler assigns to it.
pub mod apply;
pub mod builders;
mod cache;
pub mod cluster;
pub mod cluster_log;
pub mod context;
pub mod database;
pub mod delete_protection;
pub mod deletion;
pub mod finalizer;
pub mod maintenance;
pub mod manifest;
#[cfg(test)]
mod mock_api;
pub mod patroni;
pub mod patroni_config;
pub mod patroni_sync;
pub mod reconcile;
pub mod registry;
pub mod role_sync;
pub mod roles;
pub mod rolling;
pub mod rollout;
pub mod service;
pub mod session;
pub mod standing;
pub mod status;
pub mod view;
pub mod warnings;

/// Settings (defaults < `--config FILE` < `PGOP_*` environment).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Where the inspection gRPC server listens.
    pub grpc_addr: String,
    /// How the scheduler and the gateway reach this worker; `http://<grpc_addr>` if empty.
    pub advertise_addr: String,
    /// Unique per worker; `worker-<grpc port>` if empty.
    pub worker_id: String,
    pub scheduler_addr: String,
    /// The operator's namespace: where objects the configuration names without a namespace
    /// live (infrastructure roles, the teams API token). `POD_NAMESPACE` if empty.
    pub namespace: String,
    /// Clusters reconciled at once.
    pub concurrency: u32,
    pub heartbeat_interval_seconds: u64,
    pub log_format: String,
    /// The admin port: `/metrics` (Prometheus text), `/livez`, `/readyz` (ready while a
    /// session with the scheduler is open); empty: not served.
    pub admin_addr: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50052".into(),
            advertise_addr: String::new(),
            worker_id: String::new(),
            scheduler_addr: "http://127.0.0.1:50051".into(),
            namespace: String::new(),
            concurrency: 8,
            heartbeat_interval_seconds: 2,
            log_format: "text".into(),
            admin_addr: String::new(),
        }
    }
}

impl Settings {
    pub fn worker_id(&self) -> String {
        if !self.worker_id.is_empty() {
            return self.worker_id.clone();
        }
        let port = self.grpc_addr.rsplit(':').next().unwrap_or_default();
        format!("worker-{port}")
    }

    pub fn namespace(&self) -> String {
        if !self.namespace.is_empty() {
            return self.namespace.clone();
        }
        std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into())
    }

    pub fn advertise_addr(&self) -> String {
        if self.advertise_addr.is_empty() {
            format!("http://{}", self.grpc_addr)
        } else {
            self.advertise_addr.clone()
        }
    }
}

impl pgop_common::settings::ProcessSettings for Settings {
    fn log_format(&self) -> &str {
        &self.log_format
    }
}
