//! The local KMS over HTTP: AWS KMS's JSON 1.1 protocol (`POST /`,
//! `X-Amz-Target: TrentService.<Operation>`), SigV4-checked against a credentials table,
//! with an optional hash-chained audit log and fault injection for client tests.
//!
//! [`serve`] takes an already-bound listener (tests bind `127.0.0.1:0`); [`spawn`] runs it
//! on a runtime of its own thread and returns a handle that stops it on drop. The command
//! line only binds and calls these. Hostile input (bad JSON or base64, unknown targets,
//! oversized bodies) is answered with a 400 JSON error and the server keeps serving.

mod record;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;

use super::engine::state::{format_uuid, new_uuid};
use super::engine::Engine;
use super::sigv4::{self, CredentialTable};
use super::KmsError;
use crate::audit::chain::ChainWriter;

/// Largest request body read (AWS's largest inputs are far smaller).
pub const MAX_BODY_LEN: usize = 1 << 20;
/// Beyond this much an oversized body is not drained; the connection is closed instead.
const MAX_DRAIN_LEN: usize = 256 << 20;
const JSON: &str = "application/x-amz-json-1.1";

/// Settings and shared state of a running server.
pub struct Server {
    engine: Arc<Engine>,
    credentials: CredentialTable,
    audit: Option<ChainWriter>,
    region: String,
    latency_ms: AtomicU64,
    fail_rate_bits: AtomicU64,
    fail_next: AtomicU64,
    rng: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
}

/// Counts a request as in flight while it lives.
struct InFlight<'a>(&'a Server);

impl<'a> InFlight<'a> {
    fn new(server: &'a Server) -> Self {
        let now = server.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        server.most_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(server)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Server {
    pub fn new(engine: Arc<Engine>, credentials: CredentialTable) -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Server {
            engine,
            credentials,
            audit: None,
            region: super::engine::state::DEFAULT_REGION.into(),
            latency_ms: AtomicU64::new(0),
            fail_rate_bits: AtomicU64::new(0f64.to_bits()),
            fail_next: AtomicU64::new(0),
            rng: AtomicU64::new(u64::from_le_bytes(seed) | 1),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
        }
    }

    /// Appends one chained record per request to `audit`.
    pub fn with_audit(mut self, audit: ChainWriter) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Delays every answer by `latency` (`--latency`).
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// Answers this fraction of authenticated requests with `ThrottlingException`
    /// (`--fail-rate`); `seed` makes the sequence of failures reproducible.
    pub fn set_fail_rate(&self, rate: f64, seed: Option<u64>) {
        self.fail_rate_bits
            .store(rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
        if let Some(s) = seed {
            self.rng.store(s | 1, Ordering::Relaxed);
        }
    }

    /// Throttles exactly the next `n` authenticated requests (deterministic tests).
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::Relaxed);
    }

    /// Requests received so far (whatever their outcome), so tests can count retries.
    pub fn requests_seen(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The most requests ever being answered at the same moment (tests check that a
    /// client really sends its calls in parallel).
    pub fn most_in_flight(&self) -> u64 {
        self.most_in_flight.load(Ordering::Relaxed)
    }

    /// Starts [`Server::most_in_flight`] again from the requests in flight now.
    pub fn reset_most_in_flight(&self) {
        let now = self.in_flight.load(Ordering::Relaxed);
        self.most_in_flight.store(now, Ordering::Relaxed);
    }

    fn should_fail(&self) -> bool {
        let took = self
            .fail_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if took {
            return true;
        }
        let rate = f64::from_bits(self.fail_rate_bits.load(Ordering::Relaxed));
        if rate <= 0.0 {
            return false;
        }
        // xorshift64: cheap, and reproducible under a seed.
        let x = self
            .rng
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mut x| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Some(x)
            })
            .expect("always updates");
        ((x >> 11) as f64 / (1u64 << 53) as f64) < rate
    }
}

fn json_response(status: u16, request_id: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
        .header("content-type", JSON)
        .header("x-amzn-requestid", request_id)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn error_response(e: &KmsError, request_id: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"__type": e.aws_code(), "message": e.message()});
    let mut r = json_response(e.http_status(), request_id, body.to_string().into_bytes());
    if let Ok(v) = e.aws_code().parse() {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r
}

/// Reads at most [`MAX_BODY_LEN`] bytes; `Err` carries the size seen when over the limit.
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, (usize, bool)> {
    let mut out = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err((seen, false));
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY_LEN {
                out.extend_from_slice(&data);
            } else if seen > MAX_DRAIN_LEN {
                return Err((seen, false));
            }
        }
    }
    if seen > MAX_BODY_LEN {
        Err((seen, true))
    } else {
        Ok(out)
    }
}

/// What the log line and the audit record of one request say about it.
struct Received<'a> {
    id: &'a str,
    peer: SocketAddr,
    /// Empty when the request names none.
    operation: &'a str,
    body: &'a [u8],
}

/// Answers one request: read its body, check its signature and permission, run it, and
/// keep its audit record.
async fn handle(
    server: Arc<Server>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    server.requests.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight::new(&server);
    let request_id = format_uuid(&new_uuid());
    let (parts, body) = req.into_parts();
    let operation = operation_of(&parts.headers);
    let body = match read_body(body).await {
        Ok(b) => b,
        Err((seen, drained)) => return Ok(body_too_large(seen, drained, &request_id)),
    };
    let received = Received {
        id: &request_id,
        peer,
        operation: &operation,
        body: &body,
    };
    let caller = sigv4::verify(
        &server.credentials,
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &parts.headers,
        &body,
        SystemTime::now(),
    );
    let claimed = sigv4::claimed_access_key(&parts.headers);
    let outcome = match &caller {
        Err(e) => {
            log_refusal(&received, claimed.as_deref(), e);
            Err(e.clone())
        }
        Ok(key) => authorize_and_run(&server, key, &parts.method, &operation, &body).await,
    };
    let access_key_id = caller.as_deref().ok().or(claimed.as_deref());
    if let Err(e) = audit(&server, &received, access_key_id, &outcome) {
        return Ok(error_response(&e, &request_id));
    }
    Ok(match outcome {
        Ok(b) => json_response(200, &request_id, b),
        Err(e) => error_response(&e, &request_id),
    })
}

