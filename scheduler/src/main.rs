use std::time::Duration;

use anyhow::Context;
use pgop_proto::v1::scheduler_server::SchedulerServer;
use pgop_scheduler::actor::Actor;
use pgop_scheduler::service::SchedulerService;
use pgop_scheduler::{watcher_client, Settings};
use tokio::sync::{broadcast, mpsc};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (settings, shutdown) = pgop_common::settings::start::<Settings>()?;

    let (inputs, inputs_rx) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(4096);
    let actor = Actor::new(
        Duration::from_secs(settings.heartbeat_timeout_seconds),
        settings.rolling_updates as usize,
        events.clone(),
    );
    tokio::spawn(actor.run(inputs_rx, shutdown.clone()));
    tokio::spawn(watcher_client::run(
        settings.watcher_addr.clone(),
        inputs.clone(),
        shutdown.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SchedulerServer<SchedulerService>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = pgop_proto::reflection_services()?;
    let addr = settings
        .grpc_addr
        .parse()
        .with_context(|| format!("grpc_addr {:?}", settings.grpc_addr))?;
    tracing::info!(%addr, watcher = %settings.watcher_addr, "scheduler serving");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(SchedulerServer::new(SchedulerService::new(
            inputs,
            events,
            shutdown.clone(),
        )))
        .serve_with_shutdown(addr, shutdown.cancelled_owned())
        .await?;
    Ok(())
}
