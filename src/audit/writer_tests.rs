//! The writer's repairs, syncs, rotation and head, checked by the verifier.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::*;
use crate::audit::chain::{verify_file, FileSummary};
use crate::audit::set::{verify_set, HeadCheck, SetError};

fn rec(n: u64) -> Map<String, Value> {
    json!({"event": "key_unwrapped", "n": n, "pad": "x".repeat(100)})
        .as_object()
        .unwrap()
        .clone()
}

fn summary(path: &Path) -> FileSummary {
    verify_file(std::io::BufReader::new(File::open(path).unwrap()), None).unwrap()
}

fn log_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("audit.jsonl")
}

/// A log of `n` records, closed.
fn written(n: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(&dir);
    let w = ChainWriter::open(&log).unwrap();
    for i in 0..n {
        w.append(rec(i)).unwrap();
    }
    (dir, log)
}

/// Cuts `path` back to its first `n` lines.
fn keep_lines(path: &Path, n: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let kept: Vec<&str> = text.lines().take(n).collect();
    std::fs::write(path, format!("{}\n", kept.join("\n"))).unwrap();
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn quick() -> ChainOptions {
    ChainOptions {
        sync_interval: Duration::from_millis(10),
        ..ChainOptions::default()
    }
}

#[test]
fn a_torn_last_line_is_set_aside_with_a_record_that_says_so() {
    let (dir, log) = written(3);
    let whole = std::fs::metadata(&log).unwrap().len();
    let torn = b"{\"event\":\"key_unwrapped\",\"n\":3,\"pa\0\0\0";
    append_bytes(&log, torn);

    let w = ChainWriter::open(&log).unwrap();
    w.append(rec(4)).unwrap();
    drop(w);
    let s = summary(&log);
    assert_eq!(s.records, 5, "three records, the repair, one more");
    assert_eq!(s.torn_bytes, 0);
    let [repair] = &s.repairs[..] else {
        panic!("one repair expected: {:?}", s.repairs)
    };
    assert_eq!(repair.line, 4);
    assert_eq!(repair.torn_bytes, torn.len() as u64);
    let aside = dir.path().join(&repair.set_aside_in);
    assert!(
        repair.set_aside_in.starts_with("audit.jsonl.torn-")
            && repair.set_aside_in.ends_with(&format!("-at-{whole}")),
        "{}",
        repair.set_aside_in
    );
    assert_eq!(std::fs::read(&aside).unwrap(), torn);
    let mode = std::fs::metadata(&aside).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_bad_whole_line_is_still_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(&dir);
    ChainWriter::open(&log).unwrap().append(rec(0)).unwrap();
    append_bytes(&log, b"{\"edited\":1}\n");
    assert!(matches!(
        ChainWriter::open(&log),
        Err(ChainError::BrokenTail { .. })
    ));
}

#[test]
fn a_writer_sets_aside_a_line_another_process_tore() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(&dir);
    let w = ChainWriter::open(&log).unwrap();
    w.append(rec(0)).unwrap();
    append_bytes(&log, b"{\"n\":");
    w.append(rec(1)).unwrap();
    drop(w);
    let s = summary(&log);
    assert_eq!((s.records, s.repairs.len()), (3, 1));
}

