//! Volumes on OpenBao's Transit engine (issue 24), against real OpenBao servers
//! (`baokit`): mount, write, read and mount again; a key that is not derived refused;
//! rewrap after a rotation; a token without the decrypt capability; a stopped and a
//! sealed server as KMS outages that the mount recovers from; AppRole tokens outliving
//! their TTL; TLS with a CA file.

mod baokit;
mod mountkit;

use std::time::{Duration, Instant};

use baokit::BaoServer;
use mountkit::TestVolume;

const KEY: &str = "transit/vol";

/// A volume on `bao` under `KEY`, with `env` (the token) for every command.
fn volume(bao: &BaoServer, env: Vec<(String, String)>) -> TestVolume {
    let endpoint = bao.endpoint();
    TestVolume::with_init_args(&["--kms-endpoint", &endpoint, "--key", KEY], env)
}

fn write_files(v: &TestVolume, n: usize) {
    std::fs::create_dir_all(v.p("d")).unwrap();
    for i in 0..n {
        std::fs::write(v.p(&format!("d/f{i}")), format!("file {i}\n").repeat(i + 1)).unwrap();
    }
}

fn read_files(v: &TestVolume, n: usize) {
    for i in 0..n {
        let got = std::fs::read_to_string(v.p(&format!("d/f{i}")))
            .unwrap_or_else(|e| panic!("d/f{i}: {e}"));
        assert_eq!(got, format!("file {i}\n").repeat(i + 1), "d/f{i}");
    }
}

/// A volume on `bao` with `n` files written through a mount (unmounted again).
fn filled(bao: &BaoServer, env: Vec<(String, String)>, n: usize) -> TestVolume {
    let v = volume(bao, env);
    let m = v.mount();
    write_files(&v, n);
    m.unmount();
    v
}

/// Mounts `v` and reads its first `n` files back.
fn reads_back(v: &TestVolume, n: usize) {
    let m = v.mount();
    read_files(v, n);
    m.unmount();
}

/// Policies for a key user: `ops` on the key (`decrypt`, ...) and reading the key.
fn user_policies(bao: &BaoServer, ops: &[&str]) -> [&'static str; 2] {
    bao.key_policy("user", KEY, ops);
    let keys = baokit::admin::transit_path(KEY, "keys");
    bao.policy(
        "reader",
        &format!("path \"{keys}\" {{ capabilities = [\"read\"] }}"),
    );
    ["user", "reader"]
}

