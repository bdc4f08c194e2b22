//! The endpoints. They follow Zalando's operator API (`pkg/apiserver`): same paths, a
//! trailing slash optional on all of them, JSON bodies.
//!
//! **Field names** are Zalando's: its Go structs are encoded without JSON tags, so fields
//! are PascalCase (`Clusters`, `WorkerQueueSize`, `Keys`, `List`, `Team`, `Status`, …).
//! Fields pgop adds use the same PascalCase convention (`ClusterStates`, `Assignment`,
//! `LastReconcile`, …). Error bodies are `{"error": "…"}` as in Zalando. Maps are sorted by
//! key, cluster names and pods by name and workers by id (queues keep arrival order), so
//! responses are stable.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /status/` | [`ControllerStatus`] |
//! | `GET /clusters/` | `{team: [cluster names]}` of every cluster with a known team |
//! | `GET /clusters/{team}/` | `[cluster names]` of one team; 404 `{"error": "could not find clusters for the team"}` when it has none |
//! | `GET /clusters/{namespace}/{cluster}/` | [`ClusterStatus`] of `namespace/cluster` (the full name); 404 when unknown |
//! | `GET /clusters/{team}/{namespace}/{cluster}/` | the same for `{team}-{cluster}`, else `{cluster}`; 404 when neither exists with that team |
//! | `GET /clusters/{namespace}/{cluster}/logs/` | [`LogLine`]s about the cluster, oldest first (`ring_log_lines`) |
//! | `GET /clusters/{namespace}/{cluster}/history/` | [`HistoryEntry`]s, oldest first (`cluster_history_entries`) |
//! | `POST /clusters/{namespace}/{cluster}/sync/` | 202 [`SyncAccepted`]: the owner reconciles the cluster now |
//! | `GET /workers/` | a list of [`Worker`], sorted by id |
//! | `GET /workers/all/queue/` | worker id → [`QueueDump`] or `{"error": …}` |
//! | `GET /workers/{id}/queue/` | [`QueueDump`]; 404 when the scheduler does not list the worker |
//! | `GET /workers/all/status/` | worker id → [`WorkerStatus`] or `{"error": …}` |
//! | `GET /workers/{id}/status/` | [`WorkerStatus`] |
//!
//! **Cluster lists** are Zalando's shapes: `/clusters/` is an object from team to names,
//! `/clusters/{team}/` a bare array of names, e.g. `{"acid": ["minimal", "test"]}` and
//! `["minimal", "test"]`. The team is the scheduler's (`ClusterAssignment.team`); keys are
//! lower-cased, as Zalando does, and `/clusters/{team}/` matches the team
//! case-insensitively. Zalando requires a cluster's name to be `{team}-{name}` and lists
//! `{name}`; pgop does not require the prefix, so a name loses its `{team}-` prefix
//! (case-insensitively) when it has one and is listed whole otherwise. Names are listed
//! without their namespace, so the same name may appear more than once. Clusters whose team
//! is not known yet (empty) are left out of both lists; their status is still at
//! `/clusters/{namespace}/{cluster}/`.
//!
//! **Cluster paths**: two segments are always `{namespace}/{cluster}` with the full name
//! (pgop's own), three are `{team}/{namespace}/{cluster}` (Zalando's). Zalando looks the
//! latter up as `{team}-{cluster}`; pgop tries that first and then `{cluster}` itself, so
//! both the short name from the lists and the full name work.
//!
//! Differences from Zalando, where pgop's design differs:
//! - Cluster names need no `{team}-` prefix (see above), teams match case-insensitively,
//!   and the team-less `/clusters/{namespace}/{cluster}/` is added.
//! - Workers are identified by their id (a string), not a number.
//! - `/status/` has no `LastSyncTime`: the scheduler does not track one.
//! - `/workers/all/*` answer with the workers that did answer and put `{"error": "…"}` in
//!   place of the others, instead of failing as a whole.
//! - A cluster's status carries pgop's data (assignment, pods, reconciles) instead of the
//!   Kubernetes objects Zalando embeds (services, endpoints, StatefulSet, spec).
//! - Errors carry their own status code (Zalando answers 500 to all of them).
//! - `…/logs/` lines are the owning worker's (a cluster that moved starts a new ring);
//!   `…/history/` lists what pgop did (objects written, status changes, rolling-update
//!   steps, SQL) with the event each pass was for, instead of Zalando's manifest diffs.
//! - `POST /clusters/{namespace}/{cluster}/sync/` (pgop's) reconciles a cluster now: 202.
//! - No `/debug/pprof/`.
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use pgop_proto::v1::{ClusterAssignment, ClusterState, PodState, QueueState, WorkerInfo};
use serde::Serialize;