/// Waits (bounded) until the head names `records` records of the log.
fn wait_for_head(log: &Path, records: u64) -> Head {
    let start = Instant::now();
    loop {
        if let Some(h) = head::read(&head::beside(log)).unwrap() {
            if h.records == records {
                return h;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the head never reached {records} records"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn records_are_synced_then_the_head_names_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(&dir);
    let w = ChainWriter::open_with(&log, quick()).unwrap();
    w.append(rec(0)).unwrap();
    let last = w.append(rec(1)).unwrap();
    // Written by the syncer, without waiting for the writer to close.
    let h = wait_for_head(&log, 2);
    assert_eq!((h.hash, h.log.as_str()), (last, "audit.jsonl"));
    let last = w.append(rec(2)).unwrap();
    drop(w);
    // Closing syncs what is left at once.
    let h = head::read(&head::beside(&log)).unwrap().unwrap();
    assert_eq!((h.records, h.hash), (3, last));

    let per_record = ChainOptions {
        sync_interval: Duration::ZERO,
        ..ChainOptions::default()
    };
    let w = ChainWriter::open_with(&log, per_record).unwrap();
    let last = w.append(rec(3)).unwrap();
    let h = head::read(&head::beside(&log)).unwrap().unwrap();
    assert_eq!((h.records, h.hash), (4, last));
}

#[test]
fn records_cut_off_the_end_are_caught_by_the_head() {
    let (_dir, log) = written(5);
    let report = verify_set(&log, None, false).unwrap();
    assert!(
        matches!(
            report.head,
            HeadCheck::Found {
                line: 5,
                since: 0,
                ..
            }
        ),
        "{:?}",
        report.head
    );
    keep_lines(&log, 3);
    match verify_set(&log, None, false) {
        Err(SetError::Cut { have: 3, head, .. }) => assert_eq!(head.records, 5),
        other => panic!("a cut expected, got {other:?}"),
    }
}

#[test]
fn a_writer_that_opens_a_cut_log_records_the_cut() {
    let (_dir, log) = written(5);
    keep_lines(&log, 3);
    // The next writer's head would hide the cut; its record keeps it in the chain.
    ChainWriter::open(&log).unwrap().append(rec(5)).unwrap();
    assert!(
        matches!(
            verify_set(&log, None, false),
            Err(SetError::CutRecorded { line: 4, .. })
        ),
        "{:?}",
        verify_set(&log, None, false)
    );
    // So does a log replaced by an empty one.
    std::fs::remove_file(&log).unwrap();
    ChainWriter::open(&log).unwrap().append(rec(6)).unwrap();
    assert!(matches!(
        verify_set(&log, None, false),
        Err(SetError::CutRecorded { line: 1, .. })
    ));
}

#[test]
fn rotation_carries_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_in(&dir);
    let opts = ChainOptions {
        rotate_bytes: 1000,
        ..quick()
    };
    // Two writers on one log, as a mount and an offline tool: each follows the other's
    // rotations.
    let a = ChainWriter::open_with(&log, opts.clone()).unwrap();
    let b = ChainWriter::open_with(&log, opts.clone()).unwrap();
    for n in 0..40 {
        if n % 3 == 0 { &b } else { &a }.append(rec(n)).unwrap();
    }
    drop((a, b));
    // A writer opening the rotated log later finds the head's record where it should.
    let c = ChainWriter::open_with(&log, opts).unwrap();
    c.append(rec(40)).unwrap();
    drop(c);
    let report = verify_set(&log, None, false).unwrap();
    let files = report.files.len() as u64;
    assert!(files > 3, "{files} files");
    let total: u64 = report.files.iter().map(|f| f.summary.records).sum();
    assert_eq!(
        total,
        41 + files - 1,
        "every record, and one rotation record per file"
    );
    assert!(
        matches!(report.head, HeadCheck::Found { since: 0, .. }),
        "{:?} {:?}",
        report.head,
        report.files
    );
    for f in &report.files {
        let len = std::fs::metadata(&f.path).unwrap().len();
        assert!(len < 1000 + 400, "{} holds {len} bytes", f.path.display());
    }

    // A file missing from the middle is found; the oldest may be pruned on purpose.
    let oldest = report.files[0].path.clone();
    let second = report.files[1].path.clone();
    let second_bytes = std::fs::read(&second).unwrap();
    std::fs::remove_file(&second).unwrap();
    assert!(matches!(
        verify_set(&log, None, false),
        Err(SetError::Missing { .. })
    ));
    std::fs::write(&second, &second_bytes).unwrap();
    std::fs::remove_file(&oldest).unwrap();
    assert!(matches!(
        verify_set(&log, None, false),
        Err(SetError::Missing { .. })
    ));
    let pruned = verify_set(&log, None, true).unwrap();
    assert_eq!(pruned.files.len() as u64, files - 1);
    assert!(pruned.pruned.is_some());

    // A rotated file cut short breaks the link to its successor.
    let text = String::from_utf8(second_bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(
        &second,
        format!("{}\n", lines[..lines.len() - 1].join("\n")),
    )
    .unwrap();
    assert!(matches!(
        verify_set(&log, None, true),
        Err(SetError::Link { .. })
    ));
}
