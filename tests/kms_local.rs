//! `kmsfs kms` on the built-in KMS's state file directly, through the built binary: keys
//! made and listed without `kms serve`, a backup that is private and never replaced
//! unless asked, a restore that brings back a lost state and refuses other key material,
//! and what `kmsfs init` says about where the master keys are.

mod mountkit;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use mountkit::TestVolume;

/// Runs kmsfs with the volume's XDG directories and no KMS endpoint in the environment.
fn run(v: &TestVolume, args: &[&str]) -> Output {
    v.command()
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_KMS")
        .args(args)
        .output()
        .unwrap()
}

fn ok(v: &TestVolume, args: &[&str]) -> String {
    let out = run(v, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn failed(v: &TestVolume, args: &[&str]) -> String {
    let out = run(v, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn default_state(v: &TestVolume) -> PathBuf {
    v.dir.path().join("data/kmsfs/local-kms/state.json")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn create_key_and_list_keys_on_the_state_directly() {
    let v = TestVolume::new();
    let other = v.dir.path().join("other/state.json");
    let arn = ok(
        &v,
        &["kms", "create-key", "--alias", "mine", "--state", s(&other)],
    );
    let arn = arn.trim();
    assert!(arn.starts_with("arn:aws:kms:"), "{arn}");
    let listed = ok(&v, &["kms", "list-keys", "--state", s(&other)]);
    assert_eq!(listed, format!("{arn}\talias/mine\n"));

    // Without --state or an endpoint: the state `kmsfs init` used.
    let made = ok(&v, &["kms", "create-key"]);
    let listed = ok(&v, &["kms", "list-keys"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.contains(made.trim()) && !listed.contains(arn),
        "{listed}"
    );

    let missing = v.dir.path().join("none/state.json");
    let err = failed(&v, &["kms", "list-keys", "--state", s(&missing)]);
    assert!(err.contains("no state file"), "{err}");
    assert!(!missing.exists());
}

#[test]
fn backup_is_private_and_replaced_only_with_force() {
    let v = TestVolume::new();
    let out = v.dir.path().join("backup.json");
    let said = ok(&v, &["kms", "backup", s(&out)]);
    assert!(said.contains("1 key(s)"), "{said}");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(default_state(&v)).unwrap()
    );

    ok(&v, &["kms", "create-key"]);
    let err = failed(&v, &["kms", "backup", s(&out)]);
    assert!(err.contains("--force"), "{err}");
    assert_ne!(
        std::fs::read(&out).unwrap(),
        std::fs::read(default_state(&v)).unwrap()
    );
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    ok(&v, &["kms", "backup", "--force", s(&out)]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(default_state(&v)).unwrap()
    );
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn restore_brings_back_a_lost_state_and_keeps_what_is_there() {
    let v = TestVolume::new();
    let state = default_state(&v);
    let backup = v.dir.path().join("backup.json");
    ok(&v, &["kms", "backup", "--state", s(&state), s(&backup)]);
    let fsck = |cipher: &Path| run(&v, &["fsck", s(cipher)]);
    assert!(fsck(&v.cipher).status.success());

    std::fs::remove_file(&state).unwrap();
    assert!(!fsck(&v.cipher).status.success());
    // A volume made since the loss has its key in the new state, which the restore keeps.
    let later = v.dir.path().join("later");
    ok(&v, &["init", s(&later)]);

    let said = ok(&v, &["kms", "restore", s(&backup)]);
    assert!(said.contains("keys added:           1"), "{said}");
    assert!(said.contains("keys already there:   0"), "{said}");
    for cipher in [&v.cipher, &later] {
        let out = fsck(cipher);
        assert!(
            out.status.success(),
            "fsck {}: {}",
            cipher.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    {
        let _m = v.mount();
        std::fs::write(v.p("f"), b"after the restore").unwrap();
    }
    let again = ok(&v, &["kms", "restore", s(&backup)]);
    assert!(again.contains("keys added:           0"), "{again}");
    assert!(again.contains("keys already there:   1"), "{again}");

    // The backup's key id with other key material: refused, the state left as it was.
    let before = std::fs::read(&state).unwrap();
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&backup).unwrap()).unwrap();
    forged["keys"][0]["versions"][0] = "ab".repeat(32).into();
    let forged_path = v.dir.path().join("forged.json");
    std::fs::write(&forged_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let err = failed(&v, &["kms", "restore", s(&forged_path)]);
    assert!(err.contains("different key material"), "{err}");
    assert_eq!(std::fs::read(&state).unwrap(), before);
}

#[test]
fn init_on_the_built_in_kms_says_where_the_master_keys_are() {
    let v = TestVolume::new();
    let state = v.dir.path().join("keys/state.json");
    let cipher = v.dir.path().join("second");
    let said = ok(&v, &["init", s(&cipher), "--local-kms-state", s(&state)]);
    assert!(
        said.contains(&format!("master key is in {}", state.display())),
        "{said}"
    );
    assert!(said.contains("losing that file loses every"), "{said}");
    assert!(
        said.contains(&format!("kmsfs kms backup --state {} ", state.display())),
        "{said}"
    );
}
