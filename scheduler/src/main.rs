use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pgop_common::admin::Admin;
use pgop_proto::v1::scheduler_server::SchedulerServer;
use pgop_scheduler::actor::Actor;
use pgop_scheduler::service::SchedulerService;
use pgop_scheduler::{watcher_client, Settings};
use tokio::sync::{broadcast, mpsc};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (settings, shutdown) = pgop_common::settings::start::<Settings>()?;

    // Unbounded: the actor only updates memory, faster than the watcher's stream and the
    // sessions deliver (HTTP/2 flow control bounds them); a bound would let one busy input
    // source stall the others, heartbeats included.
    let (inputs, inputs_rx) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(4096);
    let actor = Actor::new(
        Duration::from_secs(settings.heartbeat_timeout_seconds),
        settings.rolling_updates as usize,
        events.clone(),
    );
    tokio::spawn(actor.run(inputs_rx, shutdown.clone()));
    let subscribed = Arc::new(AtomicBool::new(false));
    tokio::spawn(watcher_client::run(
        settings.watcher_addr.clone(),
        inputs.clone(),
        subscribed.clone(),
        shutdown.clone(),
    ));

    let (leading, lease) = match settings.leader_election {
        false => (pgop_common::lease::always(), None),
        true => {
            // The only Kubernetes call a scheduler makes: its Lease.
            let client = kube::Client::try_default()
                .await
                .context("connecting to Kubernetes for the scheduler's Lease")?;
            let namespace = match settings.namespace.is_empty() {
                true => std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
                false => settings.namespace.clone(),
            };
            let (leading, task) = pgop_common::lease::run(
                client,
                pgop_common::lease::LeaseSettings {
                    namespace,
                    name: pgop_scheduler::LEASE_NAME.into(),
                    identity: pgop_common::lease::identity(&settings.identity).context(
                        "leader election needs this replica's identity: set PGOP_IDENTITY or \
                         POD_NAME",
                    )?,
                    duration: Duration::from_secs(settings.lease_duration_seconds.max(3)),
                },
                shutdown.clone(),
            );
            (leading, Some(task))
        }
    };
    // Alone, this scheduler has no predecessor whose workers could still be acting.
    let takeover_grace = match settings.leader_election {
        false => Duration::ZERO,
        true => pgop_common::fencing::takeover_grace(Duration::from_secs(
            settings.lease_duration_seconds.max(3),
        )),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    pgop_proto::follow_leadership(
        health,
        <SchedulerServer<SchedulerService> as tonic::server::NamedService>::NAME,
        leading.changes(),
    );
    // Ready while subscribed, standby or not: a standby refuses and clients try the next
    // replica, and a Deployment whose standby were never ready could not roll.
    let admin = Admin {
        ready: Arc::new(move || match subscribed.load(Ordering::Relaxed) {
            false => Err("not subscribed to the watcher".into()),
            true => Ok(()),
        }),
        counters: None,
    };
    let admin = pgop_common::admin::spawn(&settings.admin_addr, admin, &shutdown);
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
            leading,
            takeover_grace,
        )))
        .serve_with_shutdown(addr, shutdown.cancelled_owned())
        .await?;
    if let Some(lease) = lease {
        // Released once every session has ended, so that the standby takes over at once.
        let _ = lease.await;
    }
    admin
        .await?
        .with_context(|| format!("admin_addr {:?}", settings.admin_addr))?;
    Ok(())
}
