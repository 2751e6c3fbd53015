//! A real mount when keys or ciphertext go wrong, and what it records: tampered ciphertext
//! reads as EIO with an audit record, the audit log names who and fails to verify once
//! edited, and with the KMS (a separate `kmsfs kms serve`) stopped or slow, sizes,
//! listings, cached keys and other open files keep working.

mod common;
mod mountkit;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;

use common::pattern;
use mountkit::{is_mounted, TestVolume};

#[test]
fn tampering_on_disk_gives_eio_and_an_audit_record() {
    let v = TestVolume::with_init_args(&["--plaintext-names"], vec![]);
    {
        let _m = v.mount();
        fs::write(v.p("victim"), pattern(3 * 4096, 1)).unwrap();
        fs::write(v.p("cut"), pattern(3 * 4096, 2)).unwrap();
    }
    // Flip a bit in block 2, and cut another file at a block boundary. (The mount reads
    // whole 4 KiB pages: in format version 4 the page holding the end of block 0 holds the
    // start of block 1, so the damage is two blocks away from the intact read.)
    let layout = kmsfs::format::Layout::new(kmsfs::format::VERSION, 1024);
    let bs = layout.block_len() as usize;
    let mut bytes = fs::read(v.cipher.join("victim")).unwrap();
    bytes[layout.place(2, bs).data as usize + 77] ^= 0x10;
    fs::write(v.cipher.join("victim"), &bytes).unwrap();
    let cut = fs::read(v.cipher.join("cut")).unwrap();
    let at = layout.cipher_len(2 * bs as u64).unwrap() as usize;
    fs::write(v.cipher.join("cut"), &cut[..at]).unwrap();

    let _m = v.mount();
    let f = File::open(v.p("victim")).unwrap();
    let mut buf = vec![0u8; bs];
    f.read_exact_at(&mut buf, 0).unwrap(); // block 0 is intact
    assert_eq!(buf, pattern(3 * 4096, 1)[..bs]);
    let err = f.read_exact_at(&mut buf, 2 * bs as u64).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO expected, got {err}");
    let err = fs::read(v.p("cut")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO expected, got {err}");
    let records = v.audit_records();
    let integrity: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "integrity_failure")
        .collect();
    assert!(
        integrity
            .iter()
            .any(|r| r["path"] == "victim" && r["block"] == 2),
        "{integrity:?}"
    );
    assert!(
        integrity
            .iter()
            .any(|r| r["path"] == "cut" && r["block"] == 1),
        "{integrity:?}"
    );
}

