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

/// A client whose server answers every request with 200 and the request's own body (what a
/// write returns), recording them all: for passes whose requests are the question.
pub(crate) fn recording_client() -> (kube::Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let request = seen_of(request).await;
            let body =
                serde_json::to_vec(request.body.as_ref().unwrap_or(&Value::Null)).expect("JSON");
            respond.send_response(
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .expect("a response"),
            );
            seen.push(request);
        }
        seen
    });
    (kube::Client::new(service, "default"), server)
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
