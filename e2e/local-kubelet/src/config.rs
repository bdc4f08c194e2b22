//! Command-line configuration of the local kubelet.
use std::path::PathBuf;

use clap::Parser;

use crate::addresses::PodNetwork;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "pgop-local-kubelet",
    about = "Plays kubelet for this machine: nodes, PVCs and pods as local processes"
)]
pub struct Config {
    /// Kubeconfig of the local API server (admin identity).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// Directory for pod volumes, runtime files and container logs.
    #[arg(long, env = "PGOP_KUBELET_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Container logs go to `<log dir>/pods/`; default `<state dir>/logs`.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Node names are `<prefix>-1`, `<prefix>-2`, ...
    #[arg(long, default_value = "pgop-node")]
    pub node_prefix: String,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// `KEY=VALUE:EFFECT` taints the nodes register with (e.g. to keep ordinary pods off
    /// simulated nodes when both kinds share a control plane).
    #[arg(long = "taint")]
    pub taints: Vec<String>,
    /// Pods per node the nodes advertise.
    #[arg(long, default_value_t = 10000)]
    pub max_pods: u32,
    /// Pod addresses come from this network inside 127.0.0.0/8.
    #[arg(long, default_value = "127.1.0.0/16")]
    pub pod_network: PodNetwork,
    /// Run no processes: pods are Ready at once and Spilo pods get their role label from
    /// their ordinal (0 is master). For scale tests.
    #[arg(long)]
    pub simulate: bool,
    /// Stand-in for containers of images that are neither Spilo nor pgbouncer, run with
    /// `sh -c`; the container's command and args follow as positional parameters.
    #[arg(long, default_value = "exit 0")]
    pub default_command: String,
    /// `IMAGE_SUBSTRING=COMMAND`: a stand-in for images whose name contains the substring
    /// (checked before the Spilo and pgbouncer runtimes).
    #[arg(long = "image-command")]
    pub image_commands: Vec<String>,
    /// `NAME=DIR`: containers of images named NAME (any registry, tag or digest) run their own
    /// command in a sandbox where DIR is /usr/local/bin, e.g. `pgop=target/debug` for pgop's
    /// image (deploy/Dockerfile).
    #[arg(long = "image-binaries")]
    pub image_binaries: Vec<String>,
    /// The cluster DNS address pods' /etc/resolv.conf names (port 53); default: the pod
    /// network's last usable address, which is never given to a pod.
    #[arg(long)]
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// The kubelet API's port (the API server proxies `kubectl logs` to it), advertised by
    /// every node of this kubelet.
    #[arg(long, default_value_t = crate::kubelet_api::DEFAULT_PORT)]
    pub kubelet_port: u16,
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pub pg_bin_dir: PathBuf,
    #[arg(long, default_value = "patroni")]
    pub patroni_bin: String,
    #[arg(long, default_value = "pgbouncer")]
    pub pgbouncer_bin: String,
    /// OS user that runs PostgreSQL, Patroni and pgbouncer.
    #[arg(long, default_value = "postgres")]
    pub run_as: String,
    /// Leave claims to another kubelet of the same control plane (one provisions for all).
    #[arg(long)]
    pub no_provisioner: bool,
    /// Name of the default StorageClass the kubelet provisions for.
    #[arg(long, default_value = "standard")]
    pub storage_class: String,
    /// `text` or `json`.
    #[arg(long, default_value = "text", env = "LOG_FORMAT")]
    pub log_format: String,
}

impl Config {
    pub fn log_dir(&self) -> PathBuf {
        self.log_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("logs"))
    }

    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes)
            .map(|i| format!("{}-{}", self.node_prefix, i))
            .collect()
    }

    /// Image binaries as (image name, absolute directory) pairs.
    pub fn image_binaries(&self) -> Vec<(String, PathBuf)> {
        self.image_binaries
            .iter()
            .filter_map(|s| s.split_once('='))
            .map(|(name, dir)| {
                let dir = PathBuf::from(dir);
                (name.to_string(), std::fs::canonicalize(&dir).unwrap_or(dir))
            })
            .collect()
    }

    /// Stand-in overrides as (image substring, command) pairs.
    pub fn image_overrides(&self) -> Vec<(String, String)> {
        self.image_commands
            .iter()
            .filter_map(|s| {
                s.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }
}
