//! Answering one request: read its body, check its signature and permission, run it on
//! the engine, append its audit record, and answer in AWS's JSON 1.1 form. The server's
//! settings and counters are [`super::Server`]'s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::{record, InFlight, Server, JSON, MAX_BODY_LEN, MAX_DRAIN_LEN};
use crate::kms::engine::state::{format_uuid, new_uuid};
use crate::kms::engine::{Caller, Engine};
use crate::kms::sigv4;
use crate::kms::KmsError;

/// A JSON 1.1 answer carrying the request id, as AWS sends it.
fn json_response(status: u16, request_id: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
        .header("content-type", JSON)
        .header("x-amzn-requestid", request_id)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// AWS's error answer: `{"__type", "message"}` with the matching status and
/// `x-amzn-errortype`.
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
pub(super) async fn handle(
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
    )
    .and_then(|key| not_replayed(&server, &parts.headers).map(|()| key));
    let claimed = sigv4::claimed_access_key(&parts.headers);
    let principal = caller
        .as_deref()
        .ok()
        .map(|key| server.principals.caller(key));
    let outcome = match (&caller, &principal) {
        (Ok(key), Some(who)) => {
            let outcome =
                authorize_and_run(&server, key, who, &parts.method, &operation, &body).await;
            if let Err(e @ KmsError::AccessDenied { .. }) = &outcome {
                log_refusal(&received, &who.arn, e);
            }
            outcome
        }
        (Err(e), _) => {
            let who = format!("access key {}", claimed.as_deref().unwrap_or("none"));
            log_refusal(&received, &who, e);
            Err(e.clone())
        }
        (Ok(_), None) => unreachable!("an authenticated key has a principal"),
    };
    let access_key_id = caller.as_deref().ok().or(claimed.as_deref());
    if let Err(e) = audit(
        &server,
        &received,
        access_key_id,
        principal.as_ref(),
        &outcome,
    ) {
        return Ok(error_response(&e, &request_id));
    }
    Ok(match outcome {
        Ok(b) => json_response(200, &request_id, b),
        Err(e) => error_response(&e, &request_id),
    })
}

/// Refuses a signed request this server has already taken (`replay.rs`); called once
/// its signature checked out.
fn not_replayed(server: &Server, headers: &http::HeaderMap) -> Result<(), KmsError> {
    let (signed_secs, signature) = sigv4::signature_id(headers)
        .ok_or_else(|| KmsError::internal("a verified request has no signature"))?;
    let now = SystemTime::now();
    server
        .replay
        .check(signed_secs, signature, now, std::time::Instant::now())
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

/// One stderr line for a refused request; `who` is the principal's ARN, or the access key
/// an unauthenticated request claimed.
fn log_refusal(received: &Received<'_>, who: &str, e: &KmsError) {
    eprintln!(
        "kmsfs kms: refused {} request {} from {} ({}): {}: {}",
        if received.operation.is_empty() {
            "?"
        } else {
            received.operation
        },
        received.id,
        received.peer,
        who,
        e.aws_code(),
        e.message()
    );
}

/// Runs the operation for `who` if its access key's `kms_allowed_operations` let it
/// call it (the engine then checks the key's policy and grants).
async fn authorize_and_run(
    server: &Arc<Server>,
    access_key: &str,
    who: &Caller,
    method: &http::Method,
    operation: &str,
    body: &[u8],
) -> Result<Vec<u8>, KmsError> {
    let allowed = server.credentials.0.get(access_key);
    if !allowed.is_some_and(|c| c.may_call(operation)) {
        return Err(KmsError::AccessDenied {
            code: "AccessDeniedException".into(),
            message: format!(
                "User: {} is not authorized to perform: kms:{operation} in region {} because no identity-based policy allows the kms:{operation} action",
                who.arn, server.region
            ),
        });
    }
    run_operation(server, who, method, operation, body).await
}

/// Appends the request's record to the audit log, when the server keeps one and the
/// request named an operation that was not throttled. `Err` (to answer with) when the
/// record could not be written.
fn audit(
    server: &Server,
    received: &Received<'_>,
    access_key_id: Option<&str>,
    principal: Option<&Caller>,
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
        principal,
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

/// Runs an authorized request on the engine, after any injected latency or failure.
async fn run_operation(
    server: &Arc<Server>,
    who: &Caller,
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
        let run = std::panic::AssertUnwindSafe(|| server.engine.call_as(who, operation, body));
        return std::panic::catch_unwind(run)
            .unwrap_or_else(|_| Err(KmsError::internal("operation panicked")));
    }
    let engine = server.engine.clone();
    let op = operation.to_owned();
    let body = body.to_vec();
    let who = who.clone();
    tokio::task::spawn_blocking(move || engine.call_as(&who, &op, &body))
        .await
        .unwrap_or_else(|_| Err(KmsError::internal("operation panicked")))
}
