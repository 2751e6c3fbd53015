//! `rekey`: gives every file a fresh data key (and file id) and re-encrypts its content,
//! for a data key that may have leaked. Each file is rewritten into a temporary file in
//! its directory and renamed over the original (the namespace's [`Replacement`]), so a
//! killed run leaves every file whole under its old or its new key. A journal
//! (`.kmsfs-rekey.journal`, the file ids to replace) lets the next run finish the job
//! without redoing finished files.
//!
//! [`Replacement`]: crate::namespace::Replacement

use crate::namespace::Place;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use super::error::{self, io};
use super::walk::{walk, Entry, Kind};
use super::OpsError;
use crate::format::BLOCK_PLAIN_LEN;
use crate::volume::{Requester, Volume};

const JOURNAL: &str = ".kmsfs-rekey.journal";
/// Longest journal read.
const MAX_JOURNAL_LEN: u64 = 64 << 20;

#[derive(Debug, Default, Serialize)]
pub struct RekeyReport {
    pub rekeyed: u64,
    pub already_done: u64,
    pub skipped: Vec<String>,
    pub failed: Vec<String>,
    /// A journal was found that does not authenticate (edited, or left by an older
    /// kmsfs): this run started over and rekeyed every file.
    pub journal_refused: bool,
}

/// Rekeys every file of the volume (or finishes an interrupted run).
pub fn rekey(volume: &Volume, progress: &mut dyn FnMut(u64, u64)) -> Result<RekeyReport, OpsError> {
    let ns = volume.namespace();
    let (entries, problems) = walk(volume);
    let mut report = RekeyReport {
        failed: problems
            .iter()
            .map(|p| format!("{}: {}", p.cipher.display(), p.what()))
            .collect(),
        ..Default::default()
    };
    let files: Vec<&Entry> = entries.iter().filter(|e| e.kind == Kind::File).collect();
    let todo = journal(volume, &files, &mut report)?;
    // Temporary files of a killed run, in every directory.
    let _ = ns.sweep_temp_files(crate::namespace::open_root(volume.cipherdir())?.as_fd());
    for dir in entries.iter().filter(|e| e.kind == Kind::Dir) {
        if let Ok(fd) = dir.path_fd() {
            let _ = ns.sweep_temp_files(fd.as_fd());
        }
    }
    let who = Requester::current();
    let total = files.len() as u64;
    for (i, e) in files.iter().enumerate() {
        match file_id(e) {
            Ok(id) if !todo.contains(&id.to_hex()) => report.already_done += 1,
            Ok(_) if e.meta.nlink() > 1 => report.skipped.push(format!(
                "{}: has {} hard links; rekeying would split them",
                e.plain.display(),
                e.meta.nlink()
            )),
            Ok(_) => match rekey_file(volume, &who, e) {
                Ok(()) => report.rekeyed += 1,
                Err(err) => {
                    report
                        .failed
                        .push(format!("{}: {}", e.plain.display(), crate::describe(&err)))
                }
            },
            Err(err) => {
                report
                    .failed
                    .push(format!("{}: {}", e.plain.display(), crate::describe(&err)))
            }
        }
        progress(i as u64 + 1, total);
    }
    if report.failed.is_empty() {
        let _ = std::fs::remove_file(volume.cipherdir().join(JOURNAL));
    }
    Ok(report)
}

