//! The kubelet's HTTPS API, as much of it as the API server needs: `GET /containerLogs/...`
//! behind `kubectl logs` (the API server proxies `pods/{pod}/log` there, to the node's
//! address and `status.daemonEndpoints.kubeletEndpoint.Port`) and `/healthz`.
//!
//! There is no authentication: the API server does not present a client certificate (no
//! `--kubelet-client-certificate`), and does not verify ours (no
//! `--kubelet-certificate-authority`), so the certificate is a self-signed one made once per
//! state dir. Listen on loopback only.
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The port real kubelets serve on; what the API server assumes when a node advertises none.
pub const DEFAULT_PORT: u16 = 10250;

/// How often a followed log file is checked for growth (no inotify: polling is cheap here).
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Read and send size: bounds memory per request however large the log is.
const CHUNK: usize = 64 * 1024;
/// A client that connects but never finishes the handshake must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open connections (followers end at once on shutdown).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const CERT_FILE: &str = "kubelet-serving.crt";
const KEY_FILE: &str = "kubelet-serving.key";

#[derive(Debug, thiserror::Error)]
pub enum KubeletApiError {
    #[error("binding the kubelet API to {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("creating the kubelet serving certificate in {0}: {1}")]
    Certificate(PathBuf, String),
    #[error("reading the kubelet serving certificate {0}: {1}")]
    Pem(PathBuf, rustls::pki_types::pem::Error),
    #[error("kubelet API TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Serves the kubelet API on `listen` until `shutdown`; binds before returning the future's
/// first await so a port clash is an error.
///
/// Container logs are read from `<log_dir>/pods/<namespace>_<pod>_<container>.log`; the
/// serving certificate is kept in `state_dir` and reused across restarts. Several nodes of
/// one kubelet share one server: the path names namespace, pod and container.
pub async fn serve(
    listen: SocketAddr,
    log_dir: PathBuf,
    state_dir: PathBuf,
    shutdown: CancellationToken,
) -> Result<(), KubeletApiError> {
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| KubeletApiError::Bind(listen, e))?;
    let tls = TlsAcceptor::from(Arc::new(server_config(&state_dir).await?));
    let app = router(Arc::new(AppState {
        log_dir,
        shutdown: shutdown.clone(),
    }));
    tracing::info!(%listen, "kubelet API serving");
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, tls.clone(), app.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: transient, so wait rather than end.
                    tracing::warn!("kubelet API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::debug!("kubelet API connections still open at shutdown: dropping them");
    }
    Ok(())
}

/// One TLS connection; HTTP/2 if the client asked for it by ALPN (the API server's Go client
/// does), HTTP/1.1 otherwise.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: TlsAcceptor,
    app: Router,
    shutdown: CancellationToken,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(%peer, "kubelet API TLS handshake failed: {e}"),
        Err(_) => return tracing::debug!(%peer, "kubelet API TLS handshake timed out"),
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let io = TokioIo::new(stream);
    let service = TowerToHyperService::new(app);
    let result = if h2 {
        let conn = http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
        drive(conn, &shutdown, |c| c.graceful_shutdown()).await
    } else {
        let conn = http1::Builder::new().serve_connection(io, service);
        drive(conn, &shutdown, |c| c.graceful_shutdown()).await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "kubelet API connection ended: {e}");
    }
}

/// Runs a connection, asking it to finish its requests and close once `shutdown` fires
/// (idle keep-alive connections would otherwise hold shutdown up).
async fn drive<C>(
    conn: C,
    shutdown: &CancellationToken,
    graceful: impl FnOnce(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        _ = shutdown.cancelled() => graceful(conn.as_mut()),
    }
    conn.await
}

/// The self-signed serving certificate of `state_dir`, made on first use.
async fn server_config(state_dir: &Path) -> Result<rustls::ServerConfig, KubeletApiError> {
    let cert = state_dir.join(CERT_FILE);
    let key = state_dir.join(KEY_FILE);
    if !(cert.exists() && key.exists()) {
        generate_certificate(state_dir, &cert, &key).await?;
    }
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| KubeletApiError::Pem(cert.clone(), e))?;
    let private_key =
        PrivateKeyDer::from_pem_file(&key).map_err(|e| KubeletApiError::Pem(key.clone(), e))?;
    // An explicit provider: the process may link more than one, and then none is the default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Writes to temporary names and renames, so an interrupted run leaves nothing half-written