#[test]
fn a_volume_on_openbao_mounts_writes_reads_and_mounts_again() {
    let bao = BaoServer::dev();
    let v = volume(&bao, bao.env());
    // init made the key, derived, and recorded the backend.
    assert_eq!(bao.key_info(KEY)["derived"], true);
    let conf = std::fs::read_to_string(v.cipher.join("kmsfs.conf")).unwrap();
    assert!(
        conf.contains("\"transit\"") && conf.contains(&bao.endpoint()),
        "{conf}"
    );
    let m = v.mount();
    write_files(&v, 40);
    read_files(&v, 40);
    m.unmount();
    let m = v.mount();
    read_files(&v, 40);
    let status = v.status();
    assert!(
        status["kms"]["decrypt"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    m.unmount();
    // The offline tools work on it too, and the audit log names the key.
    let fsck = v.kmsfs_json(&["fsck", v.cipher.to_str().unwrap(), "--json"]);
    assert_eq!(fsck["files"], 40, "{fsck}");
    assert!(fsck["damaged"].as_array().unwrap().is_empty(), "{fsck}");
    let keyed = v.audit_records();
    assert!(
        keyed.iter().any(|r| r.to_string().contains(KEY)),
        "no record names {KEY}"
    );
}

#[test]
fn init_refuses_a_transit_key_that_is_not_derived() {
    let bao = BaoServer::dev();
    bao.create_key("transit/flat", false);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(mountkit::bin())
        .args(["init", dir.path().join("c").to_str().unwrap()])
        .args(["--kms-endpoint", &bao.endpoint(), "--key", "transit/flat"])
        .envs(bao.env())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "init took a key that is not derived");
    assert!(err.contains("derived=true"), "{err}");
}

#[test]
fn rewrap_after_a_rotation_moves_every_header_to_the_newest_version() {
    let bao = BaoServer::dev();
    let v = filled(&bao, bao.env(), 12);
    assert_eq!(bao.rotate(KEY), 2);
    let cipher = v.cipher.to_str().unwrap();

    // Before the rewrap, every header is still of version 1: raising the minimum to 2
    // makes the files (and the names key) fail.
    bao.set_min_decryption_version(KEY, 2);
    let refused = v.kmsfs(&["fsck", cipher]);
    assert!(
        !refused.status.success(),
        "v1 headers read with min_decryption_version 2"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("min_decryption_version"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    bao.set_min_decryption_version(KEY, 1);

    let report = v.kmsfs_json(&["rewrap", cipher, "--to-key", KEY, "--json"]);
    assert_eq!(report["files_rewrapped"], 12, "{report}");
    assert_eq!(report["names_key_rewrapped"], true, "{report}");
    assert_eq!(report["key_versions"]["latest_version"], 2, "{report}");
    assert_eq!(
        report["key_versions"]["min_decryption_version"], 1,
        "{report}"
    );
    let again = v.kmsfs_json(&["rewrap", cipher, "--to-key", KEY, "--json"]);
    assert_eq!(again["files_rewrapped"], 0, "{again}");
    assert_eq!(again["files_already_done"], 12, "{again}");
    assert_eq!(again["names_key_rewrapped"], false, "{again}");

    // Now version 1 may go: everything reads.
    bao.set_min_decryption_version(KEY, 2);
    reads_back(&v, 12);
}

#[test]
fn a_token_without_decrypt_gets_eacces_and_a_message_naming_the_capability() {
    let bao = BaoServer::dev();
    let v = filled(&bao, bao.env(), 4);
    let policies = user_policies(&bao, &["datakey/plaintext", "decrypt", "encrypt", "rewrap"]);
    let token = bao.token_with_policies(&policies, "1h");
    let user = TestVolume {
        env: bao.env_with_token(&token),
        ..v
    };
    let m = user.mount();
    read_files(&user, 1);
    // The policy loses decrypt while the volume is mounted.
    bao.key_policy("user", KEY, &["datakey/plaintext", "encrypt", "rewrap"]);
    let err = std::fs::read(user.p("d/f2")).expect_err("read without the decrypt capability");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    let log = m.log();
    assert!(
        log.contains("`update` capability") && log.contains("transit/decrypt/vol"),
        "the log does not name the missing capability:\n{log}"
    );
    m.unmount();
}

/// Reads `d/f{i}` and says whether it worked, failing the test if it took longer than
/// `limit` (an open must give up within the mount's `--kms-timeout`).
fn read_within(v: &TestVolume, i: usize, limit: Duration) -> std::io::Result<Vec<u8>> {
    let started = Instant::now();
    let got = std::fs::read(v.p(&format!("d/f{i}")));
    assert!(
        started.elapsed() < limit,
        "d/f{i} took {:?} (limit {limit:?})",
        started.elapsed()
    );
    got
}

#[test]
fn a_stopped_or_sealed_server_is_an_outage_the_mount_recovers_from() {
    let dir = tempfile::tempdir().unwrap();
    let mut bao = BaoServer::persistent(dir.path());
    let v = filled(&bao, bao.env(), 6);
    let m = v.mount_with(&["--kms-timeout", "3s", "--kms-prefetch", "0"]);
    read_files(&v, 1);
    let limit = Duration::from_secs(12);

    bao.stop();
    let err = read_within(&v, 2, limit).expect_err("read with OpenBao stopped");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // A cached key keeps serving.
    assert!(read_within(&v, 0, limit).is_ok());

    bao.start();
    assert!(bao.is_sealed());
    let err = read_within(&v, 3, limit).expect_err("read with OpenBao sealed");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    bao.unseal();
    // Back without a remount (the mount may wait out a pause after the failures).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match read_within(&v, 4, limit) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("the mount did not recover after the unseal: {e}"),
        }
    }
    read_files(&v, 6);
    m.unmount();
}

/// Reads a file of a volume mounted with AppRole tokens of `ttl` (renewable up to
/// `max_ttl`) every 1.5 s for 12 s, each read asking OpenBao (keys cached 1 s): how many
/// times the mount logged in and renewed its token (from its log).
fn approle_reads(ttl: &str, max_ttl: &str) -> (usize, usize) {
    let bao = BaoServer::dev();
    let v = filled(&bao, bao.env(), 10);
    let policies = user_policies(&bao, &["datakey/plaintext", "decrypt", "encrypt"]);
    let (role_id, secret_id) = bao.approle("kmsfs", &policies, ttl, max_ttl);
    let files = v.dir.path();
    std::fs::write(files.join("role"), &role_id).unwrap();
    std::fs::write(files.join("secret"), &secret_id).unwrap();
    let file_var = |k: &str, f: &str| (k.to_owned(), files.join(f).to_string_lossy().into());
    let app = TestVolume {
        env: vec![
            file_var("KMSFS_BAO_ROLE_ID_FILE", "role"),
            file_var("KMSFS_BAO_SECRET_ID_FILE", "secret"),
        ],
        ..v
    };
    let m = app.mount_with(&["--key-ttl", "1s", "--kms-prefetch", "0"]);
    for i in 0..8 {
        std::thread::sleep(Duration::from_millis(1500));
        if let Err(e) = std::fs::read(app.p(&format!("d/f{i}"))) {
            panic!("d/f{i}, {:.1} s in: {e}\n{}", 1.5 * (i + 1) as f64, m.log());
        }
    }
    let log = m.log();
    m.unmount();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    (
        count("OpenBao: logged in at auth/approle/login"),
        count("OpenBao: token renewed"),
    )
}

#[test]
fn approle_tokens_are_renewed_without_a_new_login() {
    // Tokens of 3 s, renewable for an hour: 12 s of reads on one login, renewed.
    let (logins, renewals) = approle_reads("3s", "1h");
    assert_eq!(logins, 1);
    assert!(renewals >= 3, "{renewals} renewals");
}

#[test]
fn approle_tokens_past_their_max_ttl_are_replaced_by_a_new_login() {
    // Renewable up to 6 s only: the mount logs in again, without a remount.
    let (logins, _) = approle_reads("3s", "6s");
    assert!(logins >= 2, "{logins} logins");
}

#[test]
fn tls_with_the_servers_ca_file() {
    let bao = BaoServer::dev_tls();
    assert!(bao.endpoint().starts_with("openbao+https://"));
    let v = volume(&bao, bao.env());
    let m = v.mount();
    write_files(&v, 3);
    m.unmount();
    reads_back(&v, 3);
    // Without the CA, the server's certificate is not trusted.
    let untrusted: Vec<_> = bao
        .env()
        .into_iter()
        .filter(|(k, _)| k != "BAO_CACERT")
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(mountkit::bin())
        .args(["init", dir.path().join("c").to_str().unwrap()])
        .args(["--kms-endpoint", &bao.endpoint(), "--key", "transit/other"])
        .envs(untrusted)
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "init trusted a certificate of an unknown CA"
    );
}

