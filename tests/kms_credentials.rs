//! The standard AWS credential chain in the kmsfs client (issue 23), each source against
//! local stand-ins (`credkit`) and a `kmsfs kms serve` that accepts only the credentials
//! the stand-ins hand out: `credential_process`, assume-role with `source_profile`, SSO,
//! web identity, ECS, IMDSv2 (and `AWS_EC2_METADATA_DISABLED`), the chain's order, the error
//! that names every source tried, and a mount whose credentials expire and are refreshed
//! without a remount.

mod credkit;
mod mountkit;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use credkit::{server_credentials, set, StandIn};
use mountkit::{bin, KmsServer, TestVolume};

/// The server's own access key (for making keys).
const OWN: &str =
    "[default]\naws_access_key_id = AKIAOWNOWNOWNOWNOWN1\naws_secret_access_key = own\n";

/// A `kms serve` in `dir` accepting credential sets 1..=40 (and its own `[default]`).
fn kms_for_stand_ins(dir: &Path) -> KmsServer {
    fs::write(
        dir.join("kms-state.json.credentials"),
        format!("{OWN}{}", server_credentials(1..=40)),
    )
    .unwrap();
    KmsServer::start(dir, 0, &[])
}

/// The environment of a process that finds credentials only where `vars` say: no AWS_*
/// variable of the test's own, profile files that do not exist unless given.
fn clean_env(home: &Path, vars: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME".to_owned(), home.to_string_lossy().into_owned()),
        ("AWS_REGION".into(), "us-east-1".into()),
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            home.join("no-credentials").to_string_lossy().into_owned(),
        ),
        (
            "AWS_CONFIG_FILE".into(),
            home.join("no-config").to_string_lossy().into_owned(),
        ),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ];
    for (k, v) in vars {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.clone()));
    }
    env
}

/// `kmsfs ARGS` with exactly `env` for its AWS settings.
fn kmsfs(env: &[(String, String)], args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
        c.env_remove(k);
    }
    c.envs(env.iter().cloned()).args(args).output().unwrap()
}

/// `kmsfs kms list-keys` against `kms`: succeeds only with credentials it accepts.
fn list_keys(kms: &KmsServer, env: &[(String, String)]) -> Output {
    kmsfs(env, &["kms", "list-keys", "--endpoint", &kms.url])
}

