//! Verifying a whole log: the current file and the rotated files it continues (each
//! rotated file is found by the name the next one's first record gives it, in the same
//! directory), the links between them, and the head ([`super::head`]).

use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::chain::{verify_file, FileSummary, FirstBadRecord};
use super::head::{self, Head};

/// One file of a log and what verifying it found.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    pub summary: FileSummary,
}

/// Where the head's last record was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadCheck {
    /// No head at this path: records cut off the end would go unnoticed.
    Absent(PathBuf),
    /// The head's record is on `line` of `file`; `since` records were written after it.
    Found {
        path: PathBuf,
        file: PathBuf,
        line: u64,
        since: u64,
    },
}

/// What verifying a log found, when it is intact.
#[derive(Debug, Clone)]
pub struct SetReport {
    /// Oldest first; the last is the file asked about.
    pub files: Vec<FileReport>,
    /// The file the oldest one continues, deleted on purpose (`allow_pruned`).
    pub pruned: Option<String>,
    pub head: HeadCheck,
}

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("cannot read {}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {bad}", .path.display())]
    Bad { path: PathBuf, bad: FirstBadRecord },
    #[error("{}: continues {missing}, which is not there. If old files were deleted on purpose, pass --allow-pruned to verify from {} on", .path.display(), .path.display())]
    Missing { path: PathBuf, missing: String },
    #[error("{}: its first record continues a chain that ends in {want}, but {} ends in {got} (a file was replaced or records were cut off its end)", .path.display(), .previous.display())]
    Link {
        path: PathBuf,
        previous: PathBuf,
        want: String,
        got: String,
    },
    #[error("{}: line {line}: a writer found that the head named a record this log no longer held: records were cut off the end, or the log was replaced, before that writer opened it", .path.display())]
    CutRecorded { path: PathBuf, line: u64 },
    #[error("{}: names {} more than once", .path.display(), .again.display())]
    Loop { path: PathBuf, again: PathBuf },
    #[error("head {}: its last record (record {} of {}, hash {}) is not in the log: records were cut off the end, or the log was replaced. The log now ends at record {have} of {}", .path.display(), .head.records, .head.log, .head.hash, .current.display())]
    Cut {
        path: PathBuf,
        head: Box<Head>,
        current: PathBuf,
        have: u64,
    },
}

/// Verifies the log whose current file is `current`, following it back through the files
/// it continues, against the head at `head_path` (default: beside `current`).
pub fn verify_set(
    current: &Path,
    head_path: Option<&Path>,
    allow_pruned: bool,
) -> Result<SetReport, SetError> {
    let head_path = head_path.map_or_else(|| head::beside(current), Path::to_path_buf);
    let head = head::read(&head_path).map_err(|source| SetError::Io {
        path: head_path.clone(),
        source,
    })?;
    let find = head.as_ref().map(|h| h.hash.as_str());
    let mut files: Vec<FileReport> = Vec::new();
    let mut pruned = None;
    let mut path = current.to_path_buf();
    loop {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(source) => return Err(SetError::Io { path, source }),
        };
        let summary = verify_file(BufReader::new(file), find).map_err(|bad| SetError::Bad {
            path: path.clone(),
            bad,
        })?;
        let previous = summary.previous_file.clone();
        files.push(FileReport {
            path: path.clone(),
            summary,
        });
        let Some(name) = previous else { break };
        let older = path.with_file_name(&name);
        if files.iter().any(|f| f.path == older) {
            return Err(SetError::Loop { path, again: older });
        }
        if !older.exists() {
            if allow_pruned {
                pruned = Some(name);
                break;
            }
            return Err(SetError::Missing {
                path,
                missing: name,
            });
        }
        path = older;
    }
    files.reverse();
    check_links(&files)?;
    for f in &files {
        if let Some(&line) = f.summary.cuts_found.first() {
            return Err(SetError::CutRecorded {
                path: f.path.clone(),
                line,
            });
        }
    }
    let head = match head {
        None => HeadCheck::Absent(head_path),
        Some(h) => find_head(&files, head_path, h)?,
    };
    Ok(SetReport {
        files,
        pruned,
        head,
    })
}

/// Each file's first record continues its predecessor's last.
fn check_links(files: &[FileReport]) -> Result<(), SetError> {
    for (i, f) in files.iter().enumerate() {
        // The oldest file starts a chain (`verify_file` checked that) or continues a
        // pruned one.
        let Some(older) = i.checked_sub(1).map(|j| &files[j]) else {
            continue;
        };
        let want = &f.summary.first_prev;
        let (previous, got) = (older.path.clone(), older.summary.last_hash.clone());
        if *want != got {
            return Err(SetError::Link {
                path: f.path.clone(),
                previous,
                want: want.clone(),
                got,
            });
        }
    }
    Ok(())
}

fn find_head(files: &[FileReport], path: PathBuf, head: Head) -> Result<HeadCheck, SetError> {
    let mut since = 0;
    for f in files.iter().rev() {
        match f.summary.found_at {
            Some(line) => {
                return Ok(HeadCheck::Found {
                    path,
                    file: f.path.clone(),
                    line,
                    since: since + f.summary.records - line,
                })
            }
            None => since += f.summary.records,
        }
    }
    let current = files.last().map(|f| (f.path.clone(), f.summary.records));
    let (current, have) = current.unwrap_or_default();
    Err(SetError::Cut {
        path,
        head: Box::new(head),
        current,
        have,
    })
}
