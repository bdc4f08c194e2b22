//! Logging for every pgop process: text or JSON lines, filtered by RUST_LOG.
use tracing_subscriber::layer::{Layer, Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

/// kube-client logs a whole response body (a manifest, a Secret) when it does not
/// deserialize, and traces bodies: a manifest can hold credentials in plain `env` values, so
/// this module logs errors only, whatever RUST_LOG asks. pgop logs every failed request
/// itself, with the kind, name and reason.
const QUIET_RESPONSE_BODIES: &str = "kube_client::client=error";

/// What every process logs, and nothing else.
pub fn init(format: &str) {
    init_with(format, tracing_subscriber::layer::Identity::new());
}

/// [`init`], with `extra` seeing every event that passes the filter too (the worker keeps
/// each cluster's recent lines for its REST endpoint).
pub fn init_with<L>(format: &str, extra: L)
where
    L: Layer<Layered<EnvFilter, Registry>> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn,tower=warn,h2=warn".into())
        .add_directive(QUIET_RESPONSE_BODIES.parse().expect("a valid directive"));
    let base = tracing_subscriber::registry().with(filter).with(extra);
    if format == "json" {
        base.with(tracing_subscriber::fmt::layer().json().with_target(false))
            .init();
    } else {
        base.with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(std::env::var_os("NO_COLOR").is_none()),
        )
        .init();
    }
}