use crate::backend::Backend;
use crate::error::ApiError;

type Shared = Arc<Backend>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// The router, with and without a trailing slash on every path.
pub fn router(backend: Shared) -> Router {
    // Paths under one cluster name their parameters as the team path does: the router
    // wants one name per position; the handlers read them by position.
    let routes: [(&str, MethodRouter<Shared>); 15] = [
        ("/clusters/{team}/{namespace}/logs", get(cluster_logs)),
        ("/clusters/{team}/{namespace}/history", get(cluster_history)),
        ("/clusters/{team}/{namespace}/sync", post(sync_cluster)),
        ("/status", get(status)),
        ("/databases", get(databases)),
        ("/config", get(config)),
        ("/clusters", get(clusters)),
        ("/clusters/{team}", get(team_clusters)),
        ("/clusters/{namespace}/{cluster}", get(cluster_status)),
        (
            "/clusters/{team}/{namespace}/{cluster}",
            get(team_cluster_status),
        ),
        ("/workers", get(workers)),
        ("/workers/all/queue", get(all_queues)),
        ("/workers/all/status", get(all_worker_statuses)),
        ("/workers/{id}/queue", get(worker_queue)),
        ("/workers/{id}/status", get(worker_status)),
    ];
    let mut router = Router::new();
    for (path, handler) in routes {
        router = router
            .route(path, handler.clone())
            .route(&format!("{path}/"), handler);
    }
    router
        .fallback(|| async { ApiError::NotFound("page not found".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(backend)
}

// ---- shapes ----

/// `GET /status/`: Zalando's controller status, for pgop's scheduler and workers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ControllerStatus {
    /// Clusters the scheduler knows (Zalando: `Clusters`).
    pub clusters: usize,
    /// Clusters per assignment state (`Assigned`, `Moving`, `Unassigned`).
    pub cluster_states: BTreeMap<String, usize>,
    /// Live workers.
    pub workers: usize,
    /// Worker id → clusters waiting in its queue, as of its last heartbeat (Zalando:
    /// `WorkerQueueSize`, keyed by worker number).
    pub worker_queue_size: BTreeMap<String, u32>,
    /// Worker id → clusters assigned to it.
    pub worker_clusters: BTreeMap<String, u32>,
}

/// Zalando's `PostgresStatus`: `{"PostgresClusterStatus": "Running"}`.
#[derive(Debug, Serialize)]
pub struct PostgresStatus {
    #[serde(rename = "PostgresClusterStatus")]
    pub postgres_cluster_status: String,
}

/// `GET /clusters/{namespace}/{cluster}/`: the scheduler's assignment merged with the
/// owning worker's state. The worker's fields are `null` when no live worker owns the
/// cluster or the owner does not have it yet (during a move).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClusterStatus {
    pub team: String,
    pub namespace: String,
    /// The cluster's name (the `postgresql` object's name).
    pub cluster: String,
    /// The owning worker's id; empty when unassigned.
    pub worker: String,
    /// The scheduler's state: `Assigned`, `Moving` or `Unassigned`.
    pub assignment: String,
    /// The worker's status of the cluster, else the last one it reported to the scheduler.
    pub status: PostgresStatus,
    pub message: Option<String>,
    #[serde(rename = "UID")]
    pub uid: Option<String>,
    pub instances: Option<u32>,
    pub pods: Option<Vec<Pod>>,
    pub last_reconcile: Option<String>,
    pub reconciles: Option<u32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Pod {
    pub name: String,
    /// `master`, `replica` or empty.
    pub role: String,
    pub phase: String,
    pub ready: bool,
    #[serde(rename = "PodIP")]
    pub pod_ip: String,
    pub deleted: bool,
}

/// An entry of `GET /workers/`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Worker {
    #[serde(rename = "ID")]
    pub id: String,
    pub address: String,
    /// Clusters it reconciles at once.
    pub capacity: u32,
    /// Clusters assigned to it.
    pub clusters: u32,
    /// Clusters waiting in its queue, as of its last heartbeat.
    pub queued: u32,
    pub last_heartbeat: String,
}

/// `GET /workers/{id}/queue/`: Zalando's `QueueDump` (`Keys`, `List`) from the worker.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueueDump {
    pub worker: String,
    /// Clusters with events waiting, in arrival order.
    pub keys: Vec<String>,
    pub list: Vec<QueueEntry>,
    /// Reconciles running now.
    pub running: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueueEntry {
    pub cluster: String,
    pub event: String,
    pub pending: u32,
}

/// `GET /workers/{id}/status/`: the scheduler's view of the worker and what it runs now.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorkerStatus {
    #[serde(flatten)]
    pub worker: Worker,
    /// `idle` (nothing running or queued) or `busy`, as Zalando's `idle`.
    pub state: &'static str,
    pub running: u32,
    /// Clusters in its queue now.
    pub queue_length: usize,
}

