//! Every process's admin port (`admin_addr`): `GET /livez` (the process answers), `GET
//! /readyz` (it is ready to serve: caches listed, lease held, …; 503 with the reason
//! otherwise) and, where the process counts, `GET /metrics` in Prometheus' text format.
//! Kubernetes' probes and Services use the first two.
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use tokio_util::sync::CancellationToken;

use crate::metrics::Counters;

/// Why the process is not ready, if it is not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the admin port serves.
#[derive(Clone)]
pub struct Admin {
    pub ready: Readiness,
    pub counters: Option<Arc<Counters>>,
}

impl Admin {
    /// Always ready (a process with nothing to wait for).
    pub fn always_ready() -> Self {
        Self {
            ready: Arc::new(|| Ok(())),
            counters: None,
        }
    }
}

pub fn router(admin: Admin) -> axum::Router {
    let ready = admin.ready.clone();
    let mut app = axum::Router::new()
        .route(
            "/livez",
            get(|| async { Json(serde_json::json!({"status": "alive"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))),
                        Err(reason) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(serde_json::json!({"status": "not ready", "reason": reason})),
                        ),
                    }
                }
            }),
        );
    if let Some(counters) = admin.counters {
        app = app.route(
            "/metrics",
            get(move || {
                let counters = counters.clone();
                async move {
                    (
                        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        counters.render(),
                    )
                }
            }),
        );
    }
    app
}

/// [`serve`] in a task of its own; the process awaits it after its main server stopped.
pub fn spawn(
    addr: &str,
    admin: Admin,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let (addr, shutdown) = (addr.to_string(), shutdown.clone());
    tokio::spawn(async move { serve(&addr, admin, shutdown).await })
}

/// Serves the admin port on `addr` until `shutdown`. An empty `addr` serves nothing.
pub async fn serve(addr: &str, admin: Admin, shutdown: CancellationToken) -> std::io::Result<()> {
    if addr.is_empty() {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin port serving");
    axum::serve(listener, router(admin))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tower::ServiceExt;

    use super::*;

    async fn get_path(app: &axum::Router, path: &str) -> (StatusCode, String) {
        let response = app
            .clone()
            .oneshot(
                http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_follows_the_process_and_liveness_does_not() {
        let leading = Arc::new(AtomicBool::new(false));
        let seen = leading.clone();
        let counters = Counters::new();
        counters.inc("pgop_x_total", vec![]);
        let app = router(Admin {
            ready: Arc::new(move || match seen.load(Ordering::Relaxed) {
                true => Ok(()),
                false => Err("a standby: another replica holds the lease".into()),
            }),
            counters: Some(counters),
        });
        let (status, body) = get_path(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("another replica holds the lease"), "{body}");
        assert_eq!(get_path(&app, "/livez").await.0, StatusCode::OK);
        leading.store(true, Ordering::Relaxed);
        assert_eq!(get_path(&app, "/readyz").await.0, StatusCode::OK);
        let (status, body) = get_path(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("pgop_x_total 1"), "{body}");
        let bare = router(Admin::always_ready());
        assert_eq!(get_path(&bare, "/metrics").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get_path(&bare, "/readyz").await.0, StatusCode::OK);
    }
}
