//! `fsck`: checks a volume offline, read only. Every directory record and name, every
//! symlink target and encrypted xattr value, every file's header, key (unwrapped through
//! the KMS once per file, audited) and block. Reports each damaged file with what is wrong
//! and where. `fsck --repair` ([`super::repair`]) runs the same check with a hook that
//! zeroes a file's nonzero slack, the one repair that needs the file read whole first.

use crate::namespace::Place;
use std::os::fd::AsFd;

use serde::Serialize;

use super::walk::{walk, Entry, Kind, ProblemKind};
use crate::file::{EncryptedFile, FileError};
use crate::kms::KmsError;
use crate::namespace::NamespaceError;
use crate::volume::{Requester, Volume, VolumeError};

/// Bad blocks listed per file at most (the count is always exact).
const MAX_BLOCKS_LISTED: usize = 100;

#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub plaintext_bytes: u64,
    pub damaged: Vec<Damaged>,
    pub unchecked: Vec<Unchecked>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.unchecked.is_empty()
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Damaged {
    /// Plaintext path (or the plaintext directory, for an entry whose name is damaged).
    pub path: String,
    pub cipher_path: String,
    /// A stable name: `name`, `directory_record`, `symlink_target`, `xattr`, `key_slot`,
    /// or a file error kind (`wrong_key`, `invalid_cipher_len`, `block_auth`, ...).
    pub problem: String,
    pub detail: String,
    /// Failing block numbers (at most 100 listed).
    pub blocks: Vec<u64>,
    pub bad_blocks: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Unchecked {
    pub path: String,
    pub reason: String,
}

fn damaged(e: &Entry, problem: &str, detail: String) -> Damaged {
    Damaged {
        path: e.plain.display().to_string(),
        cipher_path: e.cipher.display().to_string(),
        problem: problem.into(),
        detail,
        blocks: Vec::new(),
        bad_blocks: 0,
    }
}

/// What `fsck --repair` may mend in a file the check has opened.
pub(super) enum Fault<'b> {
    /// Every block authenticates but the slack is not zero.
    Slack,
    /// These blocks fail authentication (every one, in order).
    Blocks(&'b [u64]),
}

/// Mends a file for `fsck --repair`; returns whether the file is sound now.
pub(super) type Mend<'a> = dyn FnMut(&Entry, &EncryptedFile, Fault<'_>) -> bool + 'a;

/// Checks the whole volume. `progress(done, total)` is called after each entry.
pub fn fsck(volume: &Volume, progress: &mut dyn FnMut(u64, u64)) -> FsckReport {
    check(volume, progress, None)
}

/// [`fsck`], letting `mend` mend what it can instead of reporting it.
pub(super) fn check(
    volume: &Volume,
    progress: &mut dyn FnMut(u64, u64),
    mut mend: Option<&mut Mend<'_>>,
) -> FsckReport {
    let who = Requester::current();
    let (entries, problems) = walk(volume);
    let mut report = FsckReport::default();
    for p in problems {
        let problem = match p.kind {
            ProblemKind::DirRecord => "directory_record",
            ProblemKind::Name | ProblemKind::Unlistable => "name",
        };
        report.damaged.push(Damaged {
            path: p.plain_dir.display().to_string(),
            cipher_path: p.cipher.display().to_string(),
            problem: problem.into(),
            detail: p.what(),
            blocks: Vec::new(),
            bad_blocks: 0,
        });
    }
    let total = entries.len() as u64;
    for (i, e) in entries.iter().enumerate() {
        match e.kind {
            Kind::Dir => {
                report.directories += 1;
                check_xattrs(volume, e, None, &mut report);
            }
            Kind::Symlink => {
                report.symlinks += 1;
                check_symlink(volume, e, &mut report);
            }
            Kind::File => {
                report.files += 1;
                check_file(volume, &who, e, &mut report, mend.as_deref_mut());
            }
            Kind::Special => {}
        }
        progress(i as u64 + 1, total);
    }
    report
}

fn unchecked(e: &Entry, reason: String) -> Unchecked {
    Unchecked {
        path: e.plain.display().to_string(),
        reason,
    }
}

fn check_symlink(volume: &Volume, e: &Entry, report: &mut FsckReport) {
    let target = e
        .path_fd()
        .map_err(NamespaceError::from)
        .and_then(|fd| volume.namespace().read_symlink(fd.as_fd()));
    match target {
        Ok(_) => {}
        Err(NamespaceError::Name(err)) => {
            report
                .damaged
                .push(damaged(e, "symlink_target", err.to_string()))
        }
        Err(err) => report.unchecked.push(unchecked(e, crate::describe(&err))),
    }
}