/// A per-worker entry of `/workers/all/*`: the answer, or why there is none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OrError<T> {
    Ok(T),
    Err { error: String },
}

impl<T> From<Result<T, ApiError>> for OrError<T> {
    fn from(r: Result<T, ApiError>) -> Self {
        match r {
            Ok(v) => Self::Ok(v),
            Err(e) => Self::Err {
                error: e.to_string(),
            },
        }
    }
}

impl From<WorkerInfo> for Worker {
    fn from(w: WorkerInfo) -> Self {
        Self {
            id: w.worker_id,
            address: w.address,
            capacity: w.capacity,
            clusters: w.clusters,
            queued: w.queued,
            last_heartbeat: w.last_heartbeat,
        }
    }
}

impl From<PodState> for Pod {
    fn from(p: PodState) -> Self {
        Self {
            name: p.name,
            role: p.role,
            phase: p.phase,
            ready: p.ready,
            pod_ip: p.pod_ip,
            deleted: p.deleted,
        }
    }
}

fn queue_dump(worker: String, q: QueueState) -> QueueDump {
    QueueDump {
        worker,
        keys: q.entries.iter().map(|e| e.cluster.clone()).collect(),
        list: q
            .entries
            .into_iter()
            .map(|e| QueueEntry {
                cluster: e.cluster,
                event: e.event,
                pending: e.pending,
            })
            .collect(),
        running: q.running,
    }
}

fn merge_cluster_status(
    namespace: &str,
    name: &str,
    a: ClusterAssignment,
    state: Option<ClusterState>,
) -> ClusterStatus {
    let pick = |worker: Option<&String>, scheduler: String| match worker {
        Some(v) if !v.is_empty() => v.clone(),
        _ => scheduler,
    };
    let team = pick(state.as_ref().map(|s| &s.team), a.team);
    let status = pick(state.as_ref().map(|s| &s.status), a.status);
    ClusterStatus {
        team,
        namespace: namespace.into(),
        cluster: name.into(),
        worker: a.worker,
        assignment: a.state,
        status: PostgresStatus {
            postgres_cluster_status: status,
        },
        message: state.as_ref().map(|s| s.message.clone()),
        uid: state.as_ref().map(|s| s.uid.clone()),
        instances: state.as_ref().map(|s| s.instances),
        last_reconcile: state.as_ref().map(|s| s.last_reconcile.clone()),
        reconciles: state.as_ref().map(|s| s.reconciles),
        pods: state.map(|s| {
            let mut pods: Vec<Pod> = s.pods.into_iter().map(Pod::from).collect();
            pods.sort_by(|a, b| a.name.cmp(&b.name));
            pods
        }),
    }
}

