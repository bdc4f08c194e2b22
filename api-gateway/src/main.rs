use std::sync::Arc;

use anyhow::Context;
use pgop_api_gateway::backend::Backend;
use pgop_api_gateway::{routes, Settings};
use pgop_common::admin::Admin;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (settings, shutdown) = pgop_common::settings::start::<Settings>()?;

    let backend = Backend::new(&settings.scheduler_addr, settings.request_timeout())?;
    let listener = tokio::net::TcpListener::bind(&settings.http_addr)
        .await
        .with_context(|| format!("http_addr {:?}", settings.http_addr))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        scheduler = %settings.scheduler_addr,
        "api-gateway serving"
    );
    let admin = pgop_common::admin::spawn(&settings.admin_addr, Admin::always_ready(), &shutdown);
    axum::serve(listener, routes::router(Arc::new(backend)))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    admin
        .await?
        .with_context(|| format!("admin_addr {:?}", settings.admin_addr))?;
    Ok(())
}
