//! The HTTP side of the local KMS: authentication, hostile input, retries and timeouts
//! through the client, restarts, the audit log, and the `kmsfs kms` command line.

#[path = "kmskit/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use common::{client_for, TestServer, ACCESS_KEY, SECRET_KEY};
use kmsfs::audit::chain::{verify, ChainWriter};
use kmsfs::key_cache::KeyCache;
use kmsfs::kms::engine::Engine;
use kmsfs::kms::metered::MeteredKms;
use kmsfs::kms::server::Server;
use kmsfs::kms::sigv4::CredentialTable;
use kmsfs::kms::{EncryptionContext, GeneratedDataKey, Kms, KmsError};

fn no_ctx() -> EncryptionContext {
    EncryptionContext::new()
}

fn create_key(kms: &kmsfs::kms::client::HttpKms) -> String {
    let v: serde_json::Value = kms.call_json("CreateKey", &serde_json::json!({})).unwrap();
    v["KeyMetadata"]["Arn"].as_str().unwrap().to_owned()
}

/// Sends one request signed at `time` with our own signer, bypassing the client.
fn send_signed_at(url: &str, time: SystemTime, body: &str) -> (u16, String) {
    let identity: Identity = Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "t").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("kms")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let url = format!("{url}/");
    let headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "TrentService.ListKeys"),
    ];
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instr, _) = sign(signable, &params).unwrap().into_parts();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().post(&url).body(body.to_owned());
        for (k, v) in headers.iter().copied().chain(instr.headers()) {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

#[test]
fn signatures_are_checked() {
    let s = TestServer::start(Engine::in_memory());
    let good = s.client();
    create_key(&good);
    let code = |kms: kmsfs::kms::client::HttpKms| {
        let e = kms
            .call_json::<_, serde_json::Value>("ListKeys", &serde_json::json!({}))
            .unwrap_err();
        assert!(!e.retryable(), "{e}");
        e.aws_code().to_owned()
    };
    let bad_secret = client_for(&s.url(), ACCESS_KEY, "wrong", |_| {});
    assert_eq!(code(bad_secret), "InvalidSignatureException");
    let unknown = client_for(&s.url(), "AKIAUNKNOWN", SECRET_KEY, |_| {});
    assert_eq!(code(unknown), "UnrecognizedClientException");

    let (status, body) = send_signed_at(&s.url(), SystemTime::now(), "{}");
    assert_eq!(status, 200, "{body}");
    let skewed = SystemTime::now() - Duration::from_secs(16 * 60);
    let (status, body) = send_signed_at(&s.url(), skewed, "{}");
    assert_eq!(status, 400);
    assert!(
        body.contains("InvalidSignatureException") && body.contains("Signature expired"),
        "{body}"
    );
    let future = SystemTime::now() + Duration::from_secs(16 * 60);
    let (_, body) = send_signed_at(&s.url(), future, "{}");
    assert!(body.contains("InvalidSignatureException"), "{body}");
    let within = SystemTime::now() - Duration::from_secs(10 * 60);
    assert_eq!(send_signed_at(&s.url(), within, "{}").0, 200);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(s.url())
            .header("x-amz-target", "TrentService.ListKeys")
            .body("{}")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 403);
    assert!(
        body.contains("MissingAuthenticationTokenException"),
        "{body}"
    );
}