// ---- path checks ----

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A Kubernetes object name (DNS subdomain).
fn is_object_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Team and worker ids: letters, digits and `-_.:`.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn check(what: &str, value: &str, valid: fn(&str) -> bool) -> Result<(), ApiError> {
    if valid(value) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("invalid {what} {value:?}")))
    }
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// Splits a cluster key `namespace/name`.
fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// A cluster's name as Zalando lists it: without its `{team}-` prefix (compared
/// case-insensitively) when it has one, else whole.
fn short_name<'a>(name: &'a str, team: &str) -> &'a str {
    name.get(..team.len())
        .filter(|prefix| !team.is_empty() && prefix.eq_ignore_ascii_case(team))
        .and_then(|_| name[team.len()..].strip_prefix('-'))
        .filter(|rest| !rest.is_empty())
        .unwrap_or(name)
}

/// Lower-cased team → short cluster names, sorted. Clusters without a team are left out.
fn by_team<'a>(
    clusters: impl Iterator<Item = &'a ClusterAssignment>,
) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in clusters.filter(|c| !c.team.is_empty()) {
        let (_, name) = split_key(&c.cluster);
        map.entry(c.team.to_ascii_lowercase())
            .or_default()
            .push(short_name(name, &c.team).into());
    }
    for names in map.values_mut() {
        names.sort();
    }
    map
}

// ---- handlers ----

async fn status(State(backend): State<Shared>) -> ApiResult<ControllerStatus> {
    let (assignments, workers) = tokio::try_join!(backend.assignments(), backend.workers())?;
    let mut cluster_states = BTreeMap::new();
    for a in &assignments {
        *cluster_states.entry(a.state.clone()).or_insert(0) += 1;
    }
    Ok(Json(ControllerStatus {
        clusters: assignments.len(),
        cluster_states,
        workers: workers.len(),
        worker_queue_size: workers
            .iter()
            .map(|w| (w.worker_id.clone(), w.queued))
            .collect(),
        worker_clusters: workers
            .iter()
            .map(|w| (w.worker_id.clone(), w.clusters))
            .collect(),
    }))
}

/// `GET /config/`: the operator configuration in force, Zalando's `operator` part (pgop
/// has no separate controller configuration), every credential as `"<redacted>"`.
#[derive(Debug, Serialize)]
struct OperatorConfigView {
    operator: serde_json::Value,
    unknown_keys: Vec<String>,
    source: String,
}

async fn config(State(backend): State<Shared>) -> ApiResult<OperatorConfigView> {
    let config = backend.config().await?;
    let operator = serde_json::from_str(&config.json).map_err(|e| ApiError::Backend {
        backend: "scheduler".into(),
        status: tonic::Status::internal(format!("configuration that is not JSON: {e}")),
    })?;
    Ok(Json(OperatorConfigView {
        operator,
        unknown_keys: config.unknown_keys,
        source: config.source,
    }))
}

async fn clusters(State(backend): State<Shared>) -> ApiResult<BTreeMap<String, Vec<String>>> {
    let assignments = backend.assignments().await?;
    Ok(Json(by_team(assignments.iter())))
}

async fn team_clusters(
    State(backend): State<Shared>,
    team: Result<Path<String>, PathRejection>,
) -> ApiResult<Vec<String>> {
    let team = path(team)?;
    check("team", &team, is_identifier)?;
    let assignments = backend.assignments().await?;
    by_team(assignments.iter())
        .remove(&team.to_ascii_lowercase())
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("could not find clusters for the team".into()))
}

async fn find_cluster(
    backend: &Backend,
    namespace: &str,
    name: &str,
) -> Result<ClusterStatus, ApiError> {
    check("namespace", namespace, is_dns_label)?;
    check("cluster name", name, is_object_name)?;
    let (assignment, workers) =
        tokio::try_join!(backend.assignment(namespace, name), backend.workers())?;
    let owner = workers
        .into_iter()
        .find(|w| !assignment.worker.is_empty() && w.worker_id == assignment.worker);
    let state = match owner {
        Some(worker) => backend.worker_cluster(&worker, namespace, name).await?,
        None => None,
    };
    Ok(merge_cluster_status(namespace, name, assignment, state))
}

