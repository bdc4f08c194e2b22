//! pgop's REST status and debug API: Zalando's operator API (`/status/`, `/clusters/…`,
//! `/workers/…`) answered from the scheduler and the workers over gRPC.
//!
//! [`routes`] has the endpoints and their JSON shapes, [`backend`] the gRPC clients,
//! [`error`] the error responses.
use std::time::Duration;

pub mod backend;
pub mod error;
pub mod routes;

/// Settings (defaults < `--config FILE` < `PGOP_*` environment, e.g. `PGOP_HTTP_ADDR`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Where the HTTP API listens.
    pub http_addr: String,
    /// The scheduler's gRPC address (`http://host:port` or `host:port`), or its replicas
    /// comma-separated.
    pub scheduler_addr: String,
    /// How long one gRPC call to the scheduler or a worker may take before the request
    /// fails with 504 (at least 1).
    pub request_timeout_seconds: u64,
    pub log_format: String,
    /// The admin port: `/livez`, `/readyz` (always ready: the gateway keeps no state);
    /// empty: not served.
    pub admin_addr: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".into(),
            scheduler_addr: "http://127.0.0.1:50051".into(),
            request_timeout_seconds: 5,
            log_format: "text".into(),
            admin_addr: String::new(),
        }
    }
}

impl Settings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds.max(1))
    }
}

impl pgop_common::settings::ProcessSettings for Settings {
    fn log_format(&self) -> &str {
        &self.log_format
    }
}
