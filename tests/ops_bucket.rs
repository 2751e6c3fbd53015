//! The offline commands on a bucket-key volume (issue 22; `docs/format.md`, "Bucket keys"),
//! on its own `kmsfs kms serve`: `fsck`, `export`, `decrypt`, `rewrap` and `rekey` work and
//! cost a few KMS calls in all, not one per file, and their audit log has each file's open
//! beside the bucket key's own KMS call.

mod common;
mod mountkit;

use std::fs;
use std::path::Path;

use common::pattern;
use mountkit::{cipher_of, kms_events_after, KmsServer, TestVolume};
use serde_json::Value;

const FILES: usize = 300;

/// Runs `kmsfs ARGS`, which must succeed, and returns its stdout and the KMS operations it
/// caused.
fn run(v: &TestVolume, kms_audit: &Path, args: &[&str]) -> (Vec<u8>, Vec<String>) {
    let skip = fs::read_to_string(kms_audit).unwrap().lines().count();
    let out = v.kmsfs(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.stdout, kms_events_after(kms_audit, skip))
}

fn bucket_of(cipher: &Path) -> String {
    let out = std::process::Command::new(mountkit::bin())
        .args(["inspect", "--json", cipher.to_str().unwrap()])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["bucket_id"].as_str().expect("a bucket file").to_owned()
}

fn name(i: usize) -> String {
    format!("d{}/f{i:03}", i % 3)
}

#[test]
fn offline_commands_on_a_bucket_volume_cost_a_few_kms_calls_not_one_per_file() {
    let tmp = tempfile::tempdir().unwrap();
    let kms_audit = tmp.path().join("kms-audit.jsonl");
    let kms = KmsServer::start(tmp.path(), 0, &["--audit-log", kms_audit.to_str().unwrap()]);
    let (key1, key2) = (kms.create_key(), kms.create_key());
    let url = kms.url.clone();
    let v = TestVolume::with_init_args(
        &["--kms-endpoint", &url, "--key", &key1, "--bucket-key"],
        kms.env(),
    );
    {
        let _m = v.mount();
        for d in 0..3 {
            fs::create_dir(v.p(&format!("d{d}"))).unwrap();
        }
        for i in 0..FILES {
            fs::write(v.p(&name(i)), pattern(1000 + i, i as u64)).unwrap();
        }
    }
    let cipher = v.cipher.to_str().unwrap();
    let calls = |events: &[String]| events.len();

    let (out, events) = run(&v, &kms_audit, &["fsck", cipher, "--json"]);
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["files"], FILES as u64);
    assert!(calls(&events) <= 4, "fsck: {events:?}");

    let dest = tmp.path().join("export");
    let (_, events) = run(&v, &kms_audit, &["export", cipher, dest.to_str().unwrap()]);
    assert!(calls(&events) <= 4, "export: {events:?}");
    for i in (0..FILES).step_by(37) {
        assert_eq!(
            fs::read(dest.join(name(i))).unwrap(),
            pattern(1000 + i, i as u64)
        );
    }

    let one = cipher_of(&v, &name(5));
    let (out, events) = run(&v, &kms_audit, &["decrypt", one.to_str().unwrap()]);
    assert_eq!(out, pattern(1005, 5));
    assert!(calls(&events) <= 3, "decrypt: {events:?}");

    // rewrap: one ReEncrypt for the one bucket key every file carries.
    let before = bucket_of(&cipher_of(&v, &name(0)));
    let (out, events) = run(
        &v,
        &kms_audit,
        &["rewrap", cipher, "--to-key", &key2, "--json"],
    );
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["files_rewrapped"], FILES as u64, "{report}");
    let re = events.iter().filter(|e| *e == "ReEncrypt").count();
    assert_eq!(re, 2, "the bucket key and the names key: {events:?}");
    assert!(calls(&events) <= 4, "rewrap: {events:?}");
    assert_eq!(
        bucket_of(&cipher_of(&v, &name(0))),
        before,
        "rewrap keeps the bucket"
    );

    // rekey: one new bucket key for the run.
    let (out, events) = run(&v, &kms_audit, &["rekey", cipher, "--json"]);
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["rekeyed"], FILES as u64, "{report}");
    let generated = events.iter().filter(|e| *e == "GenerateDataKey").count();
    assert_eq!(generated, 1, "rekey: {events:?}");
    assert!(calls(&events) <= 4, "rekey: {events:?}");
    let after: Vec<String> = (0..FILES)
        .step_by(50)
        .map(|i| bucket_of(&cipher_of(&v, &name(i))))
        .collect();
    assert!(
        after.iter().all(|b| *b == after[0] && *b != before),
        "{after:?}"
    );

    {
        let _m = v.mount();
        for i in 0..FILES {
            assert_eq!(
                fs::read(v.p(&name(i))).unwrap(),
                pattern(1000 + i, i as u64)
            );
        }
    }
    // The tools' audit log: each file's open, and the bucket key's own KMS calls.
    let log = v.dir.path().join("state/kmsfs/audit");
    let log = fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let records: Vec<Value> = fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |event: &str| records.iter().filter(|r| r["event"] == event).count();
    assert!(
        count("key_from_bucket") >= 3 * FILES,
        "fsck, export and rekey open each file"
    );
    assert!(count("bucket_key_unwrapped") >= 3);
    assert_eq!(count("bucket_key_generated"), 1, "rekey's bucket");
}