async fn cluster_status(
    State(backend): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<ClusterStatus> {
    let (namespace, name) = path(p)?;
    Ok(Json(find_cluster(&backend, &namespace, &name).await?))
}

/// Zalando's `{team}/{namespace}/{cluster}`: the cluster `{team}-{cluster}`, else
/// `{cluster}`, the first of them that exists and belongs to the team.
async fn team_cluster_status(
    State(backend): State<Shared>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult<ClusterStatus> {
    let (team, namespace, name) = path(p)?;
    check("team", &team, is_identifier)?;
    check("namespace", &namespace, is_dns_label)?;
    check("cluster name", &name, is_object_name)?;
    // Object names are lower-case; a team that cannot prefix one (`_`, `:`) is not tried.
    let prefixed = format!("{}-{name}", team.to_ascii_lowercase());
    let candidates = [
        Some(prefixed).filter(|n| is_object_name(n)),
        Some(name.clone()),
    ];
    for candidate in candidates.into_iter().flatten() {
        match find_cluster(&backend, &namespace, &candidate).await {
            Ok(status) if status.team.eq_ignore_ascii_case(&team) => return Ok(Json(status)),
            // Another team's cluster, or none: try the next name.
            Ok(_) | Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::NotFound(format!(
        "could not find cluster {namespace}/{name} of team {team}"
    )))
}

/// One line of `GET /clusters/{namespace}/{cluster}/logs/` (Zalando's shape).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LogLine {
    pub time: String,
    pub level: String,
    pub worker: String,
    pub message: String,
}

/// One entry of `GET /clusters/{namespace}/{cluster}/history/`: what was done, when, and
/// which event the pass was for.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryEntry {
    pub time: String,
    pub trigger: String,
    pub kind: String,
    pub detail: String,
}

/// The answer of `POST /clusters/{namespace}/{cluster}/sync/`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SyncAccepted {
    pub cluster: String,
    pub worker: String,
}

/// The owner of a cluster named by a `{namespace}/{cluster}/…` path.
async fn cluster_owner(
    backend: &Backend,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String, WorkerInfo), ApiError> {
    let (namespace, name) = path(p)?;
    check("namespace", &namespace, is_dns_label)?;
    check("cluster name", &name, is_object_name)?;
    let owner = backend.owner(&namespace, &name).await?;
    Ok((namespace, name, owner))
}

