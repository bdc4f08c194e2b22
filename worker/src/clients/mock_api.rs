//! A scripted Kubernetes API server for unit tests of request sequences (in the manner of
//! controller-rs's `fixtures.rs`): each expected request is answered in order, a request out
//! of script fails the test, and so does any request left once the client is dropped.
use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use tower_test::mock;

/// One expected request and its answer.
pub(crate) struct Exchange {
    pub method: &'static str,
    /// The path without the query.
    pub path: &'static str,
    pub status: u16,
    pub body: Value,
}

impl Exchange {
    pub fn new(method: &'static str, path: &'static str, status: u16, body: Value) -> Self {
        Self {
            method,
            path,
            status,
            body,
        }
    }

    /// A GET of a missing object.
    pub fn not_found(method: &'static str, path: &'static str) -> Self {
        Self::new(
            method,
            path,
            404,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
}

/// A client talking to the scripted server, and the server's task, which yields every
/// request once the client is dropped.
pub(crate) fn client(script: Vec<Exchange>) -> (kube::Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for expected in script {
            let (request, respond) = handle.next_request().await.unwrap_or_else(|| {
                panic!("no request; expected {} {}", expected.method, expected.path)
            });
            let request = seen_of(request).await;
            assert_eq!(
                (request.method.as_str(), request.path.as_str()),
                (expected.method, expected.path),
                "request {} out of script: {request:?}",
                seen.len() + 1
            );
            seen.push(request);
            let body = serde_json::to_vec(&expected.body).expect("JSON");
            respond.send_response(
                Response::builder()
                    .status(expected.status)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .expect("a response"),
            );
        }
        if let Some((request, _)) = handle.next_request().await {
            panic!("a request beyond the script: {:?}", seen_of(request).await);
        }
        seen
    });
    (kube::Client::new(service, "default"), server)
}

/// What the recording server has seen so far.
#[derive(Clone, Default)]
pub(crate) struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<Seen>>>);

impl Recorder {
    /// The requests seen since the last call.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A client whose server finds nothing to read (404) and answers every write with 200 and
/// the request's own body (what a write returns), recording them all: for passes whose
/// requests are the question.
pub(crate) fn recording_client() -> (kube::Client, Recorder) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let recorder = Recorder::default();
    let seen = recorder.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let request = seen_of(request).await;
            let answer = echo(&request);
            // Recorded before the answer: a caller that has its answer finds its request.
            seen.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(request);
            respond.send_response(answer);
        }
    });
    (kube::Client::new(service, "default"), recorder)
}

/// The recording server's answer: a read finds nothing, a write returns what it sent.
fn echo(request: &Seen) -> Response<Body> {
    let (status, body) = match request.method.as_str() {
        "GET" => (404, Exchange::not_found("GET", "").body),
        _ => (200, request.body.clone().unwrap_or(Value::Null)),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
        .expect("a response")
}

/// A client whose server holds the first `held` requests unanswered until all of them have
/// arrived (a request that waits for an earlier answer never comes: the server then fails
/// after `patience`), then answers everything as [`recording_client`] does. Yields the paths
/// of the held requests once the client is dropped.
pub(crate) fn holding_client(
    held: usize,
    patience: std::time::Duration,
) -> (kube::Client, tokio::task::JoinHandle<Vec<String>>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut waiting = Vec::new();
        while waiting.len() < held {
            let next = tokio::time::timeout(patience, handle.next_request()).await;
            let (request, respond) = next
                .unwrap_or_else(|_| panic!("only {} requests in flight at once", waiting.len()))
                .expect("the client is there");
            waiting.push((seen_of(request).await, respond));
        }
        let paths = waiting.iter().map(|(r, _)| r.path.clone()).collect();
        for (request, respond) in waiting {
            respond.send_response(echo(&request));
        }
        while let Some((request, respond)) = handle.next_request().await {
            respond.send_response(echo(&seen_of(request).await));
        }
        paths
    });
    (kube::Client::new(service, "default"), server)
}

/// What the watcher reports of an object as pgop wrote it (`written`: a write's body).
pub(crate) fn as_reported(written: &Value) -> pgop_proto::v1::ChildState {
    use pgop_common::applied::{judge, Drift, APPLIED_HASH};
    use pgop_proto::v1::{ChildDrift, ChildState};
    let metadata = &written["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    ChildState {
        namespace: text(&metadata["namespace"]),
        cluster: text(&metadata["labels"]["cluster-name"]),
        kind: text(&written["kind"]),
        name: text(&metadata["name"]),
        applied_hash: text(&metadata["annotations"][APPLIED_HASH]),
        drift: match judge(written) {
            Drift::InSync => ChildDrift::InSync,
            Drift::Drifted => ChildDrift::Drifted,
            Drift::Unknown => ChildDrift::Unknown,
        } as i32,
        ..ChildState::default()
    }
}

async fn seen_of(request: Request<Body>) -> Seen {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = request.into_body().collect_bytes().await.expect("a body");
    let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("a JSON body"));
    Seen {
        method,
        path,
        query,
        body,
    }
}
