//! The local KMS over HTTP: AWS KMS's JSON 1.1 protocol (`POST /`,
//! `X-Amz-Target: TrentService.<Operation>`), SigV4-checked against a credentials table,
//! with an optional hash-chained audit log and fault injection for client tests.
//!
//! [`serve`] takes an already-bound listener (tests bind `127.0.0.1:0`); [`spawn`] runs it
//! on a runtime of its own thread and returns a handle that stops it on drop. The command
//! line only binds and calls these. Hostile input (bad JSON or base64, unknown targets,
//! oversized bodies) is answered with a 400 JSON error and the server keeps serving.
//! With [`Server::with_tls`] it speaks HTTPS only (`tls.rs`); a signed request is taken
//! once (`replay.rs`).

mod principals;
mod record;
pub mod replay;
mod request;
pub mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use super::engine::Engine;
use super::sigv4::CredentialTable;
use crate::audit::chain::ChainWriter;
pub use principals::Principals;

/// Largest request body read (AWS's largest inputs are far smaller).
pub const MAX_BODY_LEN: usize = 1 << 20;
/// Beyond this much an oversized body is not drained; the connection is closed instead.
const MAX_DRAIN_LEN: usize = 256 << 20;
/// The content type of every request and answer.
const JSON: &str = "application/x-amz-json-1.1";

/// Settings and shared state of a running server.
pub struct Server {
    engine: Arc<Engine>,
    credentials: CredentialTable,
    principals: Principals,
    audit: Option<ChainWriter>,
    tls: Option<TlsAcceptor>,
    replay: replay::SeenSignatures,
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
            principals: Principals::default(),
            audit: None,
            tls: None,
            replay: replay::SeenSignatures::default(),
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

    /// Names the principal of each access key (from the credentials file's text, which
    /// the credentials table came from); without it, a key's principal is
    /// `user/ACCESS_KEY_ID`.
    pub fn with_principals(mut self, principals: Principals) -> Self {
        self.principals = principals;
        self
    }

    /// Appends one chained record per request to `audit`.
    pub fn with_audit(mut self, audit: ChainWriter) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Speaks HTTPS through `tls` on every connection (`--tls`, `--tls-cert`).
    pub fn with_tls(mut self, tls: TlsAcceptor) -> Self {
        self.tls = Some(tls);
        self
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
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
            match server.tls.clone() {
                None => serve_connection(stream, server, peer).await,
                Some(tls) => {
                    // As long as a request's headers may take: a silent client holds
                    // nothing for longer.
                    let accepted =
                        tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(stream)).await;
                    match accepted {
                        Ok(Ok(stream)) => serve_connection(stream, server, peer).await,
                        Ok(Err(e)) => eprintln!("kmsfs kms: TLS handshake with {peer} failed: {e}"),
                        Err(_) => eprintln!("kmsfs kms: TLS handshake with {peer} timed out"),
                    }
                }
            }
        });
    }
}

/// How long a request's headers (or a TLS handshake) may take to arrive.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers the requests of one connection.
async fn serve_connection<IO>(io: IO, server: Arc<Server>, peer: SocketAddr)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| request::handle(server.clone(), peer, req));
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// A server running on its own thread; dropping it stops the server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    scheme: &'static str,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// `http://HOST:PORT`, or `https://` with TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
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
    let scheme = server.scheme();
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
        scheme,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}