async fn cluster_logs(
    State(backend): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Vec<LogLine>> {
    let (namespace, name, owner) = cluster_owner(&backend, p).await?;
    let logs = backend.cluster_logs(&owner, &namespace, &name).await?;
    Ok(Json(
        logs.entries
            .into_iter()
            .map(|e| LogLine {
                time: e.time,
                level: e.level,
                worker: logs.worker.clone(),
                message: e.message,
            })
            .collect(),
    ))
}

async fn cluster_history(
    State(backend): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Vec<HistoryEntry>> {
    let (namespace, name, owner) = cluster_owner(&backend, p).await?;
    let history = backend.cluster_history(&owner, &namespace, &name).await?;
    Ok(Json(
        history
            .entries
            .into_iter()
            .map(|e| HistoryEntry {
                time: e.at,
                trigger: e.trigger,
                kind: e.kind,
                detail: e.detail,
            })
            .collect(),
    ))
}

async fn sync_cluster(
    State(backend): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<(StatusCode, Json<SyncAccepted>), ApiError> {
    let (namespace, name, owner) = cluster_owner(&backend, p).await?;
    let accepted = backend.sync_cluster(&owner, &namespace, &name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SyncAccepted {
            cluster: format!("{namespace}/{name}"),
            worker: accepted.worker,
        }),
    ))
}

async fn workers(State(backend): State<Shared>) -> ApiResult<Vec<Worker>> {
    let workers = backend.workers().await?;
    Ok(Json(workers.into_iter().map(Worker::from).collect()))
}

async fn worker_queue(
    State(backend): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<QueueDump> {
    let id = path(id)?;
    check("worker id", &id, is_identifier)?;
    let worker = backend.worker(&id).await?;
    let queue = backend.worker_queue(&worker).await?;
    Ok(Json(queue_dump(id, queue)))
}

/// `GET /databases/`: Zalando's map of cluster name → the databases its manifest asks for,
/// from every worker (a worker that cannot be reached fails the request: a partial list
/// would read as clusters without databases).
async fn databases(State(backend): State<Shared>) -> ApiResult<BTreeMap<String, Vec<String>>> {
    let workers = backend.workers().await?;
    let answers =
        futures::future::join_all(workers.iter().map(|w| backend.worker_clusters(w))).await;
    let mut map = BTreeMap::new();
    for clusters in answers {
        for cluster in clusters? {
            let (_, name) = split_key(&cluster.cluster);
            let mut databases = cluster.databases;
            databases.sort();
            map.insert(name.to_string(), databases);
        }
    }
    Ok(Json(map))
}

async fn all_queues(
    State(backend): State<Shared>,
) -> ApiResult<BTreeMap<String, OrError<QueueDump>>> {
    let workers = backend.workers().await?;
    let queues = futures::future::join_all(workers.iter().map(|w| backend.worker_queue(w))).await;
    Ok(Json(
        workers
            .into_iter()
            .zip(queues)
            .map(|(w, q)| {
                let dump = q.map(|q| queue_dump(w.worker_id.clone(), q));
                (w.worker_id, dump.into())
            })
            .collect(),
    ))
}

async fn one_worker_status(
    backend: &Backend,
    worker: WorkerInfo,
) -> Result<WorkerStatus, ApiError> {
    let queue = backend.worker_queue(&worker).await?;
    let idle = queue.running == 0 && queue.entries.is_empty();
    Ok(WorkerStatus {
        worker: worker.into(),
        state: if idle { "idle" } else { "busy" },
        running: queue.running,
        queue_length: queue.entries.len(),
    })
}

async fn worker_status(
    State(backend): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<WorkerStatus> {
    let id = path(id)?;
    check("worker id", &id, is_identifier)?;
    let worker = backend.worker(&id).await?;
    Ok(Json(one_worker_status(&backend, worker).await?))
}

async fn all_worker_statuses(
    State(backend): State<Shared>,
) -> ApiResult<BTreeMap<String, OrError<WorkerStatus>>> {
    let workers = backend.workers().await?;
    let ids: Vec<String> = workers.iter().map(|w| w.worker_id.clone()).collect();
    let statuses =
        futures::future::join_all(workers.into_iter().map(|w| one_worker_status(&backend, w)))
            .await;
    Ok(Json(
        ids.into_iter()
            .zip(statuses.into_iter().map(OrError::from))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_checks() {
        assert!(is_dns_label("default"));
        assert!(!is_dns_label("Default"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(""));
        assert!(is_object_name("acid-minimal-cluster"));
        assert!(is_object_name("a.b"));
        assert!(!is_object_name("a..b"));
        assert!(!is_object_name("bad name"));
        assert!(is_identifier("ACID_team-1"));
        assert!(!is_identifier("a/b"));
    }

    #[test]
    fn short_names_lose_the_team_prefix_when_they_have_it() {
        assert_eq!(short_name("acid-minimal", "acid"), "minimal");
        assert_eq!(short_name("acid-minimal", "ACID"), "minimal");
        assert_eq!(short_name("minimal", "acid"), "minimal");
        assert_eq!(short_name("acidic", "acid"), "acidic");
        assert_eq!(short_name("acid", "acid"), "acid");
        assert_eq!(short_name("acid-", "acid"), "acid-");
        assert_eq!(short_name("billing-main", "acid"), "billing-main");
        assert_eq!(short_name("-x", ""), "-x");
        assert_eq!(short_name("ab", "ä"), "ab");
    }

    #[test]
    fn names_group_by_lower_cased_team_sorted() {
        let a = |key: &str, team: &str| ClusterAssignment {
            cluster: key.into(),
            team: team.into(),
            ..Default::default()
        };
        let list = [
            a("ns2/acid-b", "acid"),
            a("ns1/z", "ACID"),
            a("ns1/acid-a", "Acid"),
            a("ns1/billing-x", "billing"),
            a("ns1/unknown", ""),
        ];
        let map = by_team(list.iter());
        assert_eq!(
            serde_json::to_value(map).unwrap(),
            serde_json::json!({"acid": ["a", "b", "z"], "billing": ["x"]})
        );
    }
}