/// to be reused.
async fn generate_certificate(
    state_dir: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(), KubeletApiError> {
    let fail = |e: String| KubeletApiError::Certificate(state_dir.to_path_buf(), e);
    std::fs::create_dir_all(state_dir).map_err(|e| fail(e.to_string()))?;
    let tmp_cert = cert.with_extension("crt.tmp");
    let tmp_key = key.with_extension("key.tmp");
    let output = tokio::process::Command::new("openssl")
        .args(["req", "-x509", "-nodes", "-days", "3650"])
        .args(["-subj", "/CN=pgop-local-kubelet"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .arg("-keyout")
        .arg(&tmp_key)
        .arg("-out")
        .arg(&tmp_cert)
        .output()
        .await
        .map_err(|e| fail(format!("running openssl: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "openssl failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    std::fs::rename(&tmp_key, key)
        .and_then(|()| std::fs::rename(&tmp_cert, cert))
        .map_err(|e| fail(e.to_string()))
}

struct AppState {
    log_dir: PathBuf,
    shutdown: CancellationToken,
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        })
        .with_state(state)
}

/// Why a logs request fails; each is an HTTP status with a one-line text body, which the API
/// server passes on to kubectl.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogsError {
    #[error("{0}")]
    BadRequest(String),
    #[error("previous container logs are not kept")]
    Previous,
    #[error("invalid {what} {value:?}: expected letters, digits, '-' and '.'")]
    BadName { what: &'static str, value: String },
    #[error("no logs of container {container:?} of pod {namespace}/{pod} on this kubelet")]
    NotFound {
        namespace: String,
        pod: String,
        container: String,
    },
    #[error("reading {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl IntoResponse for LogsError {
    fn into_response(self) -> Response {
        let status = match &self {
            LogsError::BadRequest(_) | LogsError::Previous | LogsError::BadName { .. } => {
                StatusCode::BAD_REQUEST
            }
            LogsError::NotFound { .. } => StatusCode::NOT_FOUND,
            LogsError::Io(..) => {
                tracing::warn!("kubelet API: {self}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, format!("{self}\n")).into_response()
    }
}

/// The query parameters of `/containerLogs` that are honoured.
///
/// `timestamps` is accepted but ignored (pgop's processes stamp their own lines);
/// `sinceSeconds` and `sinceTime` are refused (the log files carry no per-line times, and the
/// whole log would answer a question about its last minute), and so is `previous=true`, since
/// restarted containers append to the same file.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogOptions {
    pub(crate) follow: bool,
    pub(crate) tail_lines: Option<u64>,
    pub(crate) limit_bytes: Option<u64>,
}

pub(crate) fn parse_log_options<K: AsRef<str>, V: AsRef<str>>(
    pairs: &[(K, V)],
) -> Result<LogOptions, LogsError> {
    let mut options = LogOptions::default();
    for (key, value) in pairs {
        let (key, value) = (key.as_ref(), value.as_ref());
        match key {
            "follow" => options.follow = parse_bool(key, value)?,
            "previous" if parse_bool(key, value)? => return Err(LogsError::Previous),
            "timestamps" => {
                parse_bool(key, value)?;
            }
            "tailLines" => options.tail_lines = Some(parse_count(key, value, 0)?),
            "limitBytes" => options.limit_bytes = Some(parse_count(key, value, 1)?),
            "sinceSeconds" | "sinceTime" => {
                return Err(LogsError::BadRequest(format!(
                    "{key}: the local kubelet keeps no per-line times; use tailLines"
                )))
            }
            _ => {}
        }
    }
    Ok(options)
}

/// The spellings Go's `strconv.ParseBool` takes, which is what the API server and kubectl use.
fn parse_bool(key: &str, value: &str) -> Result<bool, LogsError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(LogsError::BadRequest(format!(
            "{key}: expected true or false, got {value:?}"
        ))),
    }
}

fn parse_count(key: &str, value: &str, min: u64) -> Result<u64, LogsError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| *n >= min)
        .ok_or_else(|| {
            LogsError::BadRequest(format!(
                "{key}: expected an integer of at least {min}, got {value:?}"
            ))
        })
}

/// The log file name of a container, as the launcher writes it.
///
/// Only characters of Kubernetes names are allowed: no `/` or `..` can escape the log
/// directory, and no `_` can make two (namespace, pod, container) triples share a file.
pub(crate) fn log_file_name(
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<String, LogsError> {
    for (what, value) in [
        ("namespace", namespace),
        ("pod name", pod),
        ("container name", container),
    ] {
        let valid = !value.is_empty()
            && value.len() <= 253
            && value != "."
            && value != ".."
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return Err(LogsError::BadName {
                what,
                value: value.to_string(),
            });
        }
    }
    Ok(format!("{namespace}_{pod}_{container}.log"))
}

/// Offset in a `len`-byte log where its last `lines` lines start, read backwards `chunk`
/// bytes at a time so a long log is not read whole. A final newline ends the last line
/// rather than starting an empty one; an unterminated last line counts as a line.
pub(crate) fn tail_offset<R: Read + Seek>(
    reader: &mut R,
    len: u64,
    lines: u64,
    chunk: usize,
) -> std::io::Result<u64> {
    if lines == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; chunk.max(1)];
    let mut end = len;
    let mut seen = 0u64;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let part = &mut buf[..(end - start) as usize];
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(part)?;
        for (i, byte) in part.iter().enumerate().rev() {
            let at = start + i as u64;
            if *byte == b'\n' && at + 1 != len {
                seen += 1;
                if seen == lines {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

async fn container_logs(
    State(state): State<Arc<AppState>>,
    path: Result<UrlPath<(String, String, String)>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, LogsError> {
    let UrlPath((namespace, pod, container)) =
        path.map_err(|e| LogsError::BadRequest(e.body_text()))?;
    let Query(pairs) = query.map_err(|e| LogsError::BadRequest(e.body_text()))?;
    let options = parse_log_options(&pairs)?;
    let file_name = log_file_name(&namespace, &pod, &container)?;
    let path = state.log_dir.join("pods").join(file_name);
    let open_path = path.clone();
    let opened = tokio::task::spawn_blocking(move || open_at_tail(&open_path, options.tail_lines))
        .await
        .map_err(|e| LogsError::Io(path.clone(), std::io::Error::other(e)))?;
    let (file, pos) = match opened {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LogsError::NotFound {
                namespace,
                pod,
                container,
            })
        }
        Err(e) => return Err(LogsError::Io(path, e)),
    };
    let reader = LogReader {
        inode: file.metadata().map(|m| m.ino()).unwrap_or_default(),
        file: tokio::fs::File::from_std(file),
        path,
        pos,
        remaining: options.limit_bytes,
        follow: options.follow,
        shutdown: state.shutdown.clone(),
    };
    let body = Body::from_stream(futures::stream::unfold(Some(reader), |reader| async {
        let mut reader = reader?;
        match reader.next_chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(reader))),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("kubelet API: reading {}: {e}", reader.path.display());
                Some((Err(e), None))
            }
        }
    }));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// The log file, positioned where the answer starts.
fn open_at_tail(path: &Path, tail_lines: Option<u64>) -> std::io::Result<(std::fs::File, u64)> {
    let mut file = std::fs::File::open(path)?;
    let pos = match tail_lines {
        Some(lines) => {
            let len = file.metadata()?.len();
            tail_offset(&mut file, len, lines, CHUNK)?
        }
        None => 0,
    };
    file.seek(SeekFrom::Start(pos))?;
    Ok((file, pos))
}

/// Streams a log from a position, then (with `follow`) what is appended to it.
///
/// Following ends when the client goes away, at shutdown, when `limitBytes` is reached or when
/// the file is removed or replaced; unlike a real kubelet's it does not end when the
/// container exits, since this server does not know the containers' states.
struct LogReader {
    file: tokio::fs::File,
    path: PathBuf,
    inode: u64,
    pos: u64,
    remaining: Option<u64>,
    follow: bool,
    shutdown: CancellationToken,
}

impl LogReader {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            let want = match self.remaining {
                Some(0) => return Ok(None),
                Some(left) => left.min(CHUNK as u64) as usize,
                None => CHUNK,
            };
            let mut buf = vec![0u8; want];
            let n = self.file.read(&mut buf).await?;
            if n > 0 {
                buf.truncate(n);
                self.pos += n as u64;
                if let Some(left) = &mut self.remaining {
                    *left -= n as u64;
                }
                return Ok(Some(Bytes::from(buf)));
            }
            if !self.follow {
                return Ok(None);
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            match tokio::fs::metadata(&self.path).await {
                Ok(meta) if meta.ino() == self.inode => {}
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
            if self.file.metadata().await?.len() < self.pos {
                // Truncated: what is there now is all new.
                use tokio::io::AsyncSeekExt;
                self.pos = self.file.seek(SeekFrom::Start(0)).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn log_options_table() {
        let ok = |follow, tail_lines, limit_bytes| {
            Some(LogOptions {
                follow,
                tail_lines,
                limit_bytes,
            })
        };
        type Query = &'static [(&'static str, &'static str)];
        let cases: &[(Query, Option<LogOptions>)] = &[
            (&[], ok(false, None, None)),
            (&[("follow", "true")], ok(true, None, None)),
            (&[("follow", "1")], ok(true, None, None)),
            (&[("follow", "false")], ok(false, None, None)),
            (&[("follow", "yes")], None),
            (&[("tailLines", "0")], ok(false, Some(0), None)),
            (&[("tailLines", "10")], ok(false, Some(10), None)),
            (&[("tailLines", "-1")], None),
            (&[("tailLines", "x")], None),
            (&[("limitBytes", "100")], ok(false, None, Some(100))),
            (&[("limitBytes", "0")], None),
            (&[("previous", "false")], ok(false, None, None)),
            (&[("previous", "true")], None),
            (&[("timestamps", "true")], ok(false, None, None)),
            (&[("timestamps", "maybe")], None),
            (&[("sinceSeconds", "5")], None),
            (&[("sinceTime", "2026-01-01T00:00:00Z")], None),
            (&[("other", "x")], ok(false, None, None)),
            (
                &[("follow", "true"), ("tailLines", "2"), ("limitBytes", "7")],
                ok(true, Some(2), Some(7)),
            ),
        ];
        for (pairs, want) in cases {
            let got = parse_log_options(pairs).ok();
            assert_eq!(got, *want, "{pairs:?}");
        }
        assert!(matches!(
            parse_log_options(&[("previous", "true")]),
            Err(LogsError::Previous)
        ));
    }

    #[test]
    fn log_file_name_table() {
        let cases = [
            (("default", "web-0", "app"), Some("default_web-0_app.log")),
            (("ns", "a.b", "c"), Some("ns_a.b_c.log")),
            (("ns", "..", "c"), None),
            (("ns", ".", "c"), None),
            (("ns", "a/b", "c"), None),
            (("ns", "pod", "../x"), None),
            (("", "pod", "c"), None),
            (("ns", "pod", ""), None),
            (("n_s", "pod", "c"), None),
            (("ns", "pod", "c\0"), None),
            (("ns", "pöd", "c"), None),
        ];
        for ((ns, pod, container), want) in cases {
            let got = log_file_name(ns, pod, container).ok();
            assert_eq!(got.as_deref(), want, "{ns:?} {pod:?} {container:?}");
        }
    }

    #[test]
    fn tail_offset_table() {
        let cases: &[(&str, u64, &str)] = &[
            ("a\nb\nc\n", 2, "b\nc\n"),
            ("a\nb\nc\n", 3, "a\nb\nc\n"),
            ("a\nb\nc\n", 10, "a\nb\nc\n"),
            ("a\nb\nc\n", 1, "c\n"),
            ("a\nb\nc\n", 0, ""),
            ("a\nb\nc", 1, "c"),
            ("a\nb\nc", 2, "b\nc"),
            ("", 3, ""),
            ("\n\n\n", 2, "\n\n"),
            ("one line", 1, "one line"),
            ("long line here\nx\n", 1, "x\n"),
        ];
        for chunk in [1, 2, 3, CHUNK] {
            for (text, lines, want) in cases {
                let len = text.len() as u64;
                let at = tail_offset(&mut Cursor::new(text.as_bytes()), len, *lines, chunk)
                    .expect("cursor reads");
                assert_eq!(
                    &text[at as usize..],
                    *want,
                    "{text:?} {lines} chunk {chunk}"
                );
            }
        }
    }

    /// A state and log dir of its own under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("pgop-kubelet-api-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("logs/pods")).expect("scratch dir");
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Serves on a free loopback port; returns its base URL.
    async fn start(scratch: &Scratch, shutdown: &CancellationToken) -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        tokio::spawn(serve(
            listen,
            scratch.0.join("logs"),
            scratch.0.join("state"),
            shutdown.clone(),
        ));
        // The spawned server binds when first polled.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        format!("https://127.0.0.1:{port}")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .no_proxy()
            .build()
            .expect("client")
    }

    #[tokio::test]
    async fn serves_tail_of_a_container_log() {
        let scratch = Scratch::new("tail");
        std::fs::write(
            scratch.0.join("logs/pods/default_web-0_app.log"),
            "one\ntwo\nthree\n",
        )
        .expect("log file");
        let shutdown = CancellationToken::new();
        let base = start(&scratch, &shutdown).await;
        let client = client();
        let get = |path: &str| client.get(format!("{base}{path}")).send();

        let health = get("/healthz").await.expect("healthz");
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.expect("body"), "ok");

        let tail = get("/containerLogs/default/web-0/app?tailLines=2")
            .await
            .expect("logs");
        assert_eq!(tail.status(), 200);
        assert_eq!(tail.text().await.expect("body"), "two\nthree\n");

        let limited = get("/containerLogs/default/web-0/app?limitBytes=5")
            .await
            .expect("logs");
        assert_eq!(limited.text().await.expect("body"), "one\nt");

        for (path, status) in [
            ("/containerLogs/default/web-0/other", 404),
            ("/containerLogs/default/web-0/app?previous=true", 400),
            ("/containerLogs/default/web-0/app?tailLines=-1", 400),
            ("/containerLogs/default/a%2Fb/app", 400),
            ("/containerLogs/default/web-0", 404),
            ("/metrics", 404),
        ] {
            let response = get(path).await.expect("answer");
            assert_eq!(response.status(), status, "{path}");
            assert!(
                !response.text().await.expect("body").is_empty(),
                "{path} has a message"
            );
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn follow_streams_appended_lines() {
        let scratch = Scratch::new("follow");
        let log = scratch.0.join("logs/pods/default_web-0_app.log");
        std::fs::write(&log, "old\nlast\n").expect("log file");
        let shutdown = CancellationToken::new();
        let base = start(&scratch, &shutdown).await;
        let mut response = client()
            .get(format!(
                "{base}/containerLogs/default/web-0/app?follow=true&tailLines=1"
            ))
            .send()
            .await
            .expect("logs");
        assert_eq!(response.status(), 200);
        let mut seen = String::new();
        let appended = async {
            while !seen.contains("last\n") {
                let chunk = response.chunk().await.expect("chunk").expect("open stream");
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
            {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("log file");
                file.write_all(b"new\n").expect("append");
            }
            while !seen.contains("new\n") {
                let chunk = response.chunk().await.expect("chunk").expect("open stream");
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        };
        tokio::time::timeout(Duration::from_secs(10), appended)
            .await
            .expect("the appended line arrives");
        assert_eq!(seen, "last\nnew\n");
        // Shutdown ends the followed stream.
        shutdown.cancel();
        let end = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("stream ends at shutdown");
        assert!(matches!(end, Ok(None)), "{end:?}");
    }
}
