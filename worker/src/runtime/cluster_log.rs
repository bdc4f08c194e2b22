//! Keeps each owned cluster's recent log lines for `GET /clusters/{ns}/{name}/logs/`: every
//! event with a `cluster` field, or inside a span with one (a pass), goes into that cluster's
//! ring in the [`View`] (as Zalando's operator keeps `ring_log_lines` per cluster).
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::cluster::view::View;

/// The view is made after logging starts; lines before that are not kept.
#[derive(Clone, Default)]
pub struct ClusterLogLayer {
    view: Arc<OnceLock<View>>,
}

impl ClusterLogLayer {
    pub fn attach(&self, view: View) {
        let _ = self.view.set(view);
    }
}

#[derive(Default)]
struct Line {
    cluster: Option<String>,
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "cluster" => self.cluster = Some(value.to_string()),
            "message" => self.message = value.to_string(),
            name => {
                let _ = write!(self.fields, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "cluster" => self.cluster = Some(format!("{value:?}")),
            "message" => self.message = format!("{value:?}"),
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

/// The `cluster` field of a span, kept in its extensions for the events inside it.
struct SpanCluster(String);

impl<S> Layer<S> for ClusterLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Line::default();
        attrs.record(&mut fields);
        if let (Some(cluster), Some(span)) = (fields.cluster, ctx.span(id)) {
            span.extensions_mut().insert(SpanCluster(cluster));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(view) = self.view.get() else {
            return;
        };
        let mut line = Line::default();
        event.record(&mut line);
        let cluster = line.cluster.or_else(|| {
            ctx.event_scope(event)?
                .find_map(|span| span.extensions().get::<SpanCluster>().map(|c| c.0.clone()))
        });
        if let Some(cluster) = cluster {
            let level = event.metadata().level().as_str();
            view.log(&cluster, level, format!("{}{}", line.message, line.fields));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn lines_with_a_cluster_field_land_in_its_ring() {
        let view = View::new("w".into());
        view.update("ns/a", |_| {});
        let layer = ClusterLogLayer::default();
        layer.attach(view.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let key = "ns/a".to_string();
            tracing::info!(cluster = %key, statements = 3, "database in sync");
            tracing::warn!(cluster = "ns/a", "sync failed: {}", "boom");
            tracing::info!("no cluster here");
            let pass = tracing::info_span!("pass", cluster = "ns/a", trigger = "UPDATE");
            pass.in_scope(|| {
                let inner = tracing::info_span!("patroni");
                inner.in_scope(|| tracing::info!(written = 2, "objects written"));
            });
        });
        let logs = view.logs("ns/a").unwrap();
        let lines: Vec<(&str, &str)> = logs
            .iter()
            .map(|l| (l.level.as_str(), l.message.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                ("INFO", "database in sync statements=3"),
                ("WARN", "sync failed: boom"),
                ("INFO", "objects written written=2"),
            ]
        );
    }
}
