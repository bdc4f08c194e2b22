//! Logging for every pgop process: text or JSON lines, filtered by RUST_LOG.
pub fn init(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn,tower=warn,h2=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if format == "json" {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::env::var_os("NO_COLOR").is_none())
            .init();
    }
}
