//! The writer's work on the log's files, done under the log's `flock`: finding where the
//! last whole record ends, setting a torn tail aside, and the file steps of a rotation.
//! It knows lines and files, not what a record holds.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::chain::{ChainError, GENESIS};

/// Opens (creating, 0600) a log for appending and reading.
pub(super) fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
}

/// Which file this is, to notice that another process rotated the log.
pub(super) fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Counts the newlines in bytes `from..len` of `file` and finds where the last whole
/// line ends (`from` when there is none): what lies past it is a torn line.
pub(super) fn scan(file: &File, from: u64, len: u64) -> io::Result<(u64, u64)> {
    let mut buf = vec![0u8; 1 << 16];
    let (mut lines, mut cut, mut pos) = (0, from, from);
    while pos < len {
        let n = buf.len().min((len - pos) as usize);
        file.read_exact_at(&mut buf[..n], pos)?;
        for (i, _) in buf[..n].iter().enumerate().filter(|(_, b)| **b == b'\n') {
            lines += 1;
            cut = pos + i as u64 + 1;
        }
        pos += n as u64;
    }
    Ok((lines, cut))
}

/// The `hash` of the whole line that ends at byte `end` (GENESIS when `end` is 0).
pub(super) fn last_hash(file: &File, end: u64, path: &Path) -> Result<String, ChainError> {
    if end == 0 {
        return Ok(GENESIS.to_string());
    }
    // Records are short: the last one is within the final 64 KiB.
    let start = end.saturating_sub(65536);
    let mut tail = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut tail, start)
        .map_err(|source| ChainError::Io {
            path: path.into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.trim_end().rsplit('\n').next().unwrap_or("");
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("hash")?.as_str().map(str::to_owned))
        .ok_or_else(|| ChainError::BrokenTail { path: path.into() })
}

/// Moves bytes `cut..len` of the log into a new 0600 file beside it and cuts the log back
/// to `cut`. The copy is on disk before the cut, so a crash between the two loses nothing
/// (the next open sets the same bytes aside again, under another name).
pub(super) fn set_aside(
    file: &File,
    log: &Path,
    cut: u64,
    len: u64,
) -> Result<PathBuf, ChainError> {
    let base = format!("torn-{}-at-{cut}", stamp());
    let mut aside = beside(log, &base);
    let failed = |aside: &Path| {
        let aside = aside.to_path_buf();
        move |source| ChainError::SetAside {
            log: log.into(),
            aside,
            source,
        }
    };
    let mut torn = vec![0u8; (len - cut) as usize];
    file.read_exact_at(&mut torn, cut).map_err(failed(&aside))?;
    let mut n = 0;
    let mut out = loop {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
        {
            Ok(f) => break f,
            // Set aside before, by a run that crashed before cutting the log.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => {
                n += 1;
                aside = beside(log, &format!("{base}-{n}"));
            }
            Err(e) => return Err(failed(&aside)(e)),
        }
    };
    out.write_all(&torn)
        .and_then(|()| out.sync_all())
        .and_then(|()| sync_dir(log))
        .map_err(failed(&aside))?;
    file.set_len(cut)
        .and_then(|()| file.sync_data())
        .map_err(|source| ChainError::Io {
            path: log.into(),
            source,
        })?;
    Ok(aside)
}

/// Gives the log a second, timestamped name (`audit.jsonl.20261203T181800Z`): the name the
/// rotated file keeps once a new file takes the log's own name.
pub(super) fn link_aside(log: &Path) -> io::Result<PathBuf> {
    let stamp = stamp();
    for n in 0.. {
        let suffix = if n == 0 {
            stamp.clone()
        } else {
            format!("{stamp}-{n}")
        };
        let rotated = beside(log, &suffix);
        match std::fs::hard_link(log, &rotated) {
            Ok(()) => return Ok(rotated),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

/// A fresh (emptied) file to build the log's successor in before it takes the log's name.
pub(super) fn successor(log: &Path) -> io::Result<(PathBuf, File)> {
    let tmp = beside(log, &format!("next-{}", std::process::id()));
    let file = open_log(&tmp)?;
    // Left by a rotation that failed part way.
    file.set_len(0)?;
    Ok((tmp, file))
}

/// `LOG.suffix`, in the log's directory.
pub(super) fn beside(log: &Path, suffix: &str) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    log.with_file_name(name)
}

/// The log's file name, as records and the head name it.
pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Makes the entries of the directory holding `path` durable.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Now, as RFC 3339 in UTC to the second, for records.
pub(super) fn now_rfc3339() -> String {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Now, compact and sortable, for file names.
fn stamp() -> String {
    let t = OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Whether the first `len` bytes of `file` contain `needle`.
pub(super) fn holds(file: &File, len: u64, needle: &[u8]) -> io::Result<bool> {
    let mut buf = vec![0u8; (1 << 16) + needle.len()];
    let (mut pos, mut kept) = (0u64, 0usize);
    while pos < len {
        let n = (buf.len() - kept).min((len - pos) as usize);
        file.read_exact_at(&mut buf[kept..kept + n], pos)?;
        let filled = kept + n;
        if buf[..filled].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        // Keep the end, in case the needle straddles two reads.
        kept = needle.len().saturating_sub(1).min(filled);
        buf.copy_within(filled - kept..filled, 0);
        pos += n as u64;
    }
    Ok(false)
}

/// The first line of `file`, up to 64 KiB.
pub(super) fn first_line(file: &File) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1 << 16];
    let n = file.read_at(&mut buf, 0)?;
    buf.truncate(n);
    let end = buf.iter().position(|b| *b == b'\n').unwrap_or(n);
    buf.truncate(end);
    Ok(buf)
}
