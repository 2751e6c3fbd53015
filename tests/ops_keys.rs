//! The offline commands that change a volume's keys, on real volumes: `rewrap` moves every
//! file to a new KMS key with ReEncrypt only and `rekey` gives every file a fresh data key
//! and file id; both survive being killed part way and keep every file's content.

mod common;
mod mountkit;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::pattern;
use mountkit::{cipher_of, kms_events_after, TestVolume};
use serde_json::Value;

#[test]
fn rewrap_survives_being_killed_and_uses_reencrypt_only() {
    let tmp = tempfile::tempdir().unwrap();
    let kms_audit = tmp.path().join("kms-audit.jsonl");
    let kms =
        mountkit::KmsServer::start(tmp.path(), 0, &["--audit-log", kms_audit.to_str().unwrap()]);
    let (key1, key2) = (kms.create_key(), kms.create_key());
    let v = TestVolume::with_init_args(
        &["--kms-endpoint", &kms.url.clone(), "--key", &key1],
        kms.env(),
    );
    {
        let _m = v.mount();
        for i in 0..1000 {
            fs::write(v.p(&format!("f{i:04}")), pattern(100 + i, i as u64)).unwrap();
        }
    }
    let before = fs::read_to_string(&kms_audit).unwrap().lines().count();
    // Kill it at several points, then let it finish.
    let rewrap = ["rewrap", v.cipher.to_str().unwrap(), "--to-key", &key2];
    kill_part_way(&v, &rewrap, &[60, 200, 450]);
    let out = v.kmsfs(&[&rewrap[..], &["--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed"].as_array().unwrap().len(), 0);
    assert_eq!(
        report["files_rewrapped"].as_u64().unwrap()
            + report["files_already_done"].as_u64().unwrap(),
        1000
    );
    let events = kms_events_after(&kms_audit, before);
    assert!(events.len() >= 1000, "{}", events.len());
    // No file's data key leaves the KMS; each run unwraps the names key once, to check and
    // sign the configuration it writes (four runs: three killed, one whole).
    let others: Vec<_> = events.iter().filter(|e| *e != "ReEncrypt").collect();
    assert!(
        others.iter().all(|e| *e == "Decrypt") && others.len() <= 4,
        "{others:?}"
    );
    // A second run has nothing left to do.
    let out = v.kmsfs(&[&rewrap[..], &["--json"]].concat());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files_rewrapped"], 0);
    every_file_reads_back_under(&v, &key2);
}

/// Every file of the rewrap test reads back identical, under the new key `key2`.
fn every_file_reads_back_under(v: &TestVolume, key2: &str) {
    let conf = fs::read_to_string(v.cipher.join("kmsfs.conf")).unwrap();
    assert!(conf.contains(key2), "the config moves to the new key");
    let _m = v.mount();
    for i in 0..1000 {
        assert_eq!(
            fs::read(v.p(&format!("f{i:04}"))).unwrap(),
            pattern(100 + i, i as u64),
            "f{i:04}"
        );
    }
    let ins = inspect_json(&cipher_of(v, "f0007"));
    assert_eq!(ins["key_id"], key2);
}

#[test]
fn rekey_gives_fresh_keys_survives_being_killed_and_keeps_content() {
    let v = TestVolume::new();
    {
        let _m = v.mount();
        for i in 0..300 {
            fs::write(v.p(&format!("f{i:03}")), pattern(5000 + i, i as u64)).unwrap();
        }
        rustix::fs::setxattr(
            v.p("f007"),
            "user.tag",
            b"kept",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }
    let id_of = |p: &Path| inspect_json(p)["file_id"].as_str().unwrap().to_owned();
    let seven = cipher_of(&v, "f007");
    let old_id = id_of(&seven);
    kill_part_way(&v, &["rekey", v.cipher.to_str().unwrap()], &[40, 120]);
    let out = v.kmsfs(&["rekey", v.cipher.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["rekeyed"].as_u64().unwrap() + report["already_done"].as_u64().unwrap(),
        300,
        "{report}"
    );
    assert!(
        !v.cipher.join(".kmsfs-rekey.journal").exists(),
        "the journal goes when done"
    );
    assert_ne!(
        id_of(&cipher_of(&v, "f007")),
        old_id,
        "a fresh file id and key"
    );
    let _m = v.mount();
    for i in 0..300 {
        assert_eq!(
            fs::read(v.p(&format!("f{i:03}"))).unwrap(),
            pattern(5000 + i, i as u64),
            "f{i:03}"
        );
    }
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(v.p("f007"), "user.tag", &mut buf[..]).unwrap();
    assert_eq!(
        &buf[..n],
        b"kept",
        "xattrs follow, re-bound to the new file id"
    );
    assert!(fs::read_dir(&v.mnt).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".kmsfs")));
}

/// Starts `kmsfs args` once per delay and kills it after that long, so that the run
/// which follows must finish what the killed ones left half done.
fn kill_part_way(v: &TestVolume, args: &[&str], delays_ms: &[u64]) {
    for &delay_ms in delays_ms {
        let mut child = v
            .command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `kmsfs inspect --json` of one ciphertext file: its header, read without the KMS.
fn inspect_json(cipher_file: &Path) -> Value {
    let out = Command::new(mountkit::bin())
        .args(["inspect", "--json", cipher_file.to_str().unwrap()])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}