/// The operation an `X-Amz-Target: TrentService.<Operation>` header names, or "".
fn operation_of(headers: &http::HeaderMap) -> String {
    headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("TrentService."))
        .unwrap_or("")
        .to_owned()
}

/// The answer to a body over [`MAX_BODY_LEN`]; it closes the connection when the rest of
/// the body was not drained.
fn body_too_large(seen: usize, drained: bool, request_id: &str) -> Response<Full<Bytes>> {
    let e = KmsError::validation(format!(
        "request body of at least {seen} bytes exceeds the limit of {MAX_BODY_LEN} bytes"
    ));
    let mut r = error_response(&e, request_id);
    if !drained {
        r.headers_mut()
            .insert("connection", http::HeaderValue::from_static("close"));
    }
    r
}

/// One stderr line for a request whose signature was refused.
fn log_refusal(received: &Received<'_>, claimed: Option<&str>, e: &KmsError) {
    eprintln!(
        "kmsfs kms: refused {} request {} from {} (access key {}): {}: {}",
        if received.operation.is_empty() {
            "?"
        } else {
            received.operation
        },
        received.id,
        received.peer,
        claimed.unwrap_or("none"),
        e.aws_code(),
        e.message()
    );
}

/// Runs the operation if `access_key` may call it.
async fn authorize_and_run(
    server: &Arc<Server>,
    access_key: &str,
    method: &http::Method,
    operation: &str,
    body: &[u8],
) -> Result<Vec<u8>, KmsError> {
    let account = super::engine::state::DEFAULT_ACCOUNT;
    sigv4::authorize(
        &server.credentials,
        access_key,
        operation,
        &server.region,
        account,
    )?;
    run_operation(server, method, operation, body).await
}

/// Appends the request's record to the audit log, when the server keeps one and the
/// request named an operation that was not throttled. `Err` (to answer with) when the
/// record could not be written.
fn audit(
    server: &Server,
    received: &Received<'_>,
    access_key_id: Option<&str>,
    outcome: &Result<Vec<u8>, KmsError>,
) -> Result<(), KmsError> {
    let Some(log) = &server.audit else {
        return Ok(());
    };
    if received.operation.is_empty() || matches!(outcome, Err(KmsError::Throttled(_))) {
        return Ok(());
    }
    let event = record::Event {
        time: SystemTime::now(),
        operation: received.operation,
        region: &server.region,
        access_key_id,
        source_ip: received.peer.ip().to_string(),
        request_id: received.id,
        parameters: record::logged_parameters(received.body),
        arns: outcome
            .as_ref()
            .map(|answer| record::answer_arns(answer))
            .unwrap_or_default(),
        error: outcome.as_ref().err(),
    };
    match log.append(event.into_record()) {
        Ok(_hash) => Ok(()),
        Err(e) => {
            eprintln!("kmsfs kms: cannot write the audit log: {e}");
            Err(KmsError::internal("the audit log could not be written"))
        }
    }
}

async fn run_operation(
    server: &Arc<Server>,
    method: &http::Method,
    operation: &str,
    body: &[u8],
) -> Result<Vec<u8>, KmsError> {
    let latency = server.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if method != http::Method::POST || operation.is_empty() {
        return Err(KmsError::Validation {
            code: "UnknownOperationException".into(),
            message: "expected POST with X-Amz-Target: TrentService.<Operation>".into(),
        });
    }
    if server.should_fail() {
        return Err(KmsError::Throttled(
            "Rate exceeded (injected by --fail-rate)".into(),
        ));
    }
    if Engine::only_reads(operation) {
        // Data-key and other read-only operations take microseconds: a hop to the
        // blocking pool (two thread switches, and new threads while a burst lasts) cost
        // more than the operation. They may wait here for the engine's lock while a
        // writing operation saves the state (milliseconds, rarely).
        let run = std::panic::AssertUnwindSafe(|| server.engine.call(operation, body));
        return std::panic::catch_unwind(run)
            .unwrap_or_else(|_| Err(KmsError::internal("operation panicked")));
    }
    let engine = server.engine.clone();
    let op = operation.to_owned();
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || engine.call(&op, &body))
        .await
        .unwrap_or_else(|_| Err(KmsError::internal("operation panicked")))
}

/// Serves connections from `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, never exit.
                    eprintln!("kmsfs kms: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let server = server.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(server.clone(), peer, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A server running on its own thread; dropping it stops the server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// `http://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Blocks until the server stops (it only stops when the handle is dropped elsewhere
    /// or the process ends, so this is for the command line).
    pub fn wait(mut self) -> io::Result<()> {
        let _keep = self.shutdown.take();
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs [`serve`] on a new thread with its own runtime.
pub fn spawn(listener: std::net::TcpListener, server: Arc<Server>) -> io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kms-server")
        .enable_all()
        .build()?;
    let (tx, rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("kms-server".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve(listener, server, async {
                    let _ = rx.await;
                })
                .await
            })
        })?;
    Ok(ServerHandle {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}
