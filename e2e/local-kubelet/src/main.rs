use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use pgop_local_kubelet::config::Config;
use pgop_local_kubelet::runtime::image::install_pod_network_shim;
use pgop_local_kubelet::runtime::process::lookup_user;
use pgop_local_kubelet::{
    addresses::AddressPool, dns, kubelet_api, nodes, pods, storage, ApiServer, Shared,
};
use std::net::SocketAddr;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    if config.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let kubeconfig = Kubeconfig::read_from(&config.kubeconfig)
        .with_context(|| format!("reading {}", config.kubeconfig.display()))?;
    let client_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(client_config)?;
    let api_server = ApiServer::from_kubeconfig(&config.kubeconfig)?;
    let run_as = if config.simulate {
        None
    } else {
        Some(lookup_user(&config.run_as).with_context(|| {
            format!("OS user {:?} not found (install postgresql)", config.run_as)
        })?)
    };
    std::fs::create_dir_all(&config.state_dir)?;
    let state_dir = std::fs::canonicalize(&config.state_dir)?;
    if run_as.is_some() {
        ensure_traversable(&state_dir)?;
    }
    let shutdown = CancellationToken::new();
    let pod_network_shim = install_pod_network_shim(&state_dir)
        .with_context(|| format!("writing the pod network shim below {}", state_dir.display()))?;
    let shared = Arc::new(Shared {
        client,
        pool: AddressPool::new(config.pod_network),
        http: reqwest::Client::builder().no_proxy().build()?,
        run_as,
        api_server,
        shutdown: shutdown.clone(),
        pod_network_shim,
        config: Config {
            state_dir,
            ..config
        },
    });

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let nodes_task = tokio::spawn(nodes::run(shared.clone()));
    let storage_task = if shared.config.no_provisioner {
        tokio::spawn(std::future::pending())
    } else {
        tokio::spawn(storage::run(shared.clone()))
    };
    // Pods that run processes get `kubectl logs`; containers of mapped images (the only ones
    // with a resolv.conf of the kubelet's) get cluster DNS; simulated pods need neither.
    let kubelet_api_task = if shared.config.simulate {
        tokio::spawn(std::future::pending())
    } else {
        let kubelet_api = SocketAddr::from(([127, 0, 0, 1], shared.config.kubelet_port));
        tokio::spawn(kubelet_api::serve(
            kubelet_api,
            shared.config.log_dir(),
            shared.config.state_dir.clone(),
            shutdown.clone(),
        ))
    };
    let dns_task = if shared.config.simulate || shared.config.image_binaries.is_empty() {
        tokio::spawn(std::future::pending())
    } else {
        let dns = SocketAddr::from((shared.cluster_dns(), 53));
        let upstream = std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|text| dns::upstream_from_resolv_conf(&text));
        tokio::spawn(dns::run(
            shared.client.clone(),
            dns,
            upstream,
            shutdown.clone(),
        ))
    };
    let pods_task = tokio::spawn(pods::run(shared.clone()));
    tracing::info!(nodes = ?shared.config.node_names(), simulate = shared.config.simulate, "local kubelet running");
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping pods"),
        _ = sigint.recv() => tracing::info!("SIGINT: stopping pods"),
        r = nodes_task => anyhow::bail!("node registration ended: {:?}", r),
        r = storage_task => anyhow::bail!("storage ended: {:?}", r),
        r = dns_task => anyhow::bail!("cluster DNS ended: {:?}", r),
        r = kubelet_api_task => anyhow::bail!("the kubelet API ended: {:?}", r),
    }
    shutdown.cancel();
    let _ = pods_task.await;
    Ok(())
}

/// PostgreSQL runs as an unprivileged user and must reach its data below the state dir.
fn ensure_traversable(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for ancestor in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor)?.permissions().mode();
        if mode & 0o001 == 0 {
            anyhow::bail!(
                "{} is not searchable by other users (mode {:o}), so PostgreSQL cannot reach {}: choose a state directory outside it or chmod o+x it",
                ancestor.display(),
                mode & 0o777,
                dir.display()
            );
        }
    }
    Ok(())
}
