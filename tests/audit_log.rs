//! The audit log under faults (issue 21): a torn last line no longer stops the mount and
//! `kmsfs audit verify` reports its repair; a full disk leaves no part of a record behind
//! (a real, small tmpfs filled by the test, as root); records reach the head on their
//! schedule while mounted; records cut off the end are reported; a rotated log verifies
//! across its files.

mod mountkit;

use std::fs::{self, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kmsfs::audit::chain::{verify, ChainWriter};
use mountkit::TestVolume;
use serde_json::{json, Map, Value};

fn verify_cli(v: &TestVolume, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["audit", "verify", v.audit.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = v.kmsfs(&args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn a_torn_last_line_is_set_aside_and_the_volume_mounts_again() {
    let v = TestVolume::new();
    {
        let _m = v.mount();
        fs::write(v.p("a"), b"kept").unwrap();
    }
    // What a full disk or a crash leaves: half a record, no newline.
    let torn = b"{\"event\":\"key_unwrapped\",\"path\":\"a\",\"ti";
    append_bytes(&v.audit, torn);
    {
        let _m = v.mount();
        assert_eq!(fs::read(v.p("a")).unwrap(), b"kept");
    }
    let (ok, out, err) = verify_cli(&v, &[]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "a torn last line of {} bytes was set aside in audit.jsonl.torn-",
            torn.len()
        )),
        "{out}"
    );
    let aside: Vec<PathBuf> = fs::read_dir(v.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("audit.jsonl.torn-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(fs::read(&aside[0]).unwrap(), torn);
    // The daemon left no temporary head behind when it exited.
    let names: Vec<String> = fs::read_dir(v.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"audit.jsonl.head".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains(".head.tmp")), "{names:?}");
}

#[test]
fn records_cut_off_the_end_are_reported_against_the_head() {
    let v = TestVolume::new();
    {
        let _m = v.mount();
        for n in 0..5 {
            fs::write(v.p(&format!("f{n}")), b"x").unwrap();
        }
        // Records reach the disk, and then the head, while the volume is mounted.
        let records = v.audit_records().len();
        wait_for_head(&v.audit, records);
    }
    let (ok, out, err) = verify_cli(&v, &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("head "), "{out}");
    let text = fs::read_to_string(&v.audit).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = format!("{}\n", lines[..lines.len() - 2].join("\n"));
    fs::write(&v.audit, cut).unwrap();
    let (ok, out, err) = verify_cli(&v, &[]);
    assert!(!ok, "a log cut short must not verify: {out}");
    assert!(err.contains("records were cut off the end"), "{err}");
    // Nor once a mount has written to it since, and moved the head on.
    {
        let _m = v.mount();
        fs::write(v.p("after"), b"x").unwrap();
    }
    let (ok, out, err) = verify_cli(&v, &[]);
    assert!(!ok, "a cut log must not verify after a mount: {out}");
    assert!(err.contains("records were cut off the end"), "{err}");
}

/// Waits (bounded) until the head beside `log` names its `records`-th record.
fn wait_for_head(log: &Path, records: usize) {
    let head = log.with_file_name("audit.jsonl.head");
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(&head).unwrap_or_default();
        let h: Value = serde_json::from_str(&text).unwrap_or_default();
        if h["records"].as_u64() == Some(records as u64) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no head naming {records} records at {} ({text:?})",
            head.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_rotated_log_verifies_across_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let opts = kmsfs::audit::ChainOptions {
        rotate_bytes: 2000,
        ..Default::default()
    };
    let w = ChainWriter::open_with(&log, opts).unwrap();
    for n in 0..30 {
        w.append(record(n)).unwrap();
    }
    drop(w);
    let out = Command::new(mountkit::bin())
        .args(["audit", "verify", log.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = text.lines().filter(|l| l.contains("chain intact")).count();
    assert!(files > 2, "{text}");
    assert_eq!(
        text.matches(", continues audit.jsonl.").count(),
        files - 1,
        "{text}"
    );
}

fn record(n: u64) -> Map<String, Value> {
    json!({"event": "key_unwrapped", "n": n, "path": "p".repeat(200)})
        .as_object()
        .unwrap()
        .clone()
}

/// A small tmpfs, unmounted (and its directory removed) on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount() -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: filling a real filesystem needs root, to mount a small tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs failed");
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes `path` until the filesystem is full, the last bytes one at a time so that no
/// free page is left.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    for chunk in [4096usize, 1] {
        while f.write_all(&vec![0u8; chunk]).is_ok() {}
    }
}

#[test]
fn a_full_disk_leaves_no_part_of_a_record_and_appends_resume_once_freed() {
    let Some(small) = SmallFs::mount() else {
        return;
    };
    let log = small.path().join("audit.jsonl");
    let filler = small.path().join("filler");
    let w = ChainWriter::open(&log).unwrap();
    w.append(record(0)).unwrap();
    fill(&filler);
    let mut written = 1;
    let failed = loop {
        match w.append(record(written)) {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 10_000, "the filesystem never filled");
    };
    assert!(
        format!("{:?}", failed).contains("StorageFull"),
        "ENOSPC expected: {failed:?}"
    );
    let bytes = fs::read(&log).unwrap();
    assert_eq!(
        bytes.last(),
        Some(&b'\n'),
        "a partial record was left behind"
    );

    fs::remove_file(&filler).unwrap();
    w.append(record(written)).unwrap();
    drop(w);
    let again = ChainWriter::open(&log).unwrap();
    again.append(record(written + 1)).unwrap();
    drop(again);
    let records = verify(BufReader::new(fs::File::open(&log).unwrap())).unwrap();
    assert_eq!(
        records,
        written + 2,
        "every record that was written, and no repair"
    );
}
