//! `rekey`: gives every file a fresh data key (and file id) and re-encrypts its content,
//! for a data key that may have leaked. Each file is rewritten into a temporary file in
//! its directory and renamed over the original, so a killed run leaves every file whole
//! under its old or its new key. A journal (`.kmsfs-rekey.journal`, the file ids to
//! replace) lets the next run finish the job without redoing finished files.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::rewrap::cipher_files;
use crate::file::read_header;
use crate::format::BLOCK_PLAIN_LEN;
use crate::volume::{Requester, Volume};

const JOURNAL: &str = ".kmsfs-rekey.journal";

#[derive(Debug, Default, Serialize)]
pub struct RekeyReport {
    pub rekeyed: u64,
    pub already_done: u64,
    pub skipped: Vec<String>,
    pub failed: Vec<String>,
}

fn temp_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    for e in listing.flatten() {
        let name = e.file_name();
        let n = name.as_bytes();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            temp_files(&e.path(), out);
        } else if n.starts_with(b".kmsfs-rekey-") && n.ends_with(b".tmp") {
            out.push(e.path());
        }
    }
}

/// Rekeys every file of the volume (or finishes an interrupted run).
pub fn rekey(volume: &Volume, progress: &mut dyn FnMut(u64, u64)) -> std::io::Result<RekeyReport> {
    let root = volume.cipherdir();
    let journal = root.join(JOURNAL);
    let files = cipher_files(root);
    let todo: BTreeSet<String> = match std::fs::read_to_string(&journal) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ids: BTreeSet<String> = files
                .iter()
                .filter_map(|p| std::fs::File::open(p).ok())
                .filter_map(|f| read_header(&f).ok())
                .map(|h| h.file_id.to_hex())
                .collect();
            let tmp = root.join(format!("{JOURNAL}.tmp"));
            let mut f = std::fs::File::create(&tmp)?;
            for id in &ids {
                writeln!(f, "{id}")?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &journal)?;
            ids
        }
        Err(e) => return Err(e),
    };
    let mut stale = Vec::new();
    temp_files(root, &mut stale);
    for t in stale {
        let _ = std::fs::remove_file(t);
    }
    let who = Requester::current();
    let mut report = RekeyReport::default();
    let total = files.len() as u64;
    for (i, path) in files.iter().enumerate() {
        let header = std::fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|f| read_header(&f).map_err(|e| e.to_string()));
        match header {
            Ok(h) if !todo.contains(&h.file_id.to_hex()) => report.already_done += 1,
            Ok(_) => {
                let meta = std::fs::symlink_metadata(path)?;
                if meta.nlink() > 1 {
                    report.skipped.push(format!(
                        "{}: has {} hard links; rekeying would split them",
                        path.display(),
                        meta.nlink()
                    ));
                } else {
                    match rekey_file(volume, &who, path, &meta) {
                        Ok(()) => report.rekeyed += 1,
                        Err(e) => report.failed.push(format!("{}: {e}", path.display())),
                    }
                }
            }
            Err(e) => report.failed.push(format!("{}: {e}", path.display())),
        }
        progress(i as u64 + 1, total);
    }
    if report.failed.is_empty() {
        let _ = std::fs::remove_file(&journal);
    }
    Ok(report)
}

fn rekey_file(
    volume: &Volume,
    who: &Requester,
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), String> {
    let plain = volume
        .decrypt_path(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.display().to_string());
    let old = volume
        .open_file(
            std::fs::File::open(path).map_err(|e| e.to_string())?,
            &plain,
            who,
        )
        .map_err(|e| e.to_string())?;
    let dir = path.parent().ok_or("no parent directory")?;
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(".kmsfs-rekey-{}.tmp", hex::encode(rnd)));
    let result = (|| -> Result<(), String> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| e.to_string())?;
        let new = volume
            .create_file(f, &plain, who)
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 256 * BLOCK_PLAIN_LEN as usize];
        let mut off = 0u64;
        while off < old.len() {
            let n = old
                .read_at(&mut buf, off)
                .map_err(|e| format!("reading: {e}"))?;
            new.write_at(&buf[..n], off).map_err(|e| e.to_string())?;
            off += n as u64;
        }
        copy_xattrs(
            volume,
            path,
            &tmp,
            &old.header().file_id.0,
            &new.header().file_id.0,
        )?;
        new.sync(true).map_err(|e| e.to_string())?;
        super::meta::apply(&tmp, meta);
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies xattrs to the rekeyed file, re-binding encrypted values to its new file id.
fn copy_xattrs(
    volume: &Volume,
    from: &Path,
    to: &Path,
    old_id: &[u8],
    new_id: &[u8],
) -> Result<(), String> {
    let mut list = vec![0u8; 65536];
    let Ok(n) = rustix::fs::listxattr(from, &mut list[..]) else {
        return Ok(());
    };
    let names = volume.names();
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let mut value = vec![0u8; 65536];
        let m = rustix::fs::getxattr(from, name, &mut value[..]).map_err(|e| e.to_string())?;
        let stored = if names.xattr_encrypted(name) {
            let plain = names
                .open_xattr(old_id, name, &value[..m])
                .map_err(|e| format!("xattr {name:?}: {e}"))?;
            names
                .seal_xattr(new_id, name, &plain)
                .map_err(|e| e.to_string())?
        } else {
            value[..m].to_vec()
        };
        rustix::fs::setxattr(to, name, &stored, rustix::fs::XattrFlags::empty())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