#[test]
fn restricted_access_keys_get_access_denied() {
    let ini = format!(
        "{}[mount]\naws_access_key_id = AKIAMOUNT\naws_secret_access_key = m\nkms_allowed_operations = Decrypt, GenerateDataKey\n",
        common::credentials_ini()
    );
    let server = Server::new(
        Arc::new(Engine::in_memory()),
        CredentialTable::from_ini(&ini),
    );
    let s = TestServer::start_with(server);
    let arn = create_key(&s.client());
    let mount = client_for(&s.url(), "AKIAMOUNT", "m", |c| c.max_attempts = 3);
    let g = mount.generate_data_key(&arn, &no_ctx()).unwrap();
    mount.decrypt(&arn, &g.wrapped, &no_ctx()).unwrap();
    let before = s.server.requests_seen();
    let e = mount
        .call_json::<_, serde_json::Value>("DisableKey", &serde_json::json!({"KeyId": arn}))
        .unwrap_err();
    assert_eq!(e.aws_code(), "AccessDeniedException");
    assert!(!e.retryable());
    assert_eq!(s.server.requests_seen() - before, 1);
    s.client().generate_data_key(&arn, &no_ctx()).unwrap();
}

#[test]
fn hostile_input_gets_400_json_and_the_server_keeps_serving() {
    let s = TestServer::start(Engine::in_memory());
    let kms = s.client_with(|c| c.max_attempts = 1);
    let arn = create_key(&kms);
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("Decrypt", b"{not json".to_vec(), "SerializationException"),
        (
            "Decrypt",
            br#"{"CiphertextBlob":"%%%"}"#.to_vec(),
            "SerializationException",
        ),
        ("Decrypt", b"{}".to_vec(), "ValidationException"),
        (
            "NoSuchOperation",
            b"{}".to_vec(),
            "UnknownOperationException",
        ),
        ("Encrypt", vec![b' '; 100 << 20], "ValidationException"),
    ];
    for (op, body, want) in cases {
        let len = body.len();
        let e = kms.call(op, body).unwrap_err();
        assert_eq!(e.aws_code(), want, "{op} with {len} bytes: {e}");
        assert_eq!(e.http_status(), 400);
        let g = kms.generate_data_key(&arn, &no_ctx()).unwrap();
        kms.decrypt(&arn, &g.wrapped, &no_ctx()).unwrap();
    }
}

#[test]
fn throttling_is_retried_until_it_succeeds() {
    let s = TestServer::start(Engine::in_memory());
    let kms = s.client_with(|c| c.max_attempts = 4);
    let arn = create_key(&kms);
    let before = s.server.requests_seen();
    s.server.fail_next(3);
    kms.generate_data_key(&arn, &no_ctx()).unwrap();
    assert_eq!(s.server.requests_seen() - before, 4);
}

#[test]
fn retries_are_bounded() {
    let s = TestServer::start(Engine::in_memory());
    let kms = s.client_with(|c| c.max_attempts = 3);
    let arn = create_key(&kms);
    let before = s.server.requests_seen();
    s.server.fail_next(10);
    let e = kms.generate_data_key(&arn, &no_ctx()).unwrap_err();
    assert!(matches!(e, KmsError::Throttled(_)), "{e}");
    assert!(e.retryable());
    assert_eq!(s.server.requests_seen() - before, 3);
}

#[test]
fn non_retryable_errors_are_not_retried() {
    let s = TestServer::start(Engine::in_memory());
    let kms = s.client_with(|c| c.max_attempts = 5);
    let arn = create_key(&kms);
    let g = kms.generate_data_key(&arn, &no_ctx()).unwrap();
    let before = s.server.requests_seen();
    let e = kms.decrypt(&arn, &g.wrapped, &EncryptionContext::new().with("a", "b"));
    assert!(matches!(e, Err(KmsError::InvalidCiphertext(_))));
    let e = kms
        .generate_data_key("alias/missing", &no_ctx())
        .unwrap_err();
    assert!(matches!(e, KmsError::NotFound(_)));
    assert_eq!(s.server.requests_seen() - before, 2);
}

#[test]
fn seeded_fail_rate_is_absorbed_by_retries() {
    let s = TestServer::start(Engine::in_memory());
    let kms = s.client_with(|c| c.max_attempts = 10);
    let arn = create_key(&kms);
    s.server.set_fail_rate(0.5, Some(42));
    let before = s.server.requests_seen();
    for _ in 0..20 {
        let g = kms.generate_data_key(&arn, &no_ctx()).unwrap();
        kms.decrypt(&arn, &g.wrapped, &no_ctx()).unwrap();
    }
    assert!(
        s.server.requests_seen() - before > 40,
        "some requests were throttled"
    );
}