#[test]
fn a_volume_in_a_namespace() {
    let bao = BaoServer::dev();
    bao.namespace("team-a");
    let mut env = bao.env();
    env.push(("BAO_NAMESPACE".into(), "team-a".into()));
    let v = volume(&bao, env);
    // The key is in the namespace, not at the root.
    let listed = bao.bao_in("team-a", &["list", "-format=json", "transit/keys"]);
    assert!(listed.contains("vol"), "{listed}");
    assert!(!bao.bao(&["read", "transit/keys/vol"]).status.success());
    let m = v.mount();
    write_files(&v, 3);
    m.unmount();
    reads_back(&v, 3);
}

#[test]
fn a_token_file_is_read_again_when_an_agent_replaces_the_token() {
    let bao = BaoServer::dev();
    let v = filled(&bao, bao.env(), 4);
    let file = v.dir.path().join("agent-token");
    let first = bao.token_with_policies(&["root"], "1h");
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let agent = TestVolume {
        env: vec![("KMSFS_BAO_TOKEN_FILE".into(), file.to_string_lossy().into())],
        ..v
    };
    let m = agent.mount_with(&["--key-ttl", "0", "--kms-prefetch", "0"]);
    read_files(&agent, 1);
    // The agent gets a new token and the old one is revoked.
    let second = bao.token_with_policies(&["root"], "1h");
    std::fs::write(&file, format!("{second}\n")).unwrap();
    bao.bao_ok(&["token", "revoke", &first]);
    read_files(&agent, 4);
    m.unmount();
}

