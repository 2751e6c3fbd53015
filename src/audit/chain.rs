//! A hash-chained JSON-lines log: each line is one JSON object carrying `prev_hash` (the
//! previous line's `hash`, 64 zeros for the first) and `hash`, the lowercase hex SHA-256 of
//! the object's canonical JSON without its `hash` field. Editing, inserting, reordering or
//! deleting a record breaks the chain at that line; cutting records off the end is caught
//! only against the log's head ([`super::head`]).
//!
//! Canonical JSON here: object keys sorted by bytes, no whitespace, serde_json's escaping
//! and number formatting. This module formats and verifies; the writer
//! ([`ChainWriter`], in `writer.rs`) appends, repairs a torn tail and rotates.

use std::io::BufRead;
use std::path::PathBuf;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use super::writer::{ChainOptions, ChainWriter};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `event` of the record a writer appends after setting a torn last line aside.
pub const REPAIRED: &str = "audit_log_repaired";

/// `event` of the record a writer appends when the head names a record the log no longer
/// holds: records were cut off the end before the writer opened it.
pub const CUT_FOUND: &str = "audit_log_cut_found";

/// `event` of a rotated log's first record, which names the file it continues.
pub const ROTATED: &str = "audit_log_rotated";

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("audit log {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path} ends in a whole line that is not a chained record (it was edited); not appending to it. Check it with `kmsfs audit verify`, and move it aside to start a new log")]
    BrokenTail { path: PathBuf },
    #[error("audit log {log} ends in a torn line (a write cut short) and setting it aside in {aside} failed: free space on that filesystem and open the log again")]
    SetAside {
        log: PathBuf,
        aside: PathBuf,
        source: std::io::Error,
    },
}

/// Where and why verification failed. Lines count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record on line {line} is bad: {reason}")]
pub struct FirstBadRecord {
    pub line: u64,
    pub reason: String,
}

/// A torn last line that a writer set aside, as its repair record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The line of the repair record.
    pub line: u64,
    pub time: String,
    pub torn_bytes: u64,
    /// The file beside the log that holds the torn bytes.
    pub set_aside_in: String,
}

/// What verifying one file found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSummary {
    pub records: u64,
    /// `prev_hash` of the first record: GENESIS, or the last hash of `previous_file`.
    pub first_prev: String,
    pub last_hash: String,
    /// The file this one continues, named by its first record (a rotation record).
    pub previous_file: Option<String>,
    pub repairs: Vec<Repair>,
    /// Bytes after the last newline: a write cut short that no writer has set aside yet.
    pub torn_bytes: u64,
    /// Lines of records in which a writer found the head naming a record no longer there.
    pub cuts_found: Vec<u64>,
    /// The line of the record whose hash [`verify_file`] was asked to find.
    pub found_at: Option<u64>,
}

/// Writes `v` with sorted keys and no whitespace.
pub fn canonical_json(v: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Appends the canonical JSON of `v` to `out`. Strings and numbers go through serde_json's
/// own writer (its escaping and number formatting), straight into `out`: a record is
/// written for every key use, so it is formatted once, without a copy of every key or a
/// second serialization for the hash (`docs/performance.md`, "KMS calls in batches, a
/// lean local KMS").
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => write_canonical_map(m, None, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => write_scalar(other, out),
    }
}

fn write_scalar<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing a string, number, bool or null into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// The `hash` a record must carry: SHA-256 over its canonical JSON without `hash`.
pub fn record_hash(record: &Map<String, Value>) -> String {
    let mut bytes = Vec::with_capacity(512);
    hash_of(record, &mut bytes)
}

/// [`record_hash`], serializing into `buf` (cleared first).
pub(super) fn hash_of(record: &Map<String, Value>, buf: &mut Vec<u8>) -> String {
    buf.clear();
    write_canonical_map(record, Some("hash"), buf);
    hex::encode(Sha256::digest(&buf[..]))
}

/// An object's canonical JSON, leaving out the key `skip`.
pub(super) fn write_canonical_map(m: &Map<String, Value>, skip: Option<&str>, out: &mut Vec<u8>) {
    let mut keys: Vec<&String> = m.keys().filter(|k| Some(k.as_str()) != skip).collect();
    keys.sort();
    out.push(b'{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_scalar(k, out);
        out.push(b':');
        write_canonical(&m[k], out);
    }
    out.push(b'}');
}

/// Checks every record of a log that starts a chain; returns how many there are.
pub fn verify(reader: impl BufRead) -> Result<u64, FirstBadRecord> {
    let summary = verify_file(reader, None)?;
    if summary.previous_file.is_some() {
        return Err(FirstBadRecord {
            line: 1,
            reason: "the log continues a rotated file: verify it with `kmsfs audit verify`".into(),
        });
    }
    Ok(summary.records)
}

