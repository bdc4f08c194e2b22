use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pgop_common::admin::Admin;
use pgop_common::metrics::{counting_kube_client, Counters};
use pgop_proto::v1::worker_server::WorkerServer;
use pgop_worker::cluster::context::Context;
use pgop_worker::cluster::view::View;
use pgop_worker::runtime::cluster_log::ClusterLogLayer;
use pgop_worker::runtime::registry::Registry;
use pgop_worker::runtime::service::WorkerService;
use pgop_worker::runtime::session::{self, SessionSettings};
use pgop_worker::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster_logs = ClusterLogLayer::default();
    let (settings, shutdown) =
        pgop_common::settings::start_with::<Settings, _>(cluster_logs.clone())?;
    let worker_id = settings.worker_id();
    let metrics = Counters::new();
    let client = counting_kube_client(metrics.clone())
        .await
        .context("connecting to Kubernetes")?;

    let served = pgop_common::discovery::discover(&client)
        .await
        .context("discovering the API versions the cluster serves")?;
    tracing::info!(?served, "API versions");
    let view = View::new(worker_id.clone());
    cluster_logs.attach(view.clone());
    let ctx = Arc::new(Context::new(
        client,
        view.clone(),
        settings.concurrency as usize,
        served,
        settings.namespace(),
        metrics.clone(),
    ));
    let session_open = Arc::new(AtomicBool::new(false));
    let admin = Admin {
        ready: Arc::new({
            let open = session_open.clone();
            move || match open.load(Ordering::Relaxed) {
                true => Ok(()),
                false => Err("no session with the scheduler".into()),
            }
        }),
        counters: Some(metrics),
    };
    let admin_server = pgop_common::admin::spawn(&settings.admin_addr, admin, &shutdown);
    let registry = Registry::start(ctx, shutdown.clone());
    let session = tokio::spawn(session::run(
        SessionSettings {
            scheduler_addr: settings.scheduler_addr.clone(),
            worker_id: worker_id.clone(),
            advertise_addr: settings.advertise_addr(),
            capacity: settings.concurrency,
            heartbeat_interval: Duration::from_secs(settings.heartbeat_interval_seconds.max(1)),
        },
        registry.clone(),
        view.clone(),
        session_open,
        shutdown.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WorkerServer<WorkerService>>().await;
    let (reflection_v1, reflection_v1alpha) = pgop_proto::reflection_services()?;
    let addr = settings
        .grpc_addr
        .parse()
        .with_context(|| format!("grpc_addr {:?}", settings.grpc_addr))?;
    tracing::info!(%addr, worker = %worker_id, scheduler = %settings.scheduler_addr, "worker serving");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(WorkerServer::new(WorkerService {
            view,
            registry,
            shutdown: shutdown.clone(),
        }))
        .serve_with_shutdown(addr, shutdown.clone().cancelled_owned())
        .await?;
    // The session fences (stops every cluster task) before it returns.
    session.await?;
    admin_server
        .await?
        .with_context(|| format!("admin_addr {:?}", settings.admin_addr))?;
    Ok(())
}
