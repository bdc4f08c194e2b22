//! pgop's local kubelet: makes this machine a three-node Kubernetes cluster whose pods are
//! local processes (Patroni + PostgreSQL for Spilo images, pgbouncer for pooler images, a
//! stand-in command for everything else), or, in simulate mode, no processes at all.
pub mod addresses;
pub mod config;
pub mod dns;
pub mod kubelet_api;
pub mod nodes;
pub mod pods;
pub mod runtime;
pub mod storage;

use std::path::Path;

use tokio_util::sync::CancellationToken;

/// Context name in the kubeconfigs the kubelet writes for Patroni.
pub const KUBE_CONTEXT: &str = "pgop-local";

/// Where the API server is and how the kubelet itself authenticates.
#[derive(Debug, Clone)]
pub struct ApiServer {
    pub server: String,
    pub ca_data: String,
    pub admin_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("parsing {0}: {1}")]
    Parse(String, serde_yaml::Error),
    #[error("{0} lacks {1} in its current context")]
    Missing(String, &'static str),
}

impl ApiServer {
    /// Reads the current context of a token-based kubeconfig.
    pub fn from_kubeconfig(path: &Path) -> Result<Self, KubeconfigError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| KubeconfigError::Read(shown.clone(), e))?;
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| KubeconfigError::Parse(shown.clone(), e))?;
        let current = doc["current-context"].as_str().unwrap_or_default();
        let by_name = |list: &str, name: &str| {
            doc[list]
                .as_sequence()
                .and_then(|s| s.iter().find(|e| e["name"].as_str() == Some(name)).cloned())
        };
        let context = by_name("contexts", current)
            .ok_or_else(|| KubeconfigError::Missing(shown.clone(), "a context"))?;
        let cluster = by_name(
            "clusters",
            context["context"]["cluster"].as_str().unwrap_or_default(),
        )
        .ok_or_else(|| KubeconfigError::Missing(shown.clone(), "a cluster"))?;
        let user = by_name(
            "users",
            context["context"]["user"].as_str().unwrap_or_default(),
        )
        .ok_or_else(|| KubeconfigError::Missing(shown.clone(), "a user"))?;
        let field = |v: &serde_yaml::Value, what: &'static str| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| KubeconfigError::Missing(shown.clone(), what))
        };
        Ok(Self {
            server: field(&cluster["cluster"]["server"], "server")?,
            ca_data: field(
                &cluster["cluster"]["certificate-authority-data"],
                "certificate-authority-data",
            )?,
            admin_token: field(&user["user"]["token"], "token")?,
        })
    }
}

/// What every task of the kubelet shares.
pub struct Shared {
    pub client: kube::Client,
    pub config: config::Config,
    pub pool: addresses::AddressPool,
    pub http: reqwest::Client,
    /// (uid, gid) of the user that runs PostgreSQL, Patroni and pgbouncer.
    pub run_as: Option<(u32, u32)>,
    pub api_server: ApiServer,
    pub shutdown: CancellationToken,
    /// The pod network shim preloaded into image containers (runtime::image).
    pub pod_network_shim: std::path::PathBuf,
}

impl Shared {
    /// The nameserver of every pod's /etc/resolv.conf.
    pub fn cluster_dns(&self) -> std::net::Ipv4Addr {
        self.config
            .cluster_dns
            .unwrap_or_else(|| self.pool.dns_address())
    }
}
