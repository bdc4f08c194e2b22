//! The gateway against in-process fake Scheduler and Worker gRPC servers, over HTTP.
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgop_api_gateway::backend::Backend;
use pgop_api_gateway::routes;
use pgop_proto::v1::scheduler_server::{Scheduler, SchedulerServer};
use pgop_proto::v1::worker_server::{Worker, WorkerServer};
use pgop_proto::v1::{
    ClusterAssignment, ClusterHistory, ClusterLogs, ClusterState, EffectiveConfig, EventRecord,
    GetClusterRequest, GetConfigRequest, GetQueueRequest, ListAssignmentsRequest,
    ListAssignmentsResponse, ListClustersRequest, ListClustersResponse, ListWorkersRequest,
    ListWorkersResponse, LogEntry, PodState, QueueEntry, QueueState, SchedulerMessage,
    SyncClusterResponse, WatchEventsRequest, WorkerInfo, WorkerMessage,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

// ---- fakes ----

#[derive(Default)]
struct SchedulerData {
    assignments: Vec<ClusterAssignment>,
    workers: Vec<WorkerInfo>,
    config: Option<EffectiveConfig>,
}

#[derive(Clone, Default)]
struct FakeScheduler {
    data: Arc<Mutex<SchedulerData>>,
    /// Every answer is this late.
    delay: Duration,
    /// A standby replica: every answer is UNAVAILABLE.
    standby: bool,
}

impl FakeScheduler {
    fn lead(&self) -> Result<(), Status> {
        match self.standby {
            true => Err(Status::unavailable("this scheduler is a standby")),
            false => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Scheduler for FakeScheduler {
    type SessionStream = BoxStream<SchedulerMessage>;
    type WatchEventsStream = BoxStream<EventRecord>;

    async fn session(
        &self,
        _: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_assignments(
        &self,
        _: Request<ListAssignmentsRequest>,
    ) -> Result<Response<ListAssignmentsResponse>, Status> {
        self.lead()?;
        tokio::time::sleep(self.delay).await;
        let clusters = self.data.lock().unwrap().assignments.clone();
        Ok(Response::new(ListAssignmentsResponse { clusters }))
    }

    async fn get_cluster(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterAssignment>, Status> {
        tokio::time::sleep(self.delay).await;
        let r = request.into_inner();
        let key = format!("{}/{}", r.namespace, r.name);
        self.data
            .lock()
            .unwrap()
            .assignments
            .iter()
            .find(|a| a.cluster == key)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("cluster {key} is not known")))
    }

    async fn list_workers(
        &self,
        _: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        self.lead()?;
        tokio::time::sleep(self.delay).await;
        let workers = self.data.lock().unwrap().workers.clone();
        Ok(Response::new(ListWorkersResponse { workers }))
    }

    async fn watch_events(
        &self,
        _: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_config(
        &self,
        _: Request<GetConfigRequest>,
    ) -> Result<Response<EffectiveConfig>, Status> {
        let config = self.data.lock().unwrap().config.clone();
        config
            .map(Response::new)
            .ok_or_else(|| Status::unavailable("no configuration yet"))
    }
}

#[derive(Clone, Default)]
struct FakeWorker {
    id: String,
    clusters: Vec<ClusterState>,
    queue: QueueState,
}

#[tonic::async_trait]
impl Worker for FakeWorker {
    type WatchEventsStream = BoxStream<EventRecord>;

    async fn list_clusters(
        &self,
        _: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        Ok(Response::new(ListClustersResponse {
            clusters: self.clusters.clone(),
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterState>, Status> {
        let r = request.into_inner();
        let key = format!("{}/{}", r.namespace, r.name);
        self.clusters
            .iter()
            .find(|c| c.cluster == key)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("{} does not own {key}", self.id)))
    }

    async fn get_queue(&self, _: Request<GetQueueRequest>) -> Result<Response<QueueState>, Status> {
        Ok(Response::new(self.queue.clone()))
    }

    async fn sync_cluster(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<SyncClusterResponse>, Status> {
        self.owned(request)?;
        Ok(Response::new(SyncClusterResponse {
            worker: self.id.clone(),
        }))
    }

    async fn get_cluster_logs(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterLogs>, Status> {
        let key = self.owned(request)?;
        Ok(Response::new(ClusterLogs {
            worker: self.id.clone(),
            entries: vec![LogEntry {
                time: "2024-05-01T10:00:00Z".into(),
                level: "INFO".into(),
                message: format!("objects written for {key}"),
            }],
        }))
    }

    async fn get_cluster_history(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterHistory>, Status> {
        let key = self.owned(request)?;
        Ok(Response::new(ClusterHistory {
            worker: self.id.clone(),
            entries: vec![EventRecord {
                at: "2024-05-01T10:00:01Z".into(),
                cluster: key,
                kind: "status".into(),
                detail: "Running".into(),
                trigger: "UPDATE".into(),
            }],
        }))
    }

    async fn watch_events(
        &self,
        _: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

impl FakeWorker {
    /// The requested cluster's key, if this worker owns it.
    fn owned(&self, request: Request<GetClusterRequest>) -> Result<String, Status> {
        let r = request.into_inner();
        let key = format!("{}/{}", r.namespace, r.name);
        if self.clusters.iter().any(|c| c.cluster == key) {
            Ok(key)
        } else {
            Err(Status::not_found(format!("{} does not own {key}", self.id)))
        }
    }
}

// ---- harness ----

async fn ephemeral() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn serve_scheduler(fake: FakeScheduler) -> SocketAddr {
    let (listener, addr) = ephemeral().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SchedulerServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

async fn serve_worker(fake: FakeWorker) -> SocketAddr {
    let (listener, addr) = ephemeral().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// An address nothing listens on.
async fn dead_address() -> SocketAddr {
    let (listener, addr) = ephemeral().await;
    drop(listener);
    addr
}

struct Gateway {
    base: String,
    backend: Arc<Backend>,
}

impl Gateway {
    async fn start(scheduler_addr: &str, timeout: Duration) -> Self {
        let backend = Arc::new(Backend::new(scheduler_addr, timeout).unwrap());
        let (listener, addr) = ephemeral().await;
        tokio::spawn(axum::serve(listener, routes::router(backend.clone())).into_future());
        Self {
            base: format!("http://{addr}"),
            backend,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "GET {path}"
        );
        (status, response.json().await.unwrap())
    }

    /// The body of a 200 answer.
    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }
}

fn assignment(key: &str, worker: &str, state: &str, status: &str, team: &str) -> ClusterAssignment {
    ClusterAssignment {
        cluster: key.into(),
        worker: worker.into(),
        state: state.into(),
        status: status.into(),
        team: team.into(),
    }
}

fn pod(name: &str, role: &str, ip: &str) -> PodState {
    PodState {
        namespace: "default".into(),
        cluster: "acid-minimal".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        role: role.into(),
        phase: "Running".into(),
        ready: true,
        pod_ip: ip.into(),
        deleted: false,
        annotations: Default::default(),
        node_name: "pgop-node-1".into(),
        terminating: false,
    }
}

/// Two live workers: w-1 (address with a scheme) owns and knows default/acid-minimal;
/// w-2 (address without a scheme) owns default/acid-test, which it does not know yet, and
/// prod/billing-main. prod/acid-orphan, default/warehouse (team acid, no team prefix),
/// prod/acid-ledger (team billing, another team's prefix) and default/fresh (team not
/// known yet) have no owner.
async fn fixture() -> (Gateway, FakeScheduler) {
    let w1 = serve_worker(FakeWorker {
        id: "w-1".into(),
        clusters: vec![ClusterState {
            cluster: "default/acid-minimal".into(),
            team: "acid".into(),
            status: "Running".into(),
            message: "".into(),
            uid: "uid-acid-minimal".into(),
            instances: 2,
            // Out of order: the gateway sorts them.
            pods: vec![
                pod("acid-minimal-1", "replica", "127.1.0.11"),
                pod("acid-minimal-0", "master", "127.1.0.10"),
            ],
            last_reconcile: "2024-05-01T10:00:00Z".into(),
            reconciles: 3,
            worker: "w-1".into(),
            databases: vec!["foo".into(), "bar".into()],
        }],
        queue: QueueState {
            worker_id: "w-1".into(),
            entries: vec![
                QueueEntry {
                    cluster: "default/acid-minimal".into(),
                    event: "UPDATE".into(),
                    pending: 2,
                },
                QueueEntry {
                    cluster: "default/acid-other".into(),
                    event: "SYNC".into(),
                    pending: 1,
                },
            ],
            running: 1,
        },
    })
    .await;
    let w2 = serve_worker(FakeWorker {
        id: "w-2".into(),
        clusters: vec![ClusterState {
            cluster: "prod/billing-main".into(),
            team: "Billing".into(),
            status: "Running".into(),
            ..Default::default()
        }],
        queue: QueueState {
            worker_id: "w-2".into(),
            entries: vec![],
            running: 0,
        },
    })
    .await;
    let scheduler = FakeScheduler::default();
    {
        let mut data = scheduler.data.lock().unwrap();
        data.assignments = vec![
            assignment("prod/billing-main", "w-2", "Assigned", "Running", "Billing"),
            assignment("default/acid-test", "w-2", "Assigned", "Creating", "acid"),
            assignment("prod/acid-orphan", "", "Unassigned", "SyncFailed", "ACID"),
            // The scheduler's last reported status is older than the worker's.
            assignment(
                "default/acid-minimal",
                "w-1",
                "Assigned",
                "Updating",
                "acid",
            ),
            assignment("default/warehouse", "", "Unassigned", "", "acid"),
            assignment("prod/acid-ledger", "", "Unassigned", "Running", "billing"),
            assignment("default/fresh", "", "Unassigned", "", ""),
        ];
        data.workers = vec![
            WorkerInfo {
                worker_id: "w-2".into(),
                address: w2.to_string(),
                capacity: 8,
                clusters: 2,
                queued: 0,
                last_heartbeat: "2024-05-01T10:00:02Z".into(),
            },
            WorkerInfo {
                worker_id: "w-1".into(),
                address: format!("http://{w1}"),
                capacity: 4,
                clusters: 1,
                queued: 2,
                last_heartbeat: "2024-05-01T10:00:01Z".into(),
            },
        ];
    }
    let addr = serve_scheduler(scheduler.clone()).await;
    let gateway = Gateway::start(&format!("http://{addr}"), Duration::from_secs(5)).await;
    (gateway, scheduler)
}

fn acid_minimal() -> Value {
    json!({
        "Team": "acid",
        "Namespace": "default",
        "Cluster": "acid-minimal",
        "Worker": "w-1",
        "Assignment": "Assigned",
        "Status": {"PostgresClusterStatus": "Running"},
        "Message": "",
        "UID": "uid-acid-minimal",
        "Instances": 2,
        "Pods": [
            {"Name": "acid-minimal-0", "Role": "master", "Phase": "Running", "Ready": true,
             "PodIP": "127.1.0.10", "Deleted": false},
            {"Name": "acid-minimal-1", "Role": "replica", "Phase": "Running", "Ready": true,
             "PodIP": "127.1.0.11", "Deleted": false},
        ],
        "LastReconcile": "2024-05-01T10:00:00Z",
        "Reconciles": 3,
    })
}

fn w1_queue() -> Value {
    json!({
        "Worker": "w-1",
        "Keys": ["default/acid-minimal", "default/acid-other"],
        "List": [
            {"Cluster": "default/acid-minimal", "Event": "UPDATE", "Pending": 2},
            {"Cluster": "default/acid-other", "Event": "SYNC", "Pending": 1},
        ],
        "Running": 1,
    })
}

// ---- tests ----

/// The status of an unowned cluster, from the scheduler alone.
fn unowned(team: &str, namespace: &str, cluster: &str, status: &str) -> Value {
    json!({
        "Team": team, "Namespace": namespace, "Cluster": cluster, "Worker": "",
        "Assignment": "Unassigned", "Status": {"PostgresClusterStatus": status},
        "Message": null, "UID": null, "Instances": null, "Pods": null,
        "LastReconcile": null, "Reconciles": null,
    })
}

#[tokio::test]
async fn databases_per_cluster_from_every_worker() {
    let (gw, _) = fixture().await;
    let body = gw.ok("/databases/").await;
    assert_eq!(body["acid-minimal"], json!(["bar", "foo"]), "{body}");
    assert_eq!(body["billing-main"], json!([]), "{body}");
}

#[tokio::test]
async fn config_is_the_schedulers_with_its_unknown_keys() {
    let (gw, scheduler) = fixture().await;
    let (status, _) = gw.get("/config/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "none yet");
    scheduler.data.lock().unwrap().config = Some(EffectiveConfig {
        json: r#"{"workers":8,"logical_backup_s3_secret_access_key":"<redacted>"}"#.into(),
        unknown_keys: vec!["some_future_key".into()],
        source: "configmap".into(),
    });
    assert_eq!(
        gw.ok("/config/").await,
        json!({
            "operator": {"workers": 8, "logical_backup_s3_secret_access_key": "<redacted>"},
            "unknown_keys": ["some_future_key"],
            "source": "configmap",
        })
    );
    scheduler.data.lock().unwrap().config = Some(EffectiveConfig {
        json: "{not json".into(),
        ..Default::default()
    });
    let (status, body) = gw.get("/config").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
}

#[tokio::test]
async fn clusters_are_grouped_by_team_without_the_team_prefix() {
    let (gw, _) = fixture().await;
    // Teams lower-cased ("ACID" joins "acid"), `{team}-` stripped only when present
    // (warehouse has none; acid-ledger is billing's), default/fresh has no team yet.
    let expected = json!({
        "acid": ["minimal", "orphan", "test", "warehouse"],
        "billing": ["acid-ledger", "main"],
    });
    assert_eq!(gw.ok("/clusters/").await, expected);
    assert_eq!(gw.ok("/clusters").await, expected);
}

#[tokio::test]
async fn team_clusters_are_a_list_matching_the_team_case_insensitively() {
    let (gw, _) = fixture().await;
    let acid = json!(["minimal", "orphan", "test", "warehouse"]);
    assert_eq!(gw.ok("/clusters/acid/").await, acid);
    assert_eq!(gw.ok("/clusters/ACID").await, acid);
    assert_eq!(
        gw.ok("/clusters/Billing").await,
        json!(["acid-ledger", "main"])
    );
    let not_found = (
        StatusCode::NOT_FOUND,
        json!({"error": "could not find clusters for the team"}),
    );
    assert_eq!(gw.get("/clusters/nobody/").await, not_found);
    assert_eq!(gw.get("/clusters/nobody").await, not_found);
}

#[tokio::test]
async fn cluster_status_merges_the_worker_state_with_the_assignment() {
    let (gw, _) = fixture().await;
    assert_eq!(
        gw.ok("/clusters/default/acid-minimal/").await,
        acid_minimal()
    );
    assert_eq!(
        gw.ok("/clusters/default/acid-minimal").await,
        acid_minimal()
    );
}

#[tokio::test]
async fn team_cluster_status_takes_the_short_or_the_full_name() {
    let (gw, _) = fixture().await;
    // Zalando's form: `{team}-{cluster}`, the name `/clusters/{team}/` lists.
    assert_eq!(
        gw.ok("/clusters/acid/default/minimal/").await,
        acid_minimal()
    );
    assert_eq!(
        gw.ok("/clusters/ACID/default/minimal").await,
        acid_minimal()
    );
    // The full name.
    assert_eq!(
        gw.ok("/clusters/acid/default/acid-minimal/").await,
        acid_minimal()
    );
    // A name without the team prefix.
    assert_eq!(
        gw.ok("/clusters/acid/default/warehouse/").await,
        unowned("acid", "default", "warehouse", "")
    );
    assert_eq!(
        gw.ok("/clusters/billing/prod/acid-ledger/").await,
        unowned("billing", "prod", "acid-ledger", "Running")
    );
    assert_eq!(
        gw.ok("/clusters/billing/prod/main/").await["Cluster"],
        "billing-main"
    );
    // Another team's cluster, under either name.
    for (path, error) in [
        (
            "/clusters/billing/default/acid-minimal/",
            "could not find cluster default/acid-minimal of team billing",
        ),
        (
            "/clusters/acid/prod/ledger/",
            "could not find cluster prod/ledger of team acid",
        ),
        (
            "/clusters/acid/default/fresh/",
            "could not find cluster default/fresh of team acid",
        ),
    ] {
        assert_eq!(
            gw.get(path).await,
            (StatusCode::NOT_FOUND, json!({ "error": error })),
            "{path}"
        );
    }
}

#[tokio::test]
async fn team_cluster_status_prefers_the_prefixed_name() {
    let (gw, scheduler) = fixture().await;
    scheduler.data.lock().unwrap().assignments.push(assignment(
        "default/minimal",
        "",
        "Unassigned",
        "Creating",
        "acid",
    ));
    assert_eq!(
        gw.ok("/clusters/acid/default/minimal/").await,
        acid_minimal()
    );
    // Reachable under its full name only, and listed twice: names carry no namespace.
    assert_eq!(
        gw.ok("/clusters/default/minimal/").await,
        unowned("acid", "default", "minimal", "Creating")
    );
    assert_eq!(
        gw.ok("/clusters/acid/").await,
        json!(["minimal", "minimal", "orphan", "test", "warehouse"])
    );
}

#[tokio::test]
async fn cluster_status_without_worker_state_comes_from_the_scheduler() {
    let (gw, _) = fixture().await;
    // Owned by w-2, which does not know it yet.
    assert_eq!(
        gw.ok("/clusters/default/acid-test/").await,
        json!({
            "Team": "acid", "Namespace": "default", "Cluster": "acid-test", "Worker": "w-2",
            "Assignment": "Assigned", "Status": {"PostgresClusterStatus": "Creating"},
            "Message": null, "UID": null, "Instances": null, "Pods": null,
            "LastReconcile": null, "Reconciles": null,
        })
    );
    // No owner at all.
    assert_eq!(
        gw.ok("/clusters/prod/acid-orphan/").await,
        unowned("ACID", "prod", "acid-orphan", "SyncFailed")
    );
    // No team yet: left out of the lists, but its status is there.
    assert_eq!(
        gw.ok("/clusters/default/fresh/").await,
        unowned("", "default", "fresh", "")
    );
}

#[tokio::test]
async fn unknown_cluster_is_404() {
    let (gw, _) = fixture().await;
    assert_eq!(
        gw.get("/clusters/default/nope/").await,
        (
            StatusCode::NOT_FOUND,
            json!({"error": "could not find cluster default/nope"})
        )
    );
    assert_eq!(
        gw.get("/clusters/acid/default/nope").await,
        (
            StatusCode::NOT_FOUND,
            json!({"error": "could not find cluster default/nope of team acid"})
        )
    );
}

#[tokio::test]
async fn bad_paths_are_400_and_unknown_pages_404() {
    let (gw, _) = fixture().await;
    assert_eq!(
        gw.get("/clusters/Default/acid-minimal/").await,
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid namespace \"Default\""})
        )
    );
    assert_eq!(
        gw.get("/clusters/default/bad%20name/").await,
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid cluster name \"bad name\""})
        )
    );
    assert_eq!(
        gw.get("/clusters/acid/default/bad%20name/").await,
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid cluster name \"bad name\""})
        )
    );
    assert_eq!(
        gw.get("/clusters/acid/Default/minimal/").await,
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid namespace \"Default\""})
        )
    );
    assert_eq!(
        gw.get("/workers/w%2F1/queue/").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        gw.get("/nothing/here").await,
        (StatusCode::NOT_FOUND, json!({"error": "page not found"}))
    );
    assert_eq!(
        gw.get("/clusters/a/b/c/d/").await,
        (StatusCode::NOT_FOUND, json!({"error": "page not found"}))
    );
    let response = reqwest::Client::new()
        .post(format!("{}/status/", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"error": "method not allowed"})
    );
}

#[tokio::test]
async fn worker_queues() {
    let (gw, _) = fixture().await;
    assert_eq!(gw.ok("/workers/w-1/queue/").await, w1_queue());
    assert_eq!(
        gw.ok("/workers/all/queue/").await,
        json!({
            "w-1": w1_queue(),
            "w-2": {"Worker": "w-2", "Keys": [], "List": [], "Running": 0},
        })
    );
    assert_eq!(
        gw.get("/workers/w-9/queue").await,
        (
            StatusCode::NOT_FOUND,
            json!({"error": "could not find worker w-9"})
        )
    );
}

#[tokio::test]
async fn workers_and_their_status() {
    let (gw, scheduler) = fixture().await;
    let address = |id: &str| {
        let data = scheduler.data.lock().unwrap();
        let w = data.workers.iter().find(|w| w.worker_id == id).unwrap();
        w.address.clone()
    };
    let w1 = json!({"ID": "w-1", "Address": address("w-1"), "Capacity": 4, "Clusters": 1,
        "Queued": 2, "LastHeartbeat": "2024-05-01T10:00:01Z"});
    let w2 = json!({"ID": "w-2", "Address": address("w-2"), "Capacity": 8, "Clusters": 2,
        "Queued": 0, "LastHeartbeat": "2024-05-01T10:00:02Z"});
    // Sorted by id.
    assert_eq!(gw.ok("/workers/").await, json!([w1, w2]));

    let mut expected = w1.clone();
    expected["State"] = json!("busy");
    expected["Running"] = json!(1);
    expected["QueueLength"] = json!(2);
    assert_eq!(gw.ok("/workers/w-1/status/").await, expected);
    let all = gw.ok("/workers/all/status").await;
    assert_eq!(all["w-1"], expected);
    assert_eq!(all["w-2"]["State"], "idle");
}

#[tokio::test]
async fn controller_status() {
    let (gw, _) = fixture().await;
    assert_eq!(
        gw.ok("/status/").await,
        json!({
            "Clusters": 7,
            "ClusterStates": {"Assigned": 3, "Unassigned": 4},
            "Workers": 2,
            "WorkerQueueSize": {"w-1": 2, "w-2": 0},
            "WorkerClusters": {"w-1": 1, "w-2": 2},
        })
    );
    assert_eq!(gw.ok("/status").await["Clusters"], 7);
}

#[tokio::test]
async fn scheduler_down_is_503() {
    let dead = dead_address().await;
    // Without a scheme, as settings may give it.
    let gw = Gateway::start(&dead.to_string(), Duration::from_secs(5)).await;
    for path in [
        "/status/",
        "/clusters/",
        "/clusters/default/acid-minimal/",
        "/workers/all/queue/",
    ] {
        let (status, body) = gw.get(path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with("scheduler is unreachable: "),
            "{path}: {error}"
        );
    }
}

#[tokio::test]
async fn worker_down_is_503_and_an_error_entry_among_all_queues() {
    let (gw, scheduler) = fixture().await;
    let dead = dead_address().await;
    {
        let mut data = scheduler.data.lock().unwrap();
        data.assignments.push(assignment(
            "default/acid-dead",
            "w-3",
            "Assigned",
            "Running",
            "acid",
        ));
        data.workers.push(WorkerInfo {
            worker_id: "w-3".into(),
            address: dead.to_string(),
            ..Default::default()
        });
    }
    let (status, body) = gw.get("/clusters/default/acid-dead/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("worker w-3 is unreachable: "));
    assert_eq!(
        gw.get("/workers/w-3/queue/").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let all = gw.ok("/workers/all/queue/").await;
    assert_eq!(all["w-1"], w1_queue());
    assert_eq!(all["w-2"]["Running"], 0);
    let entry = all["w-3"].as_object().unwrap();
    assert_eq!(entry.len(), 1, "{entry:?}");
    assert!(entry["error"]
        .as_str()
        .unwrap()
        .starts_with("worker w-3 is unreachable: "));
}

#[tokio::test]
async fn slow_scheduler_is_504() {
    let scheduler = FakeScheduler {
        delay: Duration::from_secs(3),
        ..Default::default()
    };
    let addr = serve_scheduler(scheduler).await;
    let gw = Gateway::start(&format!("http://{addr}"), Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    assert_eq!(
        gw.get("/clusters/").await,
        (
            StatusCode::GATEWAY_TIMEOUT,
            json!({"error": "scheduler did not answer within 0.2s"})
        )
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn worker_channels_are_cached_by_address_and_pruned() {
    let (gw, scheduler) = fixture().await;
    assert!(gw.backend.cached_worker_addresses().is_empty());
    gw.ok("/workers/all/queue/").await;
    gw.ok("/workers/w-1/queue/").await;
    let workers = scheduler.data.lock().unwrap().workers.clone();
    let w1 = workers.iter().find(|w| w.worker_id == "w-1").unwrap();
    let w2 = workers.iter().find(|w| w.worker_id == "w-2").unwrap();
    let mut expected = vec![w1.address.clone(), format!("http://{}", w2.address)];
    expected.sort();
    assert_eq!(gw.backend.cached_worker_addresses(), expected);

    // w-2 leaves: its channel is dropped at the next listing.
    scheduler
        .data
        .lock()
        .unwrap()
        .workers
        .retain(|w| w.worker_id != "w-2");
    gw.ok("/workers/").await;
    assert_eq!(
        gw.backend.cached_worker_addresses(),
        vec![w1.address.clone()]
    );
}

#[tokio::test]
async fn cluster_logs_history_and_sync_come_from_the_owner() {
    let (gateway, _) = fixture().await;
    assert_eq!(
        gateway.ok("/clusters/default/acid-minimal/logs/").await,
        json!([{"Time": "2024-05-01T10:00:00Z", "Level": "INFO", "Worker": "w-1",
                "Message": "objects written for default/acid-minimal"}])
    );
    assert_eq!(
        gateway.ok("/clusters/default/acid-minimal/history").await,
        json!([{"Time": "2024-05-01T10:00:01Z", "Trigger": "UPDATE", "Kind": "status",
                "Detail": "Running"}])
    );
    let response = reqwest::Client::new()
        .post(format!(
            "{}/clusters/default/acid-minimal/sync/",
            gateway.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"Cluster": "default/acid-minimal", "Worker": "w-1"})
    );
    // GET on the sync path is the wrong method.
    let (status, _) = gateway.get("/clusters/default/acid-minimal/sync/").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // Unknown to the scheduler: 404; known but owned by nobody: 503; owned by a worker
    // that does not have it yet: the worker's 404.
    let (status, body) = gateway.get("/clusters/default/nothing/logs/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = gateway.get("/clusters/prod/acid-orphan/history/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = gateway.get("/clusters/default/acid-test/logs/").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The team path keeps working beside them.
    let body = gateway.ok("/clusters/acid/default/minimal/").await;
    assert_eq!(body["Cluster"], "acid-minimal");
}

#[tokio::test]
async fn a_standby_scheduler_is_passed_over_for_the_one_leading() {
    let standby = serve_scheduler(FakeScheduler {
        standby: true,
        ..FakeScheduler::default()
    })
    .await;
    let leader = FakeScheduler::default();
    leader.data.lock().unwrap().assignments = vec![assignment(
        "default/acid-a",
        "w-1",
        "Assigned",
        "Running",
        "acid",
    )];
    let leader = serve_scheduler(leader).await;
    // The standby first: the gateway goes on to the next replica.
    let both = Gateway::start(
        &format!("http://{standby},http://{leader}"),
        Duration::from_secs(2),
    )
    .await;
    let body = both.ok("/status/").await;
    assert_eq!(body["Clusters"], 1, "{body}");
    // Only standbys: the gateway says so.
    let alone = Gateway::start(&format!("http://{standby}"), Duration::from_secs(2)).await;
    let (status, body) = alone.get("/status/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("standby"),
        "{body}"
    );
}