/// The data-key pool asks for its keys in batches: the HTTP client must send a batch's
/// calls at once, and every decorator between the pool and the client must pass the
/// batch on (one that did not would send them one after another).
#[test]
fn a_batch_of_data_keys_is_asked_for_at_once() {
    let s = TestServer::start(Engine::in_memory());
    let arn = create_key(&s.client());
    let client: Arc<dyn Kms> = Arc::new(s.client());
    let metered = MeteredKms::new(client.clone());
    let cached = KeyCache::new(client.clone(), 64, Duration::from_secs(60));
    let contexts: Vec<EncryptionContext> = (0..8)
        .map(|i| EncryptionContext::new().with("file", &i.to_string()))
        .collect();
    let layers: [(&str, &dyn Kms); 3] = [
        ("the client", &client),
        ("the metered KMS", &metered),
        ("the key cache", &cached),
    ];
    for (name, kms) in layers {
        let before = s.server.requests_seen();
        s.server.reset_most_in_flight();
        s.server.set_latency(Duration::from_millis(300));
        let mut keys: Vec<Option<GeneratedDataKey>> = (0..contexts.len()).map(|_| None).collect();
        kms.generate_data_keys(&arn, &contexts, &mut |i, key| {
            assert!(keys[i].is_none(), "{name}: key {i} given twice");
            keys[i] = Some(key.unwrap());
        });
        s.server.set_latency(Duration::ZERO);
        assert_eq!(s.server.requests_seen() - before, 8, "{name}");
        // Each key unwraps under the context of its index only.
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref().unwrap();
            let back = client.decrypt(&arn, &key.wrapped, &contexts[i]).unwrap();
            assert!(back.same_as(&key.key), "{name}: key {i}");
            let other = &contexts[(i + 1) % contexts.len()];
            assert!(client.decrypt(&arn, &key.wrapped, other).is_err(), "{name}");
        }
        assert!(
            s.server.most_in_flight() >= 8,
            "{name}: at most {} requests were in flight at once",
            s.server.most_in_flight()
        );
    }
    assert_eq!(metered.stats().generate_data_key, 8);
}

#[test]
fn timeouts_fire_and_are_retryable() {
    let s = TestServer::start(Engine::in_memory());
    let arn = create_key(&s.client());
    s.server.set_latency(Duration::from_secs(3));
    let kms = s.client_with(|c| {
        c.max_attempts = 2;
        c.attempt_timeout = Duration::from_millis(200);
    });
    let before = s.server.requests_seen();
    let e = kms.generate_data_key(&arn, &no_ctx()).unwrap_err();
    assert!(matches!(e, KmsError::Timeout(_)), "{e}");
    assert!(e.retryable());
    assert_eq!(s.server.requests_seen() - before, 2);
    s.server.set_latency(Duration::ZERO);
    kms.generate_data_key(&arn, &no_ctx()).unwrap();
}

#[test]
fn connection_refused_is_unavailable_and_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kms = client_for(
        &format!("http://127.0.0.1:{port}"),
        ACCESS_KEY,
        SECRET_KEY,
        |c| c.max_attempts = 2,
    );
    let e = kms.generate_data_key("alias/x", &no_ctx()).unwrap_err();
    assert!(matches!(e, KmsError::Unavailable { .. }), "{e}");
    assert!(e.retryable());
}

