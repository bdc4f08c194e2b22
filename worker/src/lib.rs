//! pgop's worker: reconciles the postgresql clusters the scheduler assigns to it.
//!
//! Layers, each depending only on those above it:
//! - `pure`: what the objects, roles and rolling steps should be, from plain values (the
//!   manifest, the configuration, what was observed); no I/O, table-tested.
//! - `cache`: what the worker knows without asking (the watcher's reports, the last sync).
//! - `clients`: Kubernetes writes, Patroni's REST API, PostgreSQL, the teams API.
//! - `cluster`: one task per owned cluster and the steps of its passes.
//! - `runtime`: the session with the scheduler, the registry of tasks, the inspection
//!   service and the per-cluster log ring.
mod cache;
pub(crate) mod clients;
pub mod cluster;
pub mod pure;
pub mod runtime;

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
