//! pgop's watcher: the one component that watches Kubernetes.
pub mod kube_watch;
pub mod service;
pub mod store;

/// Settings (defaults < `--config FILE` < `PGOP_*` environment). `WATCHED_NAMESPACE` in the
/// environment overrides both the file and the operator ConfigMap.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub grpc_addr: String,
    /// Namespace of the operator itself and of its ConfigMap.
    pub namespace: String,
    pub config_map_name: String,
    /// Overrides the ConfigMap's resync_period when set (seconds).
    pub resync_period_seconds: Option<u64>,
    pub log_format: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50050".into(),
            namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
            config_map_name: "postgres-operator".into(),
            resync_period_seconds: None,
            log_format: "text".into(),
        }
    }
}

impl pgop_common::settings::ProcessSettings for Settings {
    fn log_format(&self) -> &str {
        &self.log_format
    }
}
