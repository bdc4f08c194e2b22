//! pgop's scheduler: shard assignment and event routing.
pub mod actor;
pub mod service;
pub mod sharding;
pub mod state;
pub mod turns;
pub mod watcher_client;

/// Settings (defaults < `--config FILE` < `PGOP_*` environment).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub grpc_addr: String,
    /// The watcher, or its replicas comma-separated (the one leading serves; in a cluster the
    /// Service `pgop-watcher` reaches them all).
    pub watcher_addr: String,
    /// A worker silent for this long is declared dead and its clusters move.
    pub heartbeat_timeout_seconds: u64,
    /// Clusters of the whole fleet replacing pods (rolling updates) at once.
    pub rolling_updates: u32,
    pub log_format: String,
    /// Run as one of several replicas: the one holding the Lease `pgop-scheduler` in
    /// `namespace` takes worker sessions and answers; the others follow the watcher (their
    /// copy of the fleet stays warm) and refuse with UNAVAILABLE until they take over.
    pub leader_election: bool,
    /// How long the lease lasts without renewal.
    pub lease_duration_seconds: u64,
    /// This replica among the candidates; `POD_NAME`, else `HOSTNAME`, if empty.
    pub identity: String,
    /// Where the lease lives (the operator's namespace); `POD_NAMESPACE` if empty.
    pub namespace: String,
    /// The admin port: `/livez`, `/readyz` (ready while subscribed to the watcher, standby or
    /// not); empty: not served.
    pub admin_addr: String,
}

/// The Lease the scheduler replicas compete for.
pub const LEASE_NAME: &str = "pgop-scheduler";

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50051".into(),
            watcher_addr: "http://127.0.0.1:50050".into(),
            heartbeat_timeout_seconds: 10,
            rolling_updates: 4,
            log_format: "text".into(),
            leader_election: false,
            lease_duration_seconds: 15,
            identity: String::new(),
            namespace: String::new(),
            admin_addr: String::new(),
        }
    }
}

impl pgop_common::settings::ProcessSettings for Settings {
    fn log_format(&self) -> &str {
        &self.log_format
    }
}