/// The access key ids the server's audit log names, in order.
fn callers(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("kms-audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["userIdentity"]["accessKeyId"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn credential_process_and_assume_role_from_profiles() {
    let tmp = tempfile::tempdir().unwrap();
    let kms = kms_for_stand_ins(tmp.path());
    let sts = StandIn::sts("unused");
    let (id, secret, token) = set(31);
    let script = tmp.path().join("creds.sh");
    fs::write(
        &script,
        format!("#!/bin/sh\necho '{{\"Version\": 1, \"AccessKeyId\": \"{id}\", \"SecretAccessKey\": \"{secret}\", \"SessionToken\": \"{token}\", \"Expiration\": \"2999-01-01T00:00:00Z\"}}'\n"),
    )
    .unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = tmp.path().join("config");
    fs::write(
        &config,
        format!("[profile proc]\ncredential_process = {}\n[profile base]\naws_access_key_id = AKIABASE\naws_secret_access_key = base\n[profile role]\nrole_arn = arn:aws:iam::111122223333:role/kms-user\nsource_profile = base\n", script.display()),
    )
    .unwrap();
    let files = |profile: &str| {
        clean_env(
            tmp.path(),
            &[
                ("AWS_CONFIG_FILE", config.to_string_lossy().into_owned()),
                ("AWS_PROFILE", profile.into()),
                ("AWS_ENDPOINT_URL_STS", sts.url.clone()),
            ],
        )
    };
    ok(&list_keys(&kms, &files("proc")));
    ok(&list_keys(&kms, &files("role")));
    let reqs = sts.requests();
    assert_eq!(reqs, ["POST /"], "{reqs:?}");
    assert!(sts.seen.lock().unwrap()[0]
        .body
        .contains("Action=AssumeRole"));
    let _ = kms;
}

#[test]
fn sso_from_the_aws_cli_token_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let kms = kms_for_stand_ins(tmp.path());
    let sso = StandIn::sso("a-bearer-token");
    let start_url = "https://standin.awsapps.com/start";
    // The AWS CLI names its cache file by the SHA-1 of the start URL.
    let sha1 = Command::new("sh")
        .args(["-c", &format!("printf %s '{start_url}' | sha1sum")])
        .output()
        .unwrap();
    let sha1 = String::from_utf8(sha1.stdout).unwrap();
    let cache = tmp.path().join(".aws/sso/cache");
    fs::create_dir_all(&cache).unwrap();
    fs::write(
        cache.join(format!("{}.json", &sha1[..40])),
        format!(r#"{{"accessToken": "a-bearer-token", "expiresAt": "2999-01-01T00:00:00Z", "region": "us-east-1", "startUrl": "{start_url}"}}"#),
    )
    .unwrap();
    let config = tmp.path().join("config");
    fs::write(
        &config,
        format!("[profile sso]\nsso_start_url = {start_url}\nsso_region = us-east-1\nsso_account_id = 111122223333\nsso_role_name = kms-user\n"),
    )
    .unwrap();
    let env = clean_env(
        tmp.path(),
        &[
            ("AWS_CONFIG_FILE", config.to_string_lossy().into_owned()),
            ("AWS_PROFILE", "sso".into()),
            ("AWS_ENDPOINT_URL_SSO", sso.url.clone()),
        ],
    );
    ok(&list_keys(&kms, &env));
    assert_eq!(sso.requests().len(), 1, "{:?}", sso.requests());
}

#[test]
fn web_identity_ecs_and_imds_in_the_chains_order() {
    let tmp = tempfile::tempdir().unwrap();
    let kms = kms_for_stand_ins(tmp.path());
    let token_file = tmp.path().join("web-token");
    fs::write(&token_file, "a-web-identity-token").unwrap();
    let sts = StandIn::sts("a-web-identity-token");
    let ecs = StandIn::ecs(Some("ecs-secret"));
    let imds = StandIn::imds(Duration::from_secs(3600));
    let web = [
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token_file.to_string_lossy().into_owned(),
        ),
        ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/eks".into()),
        ("AWS_ENDPOINT_URL_STS", sts.url.clone()),
    ];
    let ecs_vars = [
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/creds", ecs.url),
        ),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-secret".into()),
    ];
    let imds_vars = [
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.clone()),
        ("AWS_EC2_METADATA_DISABLED", "false".into()),
    ];
    let all: Vec<_> = web
        .iter()
        .chain(&ecs_vars)
        .chain(&imds_vars)
        .cloned()
        .collect();
    // Web identity comes before ECS and IMDS.
    ok(&list_keys(&kms, &clean_env(tmp.path(), &all)));
    assert_eq!(sts.requests().len(), 1);
    assert!(sts.seen.lock().unwrap()[0]
        .body
        .contains("Action=AssumeRoleWithWebIdentity"));
    // Then ECS before IMDS.
    let rest: Vec<_> = ecs_vars.iter().chain(&imds_vars).cloned().collect();
    ok(&list_keys(&kms, &clean_env(tmp.path(), &rest)));
    assert_eq!(ecs.requests(), ["GET /creds"]);
    assert!(imds.requests().is_empty());
    // IMDSv2 last: a token first, then the role and its credentials.
    ok(&list_keys(&kms, &clean_env(tmp.path(), &imds_vars)));
    let reqs = imds.requests();
    assert_eq!(
        reqs.first().map(String::as_str),
        Some("PUT /latest/api/token")
    );
    assert!(
        reqs.iter()
            .any(|r| r == "GET /latest/meta-data/iam/security-credentials/standin-role"),
        "{reqs:?}"
    );
    // AWS_EC2_METADATA_DISABLED stops there, and the error names every source tried.
    let seen = imds.requests().len();
    let off = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.clone())];
    let out = list_keys(&kms, &clean_env(tmp.path(), &off));
    assert!(!out.status.success());
    assert_eq!(imds.requests().len(), seen);
    let err = String::from_utf8_lossy(&out.stderr);
    for source in [
        "no AWS credentials found",
        "AWS_ACCESS_KEY_ID",
        "profile \"default\"",
        "credential_process",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "IMDSv2",
    ] {
        assert!(err.contains(source), "{source}: {err}");
    }
}

#[test]
fn expiring_imds_credentials_are_refreshed_without_a_remount() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kms = kms_for_stand_ins(tmp.path());
    let key = kms.create_key();
    let life = Duration::from_secs(8);
    let imds = StandIn::imds(life);
    let env = clean_env(
        tmp.path(),
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.clone()),
            ("AWS_EC2_METADATA_DISABLED", "false".into()),
        ],
    );
    let v = TestVolume::with_init_args(&["--kms-endpoint", &kms.url, "--key", &key], env.clone());
    let _m = v.mount_with(&["--key-ttl", "0"]);
    for i in 0..4 {
        fs::write(v.p(&format!("f{i}")), format!("file {i}")).unwrap();
    }
    assert_eq!(fs::read(v.p("f0")).unwrap(), b"file 0");
    // Every set handed out so far expires; the KMS then takes none of them, as AWS would
    // not take an expired session token.
    let expired = imds.handed_out.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(life + Duration::from_secs(1));
    kms.stop();
    let accepted = OWN.to_owned() + &server_credentials(expired + 1..=40);
    fs::write(tmp.path().join("kms-state.json.credentials"), accepted).unwrap();
    let _kms = KmsServer::start(
        tmp.path(),
        kms.port,
        &[
            "--audit-log",
            tmp.path().join("kms-audit.jsonl").to_str().unwrap(),
        ],
    );
    for i in 1..4 {
        assert_eq!(
            fs::read(v.p(&format!("f{i}"))).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
    assert!(imds.handed_out.load(std::sync::atomic::Ordering::SeqCst) > expired);
    let used = callers(tmp.path());
    assert!(!used.is_empty());
    for caller in used {
        let n: u32 = caller.trim_start_matches("ASIASTANDIN").parse().unwrap();
        assert!(n > expired, "{caller} had expired");
    }
}