/// Opens a file for checking: its key unwrapped, or what is wrong with it recorded.
fn open_for_check(
    volume: &Volume,
    who: &Requester,
    e: &Entry,
    report: &mut FsckReport,
) -> Option<EncryptedFile> {
    let path = e.plain.display().to_string();
    let file = match e.open() {
        Ok(f) => f,
        Err(err) => {
            report.unchecked.push(unchecked(e, err.to_string()));
            return None;
        }
    };
    let place = volume.place_of(e.dir.as_fd(), &e.plain);
    let opened = place.and_then(|(dir_id, name)| {
        volume.open_file(
            file,
            Place {
                dir_id,
                name: &name,
            },
            &path,
            who,
        )
    });
    match opened {
        Ok(f) => Some(f),
        Err(VolumeError::File { source, .. }) if source.is_integrity() => {
            report
                .damaged
                .push(damaged(e, &source.kind(), source.to_string()));
            None
        }
        Err(VolumeError::Kms { source, .. })
            if matches!(
                source,
                KmsError::InvalidCiphertext(_) | KmsError::IncorrectKey(_)
            ) =>
        {
            report.damaged.push(damaged(
                e,
                "key_slot",
                format!("the KMS refused the wrapped key: {source}"),
            ));
            None
        }
        Err(err) => {
            report.unchecked.push(unchecked(e, crate::describe(&err)));
            None
        }
    }
}

fn check_file(
    volume: &Volume,
    who: &Requester,
    e: &Entry,
    report: &mut FsckReport,
    mend: Option<&mut Mend<'_>>,
) {
    let Some(ef) = open_for_check(volume, who, e, report) else {
        return;
    };
    let path = e.plain.display().to_string();
    let file_id = ef.header().file_id;
    report.plaintext_bytes += ef.len();
    match bad_blocks(&ef) {
        // Every block is sound: the bytes that belong to none must be zero.
        Ok(blocks) if blocks.is_empty() => match ef.check_slack() {
            Ok(()) => {}
            Err(FileError::Io(err)) => report.unchecked.push(unchecked(e, err.to_string())),
            Err(_) if mend.is_some_and(|mend| mend(e, &ef, Fault::Slack)) => {}
            Err(err) => {
                let _ = volume.report_integrity(Some(&file_id), &path, who, &err);
                report
                    .damaged
                    .push(damaged(e, &err.kind(), err.to_string()));
            }
        },
        Ok(blocks) => {
            // Audited whether or not `--repair` then cuts the blocks.
            let first = FileError::BlockAuth {
                block_no: blocks[0],
            };
            let _ = volume.report_integrity(Some(&file_id), &path, who, &first);
            if mend.is_some_and(|mend| mend(e, &ef, Fault::Blocks(&blocks))) {
                return check_xattrs(volume, e, Some(&file_id.0), report);
            }
            let mut d = damaged(
                e,
                "block_auth",
                format!("{} block(s) fail authentication", blocks.len()),
            );
            d.bad_blocks = blocks.len() as u64;
            d.blocks = blocks.into_iter().take(MAX_BLOCKS_LISTED).collect();
            report.damaged.push(d);
        }
        Err(err) => report.unchecked.push(unchecked(e, err.to_string())),
    }
    check_xattrs(volume, e, Some(&file_id.0), report);
}

/// Every failing block of the file, reading a megabyte at a time and block by block
/// where a megabyte fails.
pub(super) fn bad_blocks(ef: &EncryptedFile) -> std::io::Result<Vec<u64>> {
    let bs = ef.block_len();
    let chunk = 256 * bs;
    let len = ef.len();
    let mut bad = Vec::new();
    let mut buf = vec![0u8; chunk as usize];
    let mut off = 0;
    while off < len.max(1) {
        match ef.read_at(&mut buf, off) {
            Ok(_) => {}
            Err(FileError::Io(e)) => return Err(e),
            Err(_) => {
                let end = (off + chunk).min(len.max(1));
                let mut b = off;
                while b < end {
                    if let Err(err) = ef.read_at(&mut buf[..bs as usize], b) {
                        match err {
                            FileError::Io(e) => return Err(e),
                            _ => bad.push(b / bs),
                        }
                    }
                    b += bs;
                }
            }
        }
        off += chunk;
        if len == 0 {
            break;
        }
    }
    Ok(bad)
}

/// Encrypted xattr values must open under their binding (a file's id, a directory's id).
fn check_xattrs(volume: &Volume, e: &Entry, file_id: Option<&[u8; 16]>, report: &mut FsckReport) {
    let ns = volume.namespace();
    if !ns.is_encrypted() {
        return;
    }
    let Ok(fd) = e.path_fd() else {
        return;
    };
    let binding = match (e.kind, file_id) {
        (Kind::File, Some(id)) => id.to_vec(),
        (Kind::Dir, _) => match ns.xattr_binding(fd.as_fd(), rustix::fs::FileType::Directory) {
            Ok(b) => b,
            Err(_) => return, // reported as a directory record problem
        },
        _ => return,
    };
    match ns.bad_xattrs(fd.as_fd(), &binding) {
        Ok(bad) => {
            for name in bad {
                report.damaged.push(damaged(
                    e,
                    "xattr",
                    format!("xattr {name:?} does not decrypt"),
                ));
            }
        }
        Err(err) => report.unchecked.push(unchecked(e, crate::describe(&err))),
    }
}