#[test]
fn keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("kms-state.json");
    let c = EncryptionContext::new().with("file", "1");
    let (arn, old, new) = {
        let s = TestServer::start(Engine::open(&state).unwrap());
        let kms = s.client();
        let arn = create_key(&kms);
        let alias = serde_json::json!({"AliasName": "alias/keep", "TargetKeyId": arn});
        let _: serde_json::Value = kms.call_json("CreateAlias", &alias).unwrap();
        let old = kms.generate_data_key(&arn, &c).unwrap();
        let _: serde_json::Value = kms
            .call_json("RotateKeyOnDemand", &serde_json::json!({"KeyId": arn}))
            .unwrap();
        let new = kms.generate_data_key("alias/keep", &c).unwrap();
        (arn, old, new)
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let s = TestServer::start(Engine::open(&state).unwrap());
    let kms = s.client();
    for g in [&old, &new] {
        let k = kms.decrypt(&arn, &g.wrapped, &c).unwrap();
        assert_eq!(k.expose_secret(), g.key.expose_secret());
        kms.decrypt("alias/keep", &g.wrapped, &c).unwrap();
    }
}

#[test]
fn corrupt_state_is_an_error_not_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("kms-state.json");
    drop(Engine::open(&state).unwrap());
    let mut bytes = std::fs::read(&state).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&state, &bytes).unwrap();
    let err = Engine::open(&state)
        .err()
        .expect("corrupt state refused")
        .to_string();
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(std::fs::read(&state).unwrap(), bytes, "left untouched");
}

#[test]
fn audit_log_is_chained_and_holds_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let server = Server::new(
        Arc::new(Engine::in_memory()),
        CredentialTable::from_ini(&common::credentials_ini()),
    )
    .with_audit(ChainWriter::open(&log).unwrap());
    let s = TestServer::start_with(server);
    let kms = s.client();
    let arn = create_key(&kms);
    let c = EncryptionContext::new().with("file", "/x");
    let g = kms.generate_data_key(&arn, &c).unwrap();
    kms.decrypt(&arn, &g.wrapped, &c).unwrap();
    let _ = kms.decrypt(&arn, &g.wrapped, &no_ctx());
    let _ = client_for(&s.url(), "AKIAUNKNOWN", SECRET_KEY, |_| {}).decrypt(&arn, &g.wrapped, &c);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(verify(text.as_bytes()), Ok(5), "{text}");
    use base64::Engine as _;
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(g.key.expose_secret());
    assert!(!text.contains(&key_b64));
    assert!(!text.contains(&hex::encode(g.key.expose_secret())));
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[1]["eventName"], "GenerateDataKey");
    assert_eq!(
        lines[1]["requestParameters"]["encryptionContext"]["file"],
        "/x"
    );
    assert_eq!(lines[1]["resources"][0]["ARN"], arn);
    assert_eq!(lines[1]["userIdentity"]["accessKeyId"], ACCESS_KEY);
    assert_eq!(lines[3]["errorCode"], "InvalidCiphertextException");
    assert_eq!(lines[4]["errorCode"], "UnrecognizedClientException");
    assert_eq!(lines[4]["userIdentity"]["accessKeyId"], "AKIAUNKNOWN");
    let edited = text.replacen("/x", "/y", 1);
    assert_eq!(verify(edited.as_bytes()).unwrap_err().line, 2);
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn command_line_serve_create_key_list_keys() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_kmsfs");
    let mut child = Command::new(bin)
        .args(["kms", "serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(dir.path().join("state.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let _guard = Kill(child);
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .expect(&first)
        .to_owned();
    let mut second = String::new();
    out.read_line(&mut second).unwrap();
    let creds = dir.path().join("state.json.credentials");
    assert!(second.contains("state.json.credentials"), "{second}");
    let run = |args: &[&str]| {
        let o = Command::new(bin)
            .args(args)
            .env_clear()
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_ENDPOINT_URL", &url)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let arn = run(&["kms", "create-key", "--alias", "cli"]);
    assert!(arn.starts_with("arn:aws:kms:"), "{arn}");
    let listed = run(&["kms", "list-keys"]);
    assert!(
        listed.contains(arn.trim()) && listed.contains("alias/cli"),
        "{listed}"
    );
}
