//! A hash-chained JSON-lines log: each line is one JSON object carrying `prev_hash` (the
//! previous line's `hash`, 64 zeros for the first) and `hash`, the lowercase hex SHA-256 of
//! the object's canonical JSON without its `hash` field. Editing, inserting, reordering or
//! deleting a record breaks the chain at that line; only cutting records off the end goes
//! unnoticed, unless the reader knows the last hash (the writer returns it).
//!
//! Canonical JSON here: object keys sorted by bytes, no whitespace, serde_json's escaping
//! and number formatting. The writer appends whole lines with one `write` on an
//! `O_APPEND` file under a mutex, so concurrent callers in one process never interleave.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("audit log {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path} ends in a line that is not a chained record; not appending to it")]
    BrokenTail { path: PathBuf },
}

/// Where and why verification failed. Lines count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record on line {line} is bad: {reason}")]
pub struct FirstBadRecord {
    pub line: u64,
    pub reason: String,
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
fn hash_of(record: &Map<String, Value>, buf: &mut Vec<u8>) -> String {
    buf.clear();
    write_canonical_map(record, Some("hash"), buf);
    hex::encode(Sha256::digest(&buf[..]))
}

/// An object's canonical JSON, leaving out the key `skip`.
fn write_canonical_map(m: &Map<String, Value>, skip: Option<&str>, out: &mut Vec<u8>) {
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

/// Appends chained records to one file. Several processes may append to the same log
/// (a mount and `kmsfs fsck`, say): each append takes an exclusive `flock` and chains onto
/// whatever record is last in the file at that moment.
pub struct ChainWriter {
    path: PathBuf,
    /// The file, the last hash this writer saw, and the file length right after it.
    inner: Mutex<(File, String, u64)>,
}

/// The `hash` of the last record in `file` (GENESIS for an empty file).
fn last_hash(file: &File, len: u64, path: &Path) -> Result<String, ChainError> {
    if len == 0 {
        return Ok(GENESIS.to_string());
    }
    // Records are short: the last one is within the final 64 KiB.
    let start = len.saturating_sub(65536);
    let mut tail = vec![0u8; (len - start) as usize];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut tail, start).map_err(|source| {
        ChainError::Io {
            path: path.into(),
            source,
        }
    })?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.trim_end().rsplit('\n').next().unwrap_or("");
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("hash")?.as_str().map(str::to_owned))
        .ok_or_else(|| ChainError::BrokenTail { path: path.into() })
}

impl ChainWriter {
    /// Opens (creating, 0600) `path` and continues the chain from its last record.
    pub fn open(path: &Path) -> Result<Self, ChainError> {
        let io = |source| ChainError::Io {
            path: path.into(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let last = last_hash(&file, len, path)?;
        Ok(ChainWriter {
            path: path.into(),
            inner: Mutex::new((file, last, len)),
        })
    }

    /// Adds `prev_hash` and `hash` to `record` and appends it; returns the new hash.
    pub fn append(&self, mut record: Map<String, Value>) -> Result<String, ChainError> {
        let io = |source| ChainError::Io {
            path: self.path.clone(),
            source,
        };
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (file, last, seen_len) = &mut *guard;
        rustix::fs::flock(&*file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(e.into()))?;
        let result = (|| {
            // Another process appended since our last record: chain onto its record.
            let len = file.metadata().map_err(io)?.len();
            if len != *seen_len {
                *last = last_hash(file, len, &self.path)?;
            }
            record.insert("prev_hash".into(), Value::String(last.clone()));
            let mut line = Vec::with_capacity(512);
            let hash = hash_of(&record, &mut line);
            record.insert("hash".into(), Value::String(hash.clone()));
            line.clear();
            write_canonical_map(&record, None, &mut line);
            line.push(b'\n');
            file.write_all(&line).map_err(io)?;
            *last = hash.clone();
            *seen_len = len + line.len() as u64;
            Ok(hash)
        })();
        let _ = rustix::fs::flock(&*file, rustix::fs::FlockOperation::Unlock);
        result
    }
}

/// Checks every record of a log; returns how many there are.
pub fn verify(reader: impl BufRead) -> Result<u64, FirstBadRecord> {
    let mut expected_prev = GENESIS.to_string();
    let mut count = 0;
    for (i, line) in reader.lines().enumerate() {
        let line_no = i as u64 + 1;
        let bad = |reason: &str| FirstBadRecord {
            line: line_no,
            reason: reason.into(),
        };
        let line = line.map_err(|e| bad(&format!("unreadable: {e}")))?;
        let record: Map<String, Value> =
            serde_json::from_str(&line).map_err(|_| bad("not a JSON object"))?;
        let prev = record.get("prev_hash").and_then(Value::as_str);
        let hash = record.get("hash").and_then(Value::as_str);
        let (Some(prev), Some(hash)) = (prev, hash) else {
            return Err(bad("missing prev_hash or hash"));
        };
        if prev != expected_prev {
            return Err(bad("prev_hash does not match the previous record (a record was removed, inserted or reordered)"));
        }
        if record_hash(&record) != hash {
            return Err(bad(
                "hash does not match the record's contents (the record was edited)",
            ));
        }
        expected_prev = hash.to_owned();
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        verify(lines.join("\n").as_bytes())
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
