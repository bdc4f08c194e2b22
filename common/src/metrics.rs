//! Counters in Prometheus' text format, served on `GET /metrics` of a process's
//! `admin_addr`, and a Kubernetes client that counts its requests (so that "a resync of an
//! in-sync cluster writes nothing" can be read off a running process).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// Label names and values of one series, in the order given.
pub type Labels = Vec<(&'static str, String)>;

/// Monotonic counters by name and labels. Cheap enough for per-request use: one short lock.
#[derive(Default)]
pub struct Counters {
    help: Mutex<BTreeMap<&'static str, &'static str>>,
    series: Mutex<BTreeMap<(&'static str, Labels), u64>>,
}

impl Counters {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Declares a counter's help text (shown as `# HELP`); optional.
    pub fn describe(&self, name: &'static str, help: &'static str) {
        lock(&self.help).insert(name, help);
    }

    pub fn add(&self, name: &'static str, labels: Labels, by: u64) {
        *lock(&self.series).entry((name, labels)).or_insert(0) += by;
    }

    pub fn inc(&self, name: &'static str, labels: Labels) {
        self.add(name, labels, 1);
    }

    /// The value of one series (0 when never counted).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        lock(&self.series)
            .iter()
            .filter(|((n, l), _)| {
                *n == name
                    && l.len() == labels.len()
                    && l.iter()
                        .zip(labels)
                        .all(|((k, v), (k2, v2))| k == k2 && v == v2)
            })
            .map(|(_, v)| *v)
            .sum()
    }

    /// Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let help = lock(&self.help).clone();
        let series = lock(&self.series).clone();
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in &series {
            if *name != last {
                if let Some(text) = help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {text}");
                }
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
            }
        }
        out
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves counts that are still meaningful.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Requests to the Kubernetes API server by verb and resource.
pub const KUBE_REQUESTS: &str = "pgop_kube_requests_total";

/// The resource a request's path names, with its subresource (`statefulsets`,
/// `postgresqls/status`); "other" for paths outside `/api` and `/apis`.
fn resource(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // After /api/{version} or /apis/{group}/{version}.
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    match rest {
        [] => "other".into(),
        [kind] | [kind, _] => kind.to_string(),
        [kind, _, sub, ..] => format!("{kind}/{sub}"),
    }
}

/// The verb of a request to the API server, as the audit log names them (`get` covers
/// lists; `watch` is a GET with `watch=true`).
fn verb(method: &http::Method, query: Option<&str>) -> &'static str {
    let watching = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    match *method {
        http::Method::GET if watching => "watch",
        http::Method::GET => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// The in-cluster or kubeconfig client (as `kube::Client::try_default`), counting every
/// request in [`KUBE_REQUESTS`] by verb.
pub async fn counting_kube_client(counters: Arc<Counters>) -> Result<kube::Client, kube::Error> {
    counters.describe(
        KUBE_REQUESTS,
        "Requests sent to the Kubernetes API server, by verb and resource.",
    );
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let count =
        tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            let verb = verb(request.method(), request.uri().query());
            let resource = resource(request.uri().path());
            counters.inc(
                KUBE_REQUESTS,
                vec![("verb", verb.to_string()), ("resource", resource)],
            );
            request
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_prometheus_text_format() {
        let counters = Counters::new();
        counters.describe("pgop_x_total", "Things.");
        counters.inc("pgop_x_total", vec![("kind", "a".into())]);
        counters.add("pgop_x_total", vec![("kind", "a".into())], 2);
        counters.inc("pgop_x_total", vec![("kind", "q\"uote".into())]);
        counters.inc("pgop_y_total", vec![]);
        assert_eq!(counters.get("pgop_x_total", &[("kind", "a")]), 3);
        assert_eq!(counters.get("pgop_x_total", &[("kind", "b")]), 0);
        assert_eq!(
            counters.render(),
            "# HELP pgop_x_total Things.\n# TYPE pgop_x_total counter\n\
             pgop_x_total{kind=\"a\"} 3\npgop_x_total{kind=\"q\\\"uote\"} 1\n\
             # TYPE pgop_y_total counter\npgop_y_total 1\n"
        );
    }

    #[test]
    fn resources_come_from_the_path() {
        let cases = [
            ("/api/v1/namespaces/a/secrets/x", "secrets"),
            ("/api/v1/namespaces/a/secrets", "secrets"),
            ("/apis/apps/v1/namespaces/a/statefulsets/x", "statefulsets"),
            (
                "/apis/acid.zalan.do/v1/namespaces/a/postgresqls/x/status",
                "postgresqls/status",
            ),
            ("/api/v1/namespaces/a", "namespaces"),
            ("/api/v1/nodes", "nodes"),
            ("/apis/events.k8s.io/v1/namespaces/a/events", "events"),
            ("/version", "other"),
            ("/api/v1", "other"),
        ];
        for (path, want) in cases {
            assert_eq!(resource(path), want, "{path}");
        }
    }

    #[test]
    fn verbs_follow_the_audit_log() {
        let cases = [
            (http::Method::GET, None, "get"),
            (
                http::Method::GET,
                Some("labelSelector=a&watch=true"),
                "watch",
            ),
            (http::Method::GET, Some("watch=false"), "get"),
            (http::Method::POST, None, "create"),
            (http::Method::PUT, None, "update"),
            (http::Method::PATCH, Some("fieldManager=pgop"), "patch"),
            (http::Method::DELETE, None, "delete"),
        ];
        for (method, query, want) in cases {
            assert_eq!(verb(&method, query), want, "{method} {query:?}");
        }
    }
}