/// The ids of the files still to rekey: from the journal of an interrupted run, if it
/// authenticates, or every file's, written to a new journal first.
fn journal(
    volume: &Volume,
    files: &[&Entry],
    report: &mut RekeyReport,
) -> Result<BTreeSet<String>, OpsError> {
    let root = volume.cipherdir();
    let path = root.join(JOURNAL);
    // Never through a symlink, and bounded: a line (33 bytes) for each of up to two million
    // files, which also covers a journal written before files were removed.
    match crate::namespace::records::read_small_file(&path, MAX_JOURNAL_LEN) {
        Ok(text) => match authentic_ids(volume, &String::from_utf8_lossy(&text)) {
            Some(ids) => return Ok(ids),
            // Whoever can write the directory could otherwise mark files as done.
            None => report.journal_refused = true,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let ids: BTreeSet<String> = files
        .iter()
        .filter_map(|e| file_id(e).ok())
        .map(|id| id.to_hex())
        .collect();
    let mac = volume.names().record_mac(&journal_record(volume, &ids));
    let tmp = root.join(format!("{JOURNAL}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = crate::namespace::create_work_file(&tmp, 0o600)?;
        for id in &ids {
            writeln!(f, "{id}")?;
        }
        if let Some(mac) = mac {
            writeln!(f, "mac {}", hex::encode(mac))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(root)?.sync_all()
    };
    write().map_err(io(&path))?;
    Ok(ids)
}

/// What a journal's MAC covers: a label, the volume id and the ids, one per line.
fn journal_record(volume: &Volume, ids: &BTreeSet<String>) -> Vec<u8> {
    let mut record = format!("kmsfs/v1/rekey-journal\n{}\n", volume.config().volume_id);
    for id in ids {
        record.push_str(id);
        record.push('\n');
    }
    record.into_bytes()
}

/// The ids of a journal whose last line is a MAC (`mac HEX`) that checks; `None` for any
/// other, and on a volume without a names key, which cannot authenticate one.
fn authentic_ids(volume: &Volume, text: &str) -> Option<BTreeSet<String>> {
    let mut lines: Vec<&str> = text.lines().collect();
    let mac = hex::decode(lines.pop()?.strip_prefix("mac ")?).ok()?;
    let ids: BTreeSet<String> = lines.into_iter().map(str::to_owned).collect();
    let want = volume.names().record_mac(&journal_record(volume, &ids))?;
    let same =
        mac.len() == want.len() && mac.iter().zip(want).fold(0, |a, (x, y)| a | (x ^ y)) == 0;
    same.then_some(ids)
}

/// The id in the header of file `e`, read through [`Entry::open`]: never through a
/// symlink, and never from a FIFO put in the file's place since the walk.
fn file_id(e: &Entry) -> Result<crate::format::FileId, OpsError> {
    let file = e.open().map_err(io(&e.cipher))?;
    let header = crate::file::read_header(&file).map_err(error::file(&e.cipher))?;
    Ok(header.file_id)
}

/// Re-encrypts one file under a fresh key, beside it, and renames it into place.
fn rekey_file(volume: &Volume, who: &Requester, e: &Entry) -> Result<(), OpsError> {
    let ns = volume.namespace();
    let plain = e.plain.display().to_string();
    let (dir_id, name) = volume.place_of(e.dir.as_fd(), &e.plain)?;
    let at = Place {
        dir_id,
        name: &name,
    };
    let old = volume.open_file(e.open().map_err(io(&e.cipher))?, at, &plain, who)?;
    let (replacement, temp) = ns.replace_file(e.dir.as_fd(), &e.on_disk)?;
    let new = volume.create_file(temp, &plain, who)?;
    if let Some(f) = ns.open_to_bind(e.dir.as_fd(), replacement.temp_name())? {
        ns.bind(&f, at, false)?; // synced with the new file's data below
    }
    let mut buf = vec![0u8; 256 * BLOCK_PLAIN_LEN as usize];
    let mut off = 0u64;
    while off < old.len() {
        let n = old.read_at(&mut buf, off).map_err(error::file(&e.cipher))?;
        new.write_at(&buf[..n], off)
            .map_err(error::file(&e.cipher))?;
        off += n as u64;
    }
    let (from, _) = ns.open_entry(e.dir.as_fd(), &e.on_disk)?;
    let (to, _) = ns.open_entry(e.dir.as_fd(), replacement.temp_name())?;
    let (old_id, new_id) = (old.header().file_id, new.header().file_id);
    ns.copy_xattrs(from.as_fd(), to.as_fd(), &old_id.0, &new_id.0)?;
    // The file's own metadata, as it was: rekey changes keys, not who may read the file.
    let keep = super::meta::Restore::everything();
    super::meta::apply(e.dir.as_fd(), replacement.temp_name(), &e.meta, &keep);
    new.sync(true).map_err(error::file(&e.cipher))?;
    replacement.commit()?;
    Ok(())
}