/// Whether `name` is a plain file name, so a record cannot point a verifier elsewhere.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// Checks every record of one file of a log, which may continue a rotated file; notes the
/// line of the record whose hash is `find`. Bytes after the last newline are a torn line
/// (counted, not an error): the writer sets those aside.
pub fn verify_file(
    mut reader: impl BufRead,
    find: Option<&str>,
) -> Result<FileSummary, FirstBadRecord> {
    let mut s = FileSummary {
        first_prev: GENESIS.into(),
        last_hash: GENESIS.into(),
        ..FileSummary::default()
    };
    let mut buf = Vec::new();
    for line_no in 1.. {
        buf.clear();
        let bad = |reason: &str| FirstBadRecord {
            line: line_no,
            reason: reason.into(),
        };
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| bad(&format!("unreadable: {e}")))?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            s.torn_bytes = n as u64;
            break;
        }
        let record: Map<String, Value> =
            serde_json::from_slice(&buf).map_err(|_| bad("not a JSON object"))?;
        let field = |k: &str| record.get(k).and_then(Value::as_str);
        let (Some(prev), Some(hash)) = (field("prev_hash"), field("hash")) else {
            return Err(bad("missing prev_hash or hash"));
        };
        let event = field("event");
        if line_no == 1 && event == Some(ROTATED) {
            let previous = field("previous_file")
                .filter(|n| is_plain_name(n))
                .ok_or_else(|| bad("a rotation record must name its previous file"))?;
            s.previous_file = Some(previous.into());
            s.first_prev = prev.into();
        } else if event == Some(ROTATED) {
            return Err(bad("a rotation record must be its file's first"));
        } else if prev != s.last_hash {
            return Err(bad(if line_no == 1 {
                "prev_hash of the first record does not start a chain and the record names no previous file (records were removed from the start)"
            } else {
                "prev_hash does not match the previous record (a record was removed, inserted or reordered)"
            }));
        }
        if record_hash(&record) != hash {
            return Err(bad(
                "hash does not match the record's contents (the record was edited)",
            ));
        }
        if event == Some(REPAIRED) {
            s.repairs.push(Repair {
                line: line_no,
                time: field("time").unwrap_or("-").into(),
                torn_bytes: record
                    .get("torn_bytes")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                set_aside_in: field("set_aside_in").unwrap_or("-").into(),
            });
        }
        if event == Some(CUT_FOUND) {
            s.cuts_found.push(line_no);
        }
        if find == Some(hash) {
            s.found_at = Some(line_no);
        }
        s.last_hash = hash.into();
        s.records += 1;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::path::Path;

    fn rec(n: u64) -> Map<String, Value> {
        json!({"eventName": "Decrypt", "n": n, "ctx": {"b": "2", "a": "1"}})
            .as_object()
            .unwrap()
            .clone()
    }

    fn write_log(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let w = ChainWriter::open(&path).unwrap();
        for i in 0..n {
            w.append(rec(i)).unwrap();
        }
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn check(lines: &[String]) -> Result<u64, FirstBadRecord> {
        verify(format!("{}\n", lines.join("\n")).as_bytes())
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v = json!({"b": [1, {"d": 1, "c": "x"}], "a": null});
        assert_eq!(canonical_json(&v), r#"{"a":null,"b":[1,{"c":"x","d":1}]}"#);
    }

    #[test]
    fn intact_log_verifies_and_reopen_continues_the_chain() {
        let (_dir, path) = write_log(3);
        ChainWriter::open(&path).unwrap().append(rec(3)).unwrap();
        let l = lines(&path);
        assert_eq!(l.len(), 4);
        assert_eq!(check(&l), Ok(4));
        assert!(l[0].contains(GENESIS));
    }

    #[test]
    fn edit_delete_reorder_are_detected_at_their_line() {
        let (_dir, path) = write_log(4);
        let l = lines(&path);
        let mut edited = l.clone();
        edited[2] = edited[2].replace("\"n\":2", "\"n\":9");
        assert_eq!(check(&edited).unwrap_err().line, 3);
        let mut deleted = l.clone();
        deleted.remove(1);
        assert_eq!(check(&deleted).unwrap_err().line, 2);
        let mut swapped = l.clone();
        swapped.swap(1, 2);
        assert_eq!(check(&swapped).unwrap_err().line, 2);
        let mut garbage = l.clone();
        garbage[3] = "nonsense".into();
        assert_eq!(check(&garbage).unwrap_err().line, 4);
    }

    #[test]
    fn two_writers_on_one_log_keep_one_chain() {
        // A mount and an offline tool appending to the same log.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.jsonl");
        let a = ChainWriter::open(&path).unwrap();
        let b = ChainWriter::open(&path).unwrap();
        for n in 0..10 {
            if n % 3 == 0 {
                b.append(rec(n)).unwrap();
            } else {
                a.append(rec(n)).unwrap();
            }
        }
        assert_eq!(check(&lines(&path)), Ok(10));
    }

    #[test]
    fn refuses_to_append_after_a_broken_tail() {
        let (_dir, path) = write_log(1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"half\":\n").unwrap();
        assert!(matches!(
            ChainWriter::open(&path),
            Err(ChainError::BrokenTail { .. })
        ));
    }
}