#[test]
fn the_offline_tools_work_on_openbao() {
    let bao = BaoServer::dev();
    let v = filled(&bao, bao.env(), 5);
    let cipher = v.cipher.to_str().unwrap();
    let ok = |args: &[&str]| {
        let out = v.kmsfs(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kmsfs {args:?}: {err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // rekey: every file gets a new data key from OpenBao.
    let before = std::fs::read(mountkit::cipher_of(&v, "d/f1")).unwrap();
    ok(&["rekey", cipher]);
    let after = std::fs::read(mountkit::cipher_of(&v, "d/f1")).unwrap();
    assert_ne!(before, after, "rekey left d/f1's ciphertext as it was");
    // decrypt one file, export the volume, import a tree into it.
    let one = v.dir.path().join("one");
    let f3 = mountkit::cipher_of(&v, "d/f3");
    ok(&["decrypt", f3.to_str().unwrap(), "-o", one.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&one).unwrap(), "file 3\n".repeat(4));
    let out = v.dir.path().join("out");
    ok(&["export", cipher, out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(out.join("d/f4")).unwrap(),
        "file 4\n".repeat(5)
    );
    let src = v.dir.path().join("src");
    std::fs::create_dir_all(src.join("new")).unwrap();
    std::fs::write(src.join("new/a"), "imported\n").unwrap();
    ok(&["import", src.to_str().unwrap(), cipher]);
    let m = v.mount();
    assert_eq!(std::fs::read_to_string(v.p("new/a")).unwrap(), "imported\n");
    read_files(&v, 5);
    m.unmount();
    // The backend is under the configuration's signature: another endpoint is refused.
    let conf = v.cipher.join("kmsfs.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    let moved = text.replace(&bao.endpoint(), "openbao+http://127.0.0.1:1");
    assert_ne!(text, moved);
    std::fs::write(&conf, moved).unwrap();
    let refused = v.kmsfs(&["fsck", cipher]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "an edited endpoint was taken");
    assert!(
        err.contains("kmsfs trust"),
        "refused for another reason: {err}"
    );
}

#[test]
fn errors_say_what_to_do_without_a_token_or_over_plain_http_to_another_host() {
    let bao = BaoServer::dev();
    let dir = tempfile::tempdir().unwrap();
    let init = |endpoint: &str, env: Vec<(String, String)>| {
        let out = std::process::Command::new(mountkit::bin())
            .args(["init", dir.path().join("c").to_str().unwrap()])
            .args(["--kms-endpoint", endpoint, "--key", KEY])
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .env("HOME", dir.path())
            .envs(env)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = init(&bao.endpoint(), vec![]);
    assert!(err.contains("hint: give kmsfs an OpenBao token"), "{err}");
    let remote = "openbao+http://192.0.2.1:8200";
    let err = init(remote, bao.env());
    assert!(err.contains("KMSFS_BAO_INSECURE_HTTP"), "{err}");
}
