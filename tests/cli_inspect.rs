//! `kmsfs inspect` as a user runs it: the built binary on the committed vectors.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn kmsfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kmsfs"))
        .args(args)
        .output()
        .expect("run kmsfs")
}

fn vector(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn inspect_prints_the_header_as_json() {
    for (name, version) in [("three-blocks", 1), ("v2-three-blocks", 2)] {
        inspect_as_json(name, version);
    }
}

fn inspect_as_json(name: &str, version: u64) {
    let out = kmsfs(&["inspect", "--json", &vector(&format!("{name}.kmsfs"))]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let described: Value =
        serde_json::from_str(&std::fs::read_to_string(vector(&format!("{name}.json"))).unwrap())
            .unwrap();
    assert_eq!(v["format_version"], version);
    assert_eq!(described["format_version"], version);
    assert_eq!(v["file_id"], described["file_id_hex"]);
    assert_eq!(v["key_id"], described["key_id"]);
    assert_eq!(v["wrapped_key_len"], described["wrapped_key_len"]);
    assert_eq!(v["plaintext_size"], described["plaintext_size"]);
    assert_eq!(v["blocks"], 3);
}

#[test]
fn inspect_shows_the_header_flags_of_a_bucket_file() {
    let out = kmsfs(&["inspect", "--json", &vector("v3-bucket.kmsfs")]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["flags"], 4, "{v}");
    assert!(v["bucket_id"].is_string(), "{v}");
    let out = kmsfs(&["inspect", &vector("v3-bucket.kmsfs")]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("flags:           4 (bucket key)"), "{text}");
}

#[test]
fn inspect_prints_the_header_as_text() {
    let out = kmsfs(&["inspect", &vector("empty.kmsfs")]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("plaintext size:  0 bytes (1 blocks)"),
        "{text}"
    );
    assert!(text.contains("KMS key:         arn:aws:kms:"), "{text}");
}

#[test]
fn a_file_that_is_not_kmsfs_gets_a_clear_error_and_status_1() {
    let dir = std::env::temp_dir().join(format!("kmsfs-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("notes.txt");
    std::fs::write(&plain, "just some text\n").unwrap();
    for (path, expect) in [
        (plain.to_string_lossy().into_owned(), "not a kmsfs file"),
        (vector("bad-magic.kmsfs"), "not a kmsfs file"),
        (vector("version-5.kmsfs"), "version 5 is not supported"),
        (vector("cut-mid-block.kmsfs"), "cut or extended mid-block"),
        ("/nonexistent/file".to_string(), "cannot open"),
        (dir.to_string_lossy().into_owned(), "not a regular file"),
    ] {
        let out = kmsfs(&["inspect", &path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path}: {err}");
        assert!(err.contains(expect), "{path}: {err}");
        assert!(!err.contains("panicked"), "{path}: {err}");
    }
    let out = kmsfs(&["inspect", "--json", &plain.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"], "not_kmsfs");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(kmsfs(&["inspect"]).status.code(), Some(2));
    assert_eq!(kmsfs(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn man_pages_and_completions_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let out = kmsfs(&["generate", "man", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for page in [
        "kmsfs.1",
        "kmsfs-mount.1",
        "kmsfs-fsck.1",
        "kmsfs-rewrap.1",
        "kmsfs-kms-serve.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is a man page");
    }
    let out = kmsfs(&["generate", "completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(
        script.contains("complete -F") && script.contains("rewrap"),
        "{script}"
    );
}
