//! `kmsfs kms serve` beyond one machine (issue 23): HTTPS with the CA it makes, named to
//! clients by AWS_CA_BUNDLE, end to end through `kmsfs init` and a mount; plain HTTP off
//! loopback refused without `--insecure-http`; `x-amz-target` must be signed; a signed
//! request replayed is refused.

#[path = "kmskit/mod.rs"]
mod kmskit;
mod mountkit;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use kmsfs::kms::engine::Engine;
use kmskit::{TestServer, ACCESS_KEY, SECRET_KEY};
use mountkit::{bin, KmsServer, TestVolume};

#[test]
fn init_and_mount_over_https_with_the_ca_the_server_made() {
    let tmp = tempfile::tempdir().unwrap();
    let kms = KmsServer::start(tmp.path(), 0, &["--tls"]);
    assert!(kms.url.starts_with("https://127.0.0.1:"), "{}", kms.url);
    let ca = kms.ca_bundle.clone().unwrap();
    assert!(fs::read_to_string(&ca)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let key = kms.create_key();
    let v = TestVolume::with_init_args(&["--kms-endpoint", &kms.url, "--key", &key], kms.env());
    {
        let _m = v.mount();
        fs::write(v.p("over-tls"), b"sealed under a key fetched over HTTPS").unwrap();
    }
    let _m = v.mount_with(&["--key-ttl", "0"]);
    assert_eq!(
        fs::read(v.p("over-tls")).unwrap(),
        b"sealed under a key fetched over HTTPS"
    );

    // Without the CA bundle the client does not trust the server.
    let mut env = kms.env();
    env.retain(|(k, _)| k != "AWS_CA_BUNDLE");
    let out = Command::new(bin())
        .args(["kms", "list-keys", "--endpoint", &kms.url])
        .envs(env)
        .env("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn a_restarted_server_keeps_its_ca_and_plain_http_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = KmsServer::start(tmp.path(), 0, &["--tls"]);
    let ca = fs::read(first.ca_bundle.as_ref().unwrap()).unwrap();
    first.stop();
    let second = KmsServer::start(tmp.path(), 0, &["--tls"]);
    assert_eq!(fs::read(second.ca_bundle.as_ref().unwrap()).unwrap(), ca);
    // The new server's certificate is signed by the CA kept: clients need no new bundle.
    second.create_key();

    let state = tmp.path().join("other-state.json");
    let out = Command::new(bin())
        .args(["kms", "serve", "--listen", "0.0.0.0:0", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refusing plain HTTP")
            && err.contains("--tls")
            && err.contains("--insecure-http"),
        "{err}"
    );

    let mut child = Command::new(bin())
        .args([
            "kms",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure-http",
            "--state",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on http://0.0.0.0:"), "{line}");
}

/// A ListKeys request signed now by the test key, as raw HTTP/1.1 bytes for `host`;
/// `x-amz-target` is signed only when `sign_target`.
fn signed_list_keys(host: &str, sign_target: bool) -> Vec<u8> {
    let identity: Identity = Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "t").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("kms")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let url = format!("http://{host}/");
    let target = ("x-amz-target", "TrentService.ListKeys");
    let mut signed = vec![("content-type", "application/x-amz-json-1.1")];
    if sign_target {
        signed.push(target);
    }
    let body = b"{}";
    let signable = SignableRequest::new(
        "POST",
        &url,
        signed.iter().copied(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instr, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = format!("POST / HTTP/1.1\r\nhost: {host}\r\ncontent-length: 2\r\n");
    let mut headers = signed.clone();
    if !sign_target {
        headers.push(target);
    }
    for (k, v) in headers.into_iter().chain(instr.headers()) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n{}");
    req.into_bytes()
}

/// Sends `request` on `conn` and reads one answer: (status, body).
fn exchange(conn: &mut TcpStream, request: &[u8]) -> (u16, String) {
    conn.write_all(request).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let code = status.split(' ').nth(1).unwrap().parse().unwrap();
    (code, String::from_utf8(body).unwrap())
}

#[test]
fn an_unsigned_x_amz_target_is_refused() {
    let s = TestServer::start(Engine::in_memory());
    let host = s.handle.addr.to_string();
    let mut conn = TcpStream::connect(s.handle.addr).unwrap();
    let (status, body) = exchange(&mut conn, &signed_list_keys(&host, false));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("IncompleteSignatureException"), "{body}");
    assert!(
        body.contains("'x-amz-target' must be a 'SignedHeader'"),
        "{body}"
    );
    let (status, body) = exchange(&mut conn, &signed_list_keys(&host, true));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_replayed_request_is_refused() {
    let s = TestServer::start(Engine::in_memory());
    let host = s.handle.addr.to_string();
    let request = signed_list_keys(&host, true);
    let mut first = TcpStream::connect(s.handle.addr).unwrap();
    assert_eq!(exchange(&mut first, &request).0, 200);
    // A twin at once (two SDK clients making the same call in the same second sign the
    // same bytes) passes.
    let mut twin = TcpStream::connect(s.handle.addr).unwrap();
    assert_eq!(exchange(&mut twin, &request).0, 200);
    std::thread::sleep(kmsfs::kms::server::replay::REPEAT_GRACE + Duration::from_millis(200));
    for conn in [&mut first, &mut TcpStream::connect(s.handle.addr).unwrap()] {
        let (status, body) = exchange(conn, &request);
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("InvalidSignatureException") && body.contains("replay"),
            "{body}"
        );
    }
    // The client's own calls, equal or not, are never taken for replays.
    let kms = s.client();
    for _ in 0..20 {
        kms.call_json::<_, serde_json::Value>("ListKeys", &serde_json::json!({}))
            .unwrap();
    }
}