#[test]
fn the_audit_log_names_who_and_verifies_until_edited() {
    let v = TestVolume::new();
    {
        let _m = v.mount();
        fs::write(v.p("a"), b"x").unwrap();
        fs::read(v.p("a")).unwrap();
    }
    {
        let _m = v.mount();
        fs::read(v.p("a")).unwrap();
        fs::read(v.p("a")).unwrap();
    }
    let records = v.audit_records();
    let events: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"data_key_generated"), "{events:?}");
    assert!(events.contains(&"key_unwrapped"), "{events:?}");
    assert!(events.contains(&"key_from_cache"), "{events:?}");
    for r in &records {
        for field in [
            "time",
            "volume_id",
            "file_id",
            "path",
            "key_arn",
            "uid",
            "gid",
            "pid",
            "process",
            "outcome",
            "hash",
            "prev_hash",
        ] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert!(!r["process"].as_str().unwrap().is_empty());
    }
    let ok = v.kmsfs(&["audit", "verify", v.audit.to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Edit one record: verification fails and names the line.
    let text = fs::read_to_string(&v.audit).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.contains("\"path\":\"a\""))
        .unwrap();
    let edited = text.replacen("\"path\":\"a\"", "\"path\":\"b\"", 1);
    assert_ne!(text, edited);
    fs::write(&v.audit, edited).unwrap();
    let bad = v.kmsfs(&["audit", "verify", v.audit.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(err.contains(&format!("line {line} ")), "{err}");
}

#[test]
fn getattr_and_readdir_work_with_the_kms_gone() {
    // A volume on a separate KMS server: stop it, and `ls -l` still works (no KMS needed
    // for sizes), while opening a file not yet opened fails with EIO.
    let tmp = tempfile::tempdir().unwrap();
    let mut kms = mountkit::KmsServer::start(tmp.path(), 0, &[]);
    let url = kms.url.clone();
    let key = kms.create_key();
    let v = TestVolume::with_init_args(&["--kms-endpoint", &url, "--key", &key], kms.env());
    let _m = v.mount();
    for i in 0..5 {
        fs::write(v.p(&format!("f{i}")), pattern(5000 + i, i as u64)).unwrap();
    }
    drop(_m);
    let m = v.mount_with(&["--key-ttl", "0"]);
    assert_eq!(fs::read(v.p("f0")).unwrap(), pattern(5000, 0));
    let keep_open = File::open(v.p("f1")).unwrap();
    kms.stop();
    let listed: Vec<_> = fs::read_dir(&v.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed.len(), 5);
    for i in 0..5 {
        assert_eq!(
            fs::metadata(v.p(&format!("f{i}"))).unwrap().len(),
            5000 + i as u64
        );
    }
    // A file already open keeps its key; a new open needs the KMS and fails cleanly.
    let mut buf = vec![0u8; 5001];
    keep_open.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, pattern(5001, 1));
    let err = fs::read(v.p("f2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    assert!(is_mounted(&v.mnt), "the mount must stay up");
    // The KMS comes back on the same port: the same mount recovers by itself.
    let _kms2 = mountkit::KmsServer::start(tmp.path(), kms.port, &[]);
    assert_eq!(fs::read(v.p("f2")).unwrap(), pattern(5002, 2));
    let failures = v
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "kms_failure")
        .count();
    assert!(failures >= 1, "a KMS failure must be audited\n{}", m.log());
}

#[test]
fn cached_keys_keep_working_while_the_kms_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kms = mountkit::KmsServer::start(tmp.path(), 0, &[]);
    let url = kms.url.clone();
    let key = kms.create_key();
    let v = TestVolume::with_init_args(&["--kms-endpoint", &url, "--key", &key], kms.env());
    {
        let _m = v.mount();
        fs::write(v.p("cached"), b"in the cache").unwrap();
        fs::write(v.p("cold"), b"never opened").unwrap();
    }
    let _m = v.mount_with(&["--key-ttl", "10m"]);
    assert_eq!(fs::read(v.p("cached")).unwrap(), b"in the cache");
    kms.stop();
    // Closed and reopened: served from the key cache.
    assert_eq!(fs::read(v.p("cached")).unwrap(), b"in the cache");
    assert_eq!(fs::read(v.p("cold")).unwrap_err().raw_os_error(), Some(5));
    // Creating needs a fresh key; the pool may still hold some, so only check the mount
    // stays up and answers.
    let _ = fs::write(v.p("new"), b"x");
    assert!(is_mounted(&v.mnt));
}

#[test]
fn a_slow_kms_call_does_not_stall_io_on_other_open_files() {
    let tmp = tempfile::tempdir().unwrap();
    let kms = mountkit::KmsServer::start(tmp.path(), 0, &["--latency", "1500"]);
    let url = kms.url.clone();
    let key = kms.create_key();
    let v = TestVolume::with_init_args(&["--kms-endpoint", &url, "--key", &key], kms.env());
    {
        let _m = v.mount();
        fs::write(v.p("a"), pattern(50_000, 1)).unwrap();
        fs::write(v.p("b"), pattern(50_000, 2)).unwrap();
    }
    let _m = v.mount_with(&["--key-ttl", "0"]);
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .open(v.p("a"))
        .unwrap();
    let b_path = v.p("b");
    let slow_open = std::thread::spawn(move || fs::read(b_path).unwrap());
    // While "b" waits 1.5 s for its key, "a" must keep serving reads and writes.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut buf = vec![0u8; 4096];
    for i in 0..20u64 {
        a.write_all_at(&[i as u8; 100], i * 1000).unwrap();
        a.read_exact_at(&mut buf, i * 2000).unwrap();
    }
    assert!(
        !slow_open.is_finished(),
        "the I/O on 'a' should have finished while 'b' was still opening"
    );
    assert_eq!(slow_open.join().unwrap(), pattern(50_000, 2));
}
