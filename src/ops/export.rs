//! Getting plaintext out without FUSE: one file (`decrypt`) or a whole volume (`export`),
//! names decrypted, with times and symlinks. A file whose blocks fail authentication is
//! refused, unless the caller chose `force_partial`, in which case the failing blocks are
//! written as zeros and listed.
//!
//! Owners, modes and file types are not authenticated: whoever can write the ciphertext
//! directory sets them. So by default they are copied as `cp` without `-p` copies them
//! (permission bits less the umask, owned by whoever runs export, no set-ID bits, no
//! device nodes, FIFOs or sockets), and restored exactly only when asked
//! ([`ExportOptions`]). Nothing is written through a symlink in the destination.

use crate::namespace::Place;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::io;
use super::meta::Restore;
use super::walk::{walk, Entry, Kind};
use super::OpsError;
use crate::file::FileError;
use crate::volume::{Requester, Volume};

/// What happened to one file.
#[derive(Debug, Default, Serialize)]
pub struct Decrypted {
    pub bytes: u64,
    /// Blocks written as zeros because they failed authentication (with force_partial).
    pub zeroed_blocks: Vec<u64>,
}

/// Decrypts the ciphertext `file` (at `cipher`, plaintext name `plain` for the audit
/// log) into `out`.
pub fn decrypt_to(
    volume: &Volume,
    file: std::fs::File,
    cipher: &Path,
    plain: &str,
    out: &mut dyn Write,
    force_partial: bool,
) -> Result<Decrypted, OpsError> {
    let who = Requester::current();
    let dir = open_parent(cipher)?;
    let (dir_id, name) = volume.place_of(dir.as_fd(), Path::new(plain))?;
    let at = Place {
        dir_id,
        name: &name,
    };
    let ef = volume.open_file(file, at, plain, &who)?;
    let len = ef.len();
    let mut result = Decrypted::default();
    let mut buf = vec![0u8; (256 * ef.block_len()) as usize];
    let mut off = 0u64;
    while off < len {
        let want = (len - off).min(buf.len() as u64) as usize;
        match ef.read_at(&mut buf[..want], off) {
            Ok(n) => out.write_all(&buf[..n]).map_err(io(cipher))?,
            Err(FileError::Io(e)) => return Err(io(cipher)(e)),
            Err(_) => {
                // Block by block, to find exactly which fail.
                let mut b = off;
                while b < off + want as u64 {
                    let n = (off + want as u64 - b).min(ef.block_len()) as usize;
                    let block = &mut buf[..n];
                    match ef.read_at(block, b) {
                        Ok(_) => {}
                        Err(FileError::Io(e)) => return Err(io(cipher)(e)),
                        Err(err) => {
                            let _ = volume.report_integrity(
                                Some(&ef.header().file_id),
                                plain,
                                &who,
                                &err,
                            );
                            result.zeroed_blocks.push(b / ef.block_len());
                            block.fill(0);
                        }
                    }
                    out.write_all(block).map_err(io(cipher))?;
                    b += n as u64;
                }
            }
        }
        off += want as u64;
    }
    if !result.zeroed_blocks.is_empty() && !force_partial {
        return Err(OpsError::Damaged {
            path: plain.into(),
            blocks: result.zeroed_blocks,
        });
    }
    result.bytes = len;
    Ok(result)
}

/// Decrypts into `dest` (given mode `mode`, as is) through a temporary file that is
/// renamed into place only when the whole file was read (so a refused file leaves nothing
/// behind).
pub fn decrypt_file_to_path(
    volume: &Volume,
    file: std::fs::File,
    cipher: &Path,
    plain: &str,
    dest: &Path,
    mode: u32,
    force_partial: bool,
) -> Result<Decrypted, OpsError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.kmsfs-partial",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut f = crate::namespace::create_work_file(&tmp, 0o600).map_err(io(&tmp))?;
    let result = decrypt_to(volume, file, cipher, plain, &mut f, force_partial);
    match result {
        Ok(d) => {
            f.flush().map_err(io(&tmp))?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io(&tmp))?;
            std::fs::rename(&tmp, dest).map_err(io(dest))?;
            Ok(d)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// The mode `decrypt -o` gives its output: the file's permission bits less the umask, as
/// `cp` does, never a set-ID bit from the unauthenticated ciphertext directory.
pub fn copy_mode(raw_mode: u32) -> u32 {
    Restore::asked(false, false, false).mode_of(raw_mode)
}

/// What `export` carries over besides names, contents, times and symlinks.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// Write damaged files too, with their failing blocks as zeros.
    pub force_partial: bool,
    /// Give entries their owner and group (needs root).
    pub owners: bool,
    /// Give entries their exact permission bits (sticky included, set-ID bits not),
    /// regardless of the umask.
    pub modes: bool,
    /// Everything: owners, exact modes with set-ID bits, and device nodes, FIFOs and
    /// sockets made as themselves.
    pub special: bool,
}

impl ExportOptions {
    fn restore(&self) -> Restore {
        Restore::asked(self.owners || self.special, self.modes, self.special)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files refused (damaged) or partially written (with force_partial).
    pub damaged: Vec<String>,
    /// Names or directories that could not be read at all.
    pub skipped: Vec<String>,
    /// Device nodes, FIFOs and sockets not made (without `special`).
    pub special_skipped: u64,
}

/// Exports the whole volume into `dest` (created if missing; must be empty).
pub fn export(
    volume: &Volume,
    dest: &Path,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExportReport, OpsError> {
    match std::fs::read_dir(dest) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(OpsError::Refused(format!(
                    "{} is not empty; export into an empty or new directory",
                    dest.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(io(dest))?
        }
        Err(e) => return Err(io(dest)(e)),
    }
    let (entries, problems) = walk(volume);
    let mut report = ExportReport {
        skipped: problems
            .iter()
            .map(|p| format!("{}: {}", p.cipher.display(), p.what()))
            .collect(),
        ..Default::default()
    };
    let restore = opts.restore();
    let total = entries.len() as u64;
    let mut made = Made::default();
    let mut dirs: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        progress(i as u64 + 1, total);
        if let Err(why) = made.claim(e) {
            report
                .skipped
                .push(format!("{}: {why}", e.cipher.display()));
            continue;
        }
        let target = dest.join(&e.plain);
        match e.kind {
            Kind::Dir => {
                // Private while it fills; its own mode comes with its times, at the end.
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&target)
                    .map_err(io(&target))?;
                made.dirs.insert(e.plain.clone());
                report.directories += 1;
                dirs.push((target, e.meta.clone()));
            }
            Kind::File => export_file(volume, e, &target, opts, &restore, &mut report)?,
            Kind::Symlink => export_symlink(volume, e, &target, &restore, &mut report)?,
            Kind::Special if opts.special => export_special(e, &target, &restore),
            Kind::Special => report.special_skipped += 1,
        }
    }
    // Directory times last: writing into a directory changes its mtime.
    for (path, meta) in dirs.iter().rev() {
        apply_meta(path, meta, &restore);
    }
    Ok(report)
}

/// The plaintext paths written so far. Two entries of the ciphertext directory can be given
/// the same plaintext path (a long-name file naming another entry's name): only the first
/// is written, and nothing is written into a path that is not a directory export made, so
/// a symlink exported first can never send a later entry outside the destination.
#[derive(Default)]
struct Made {
    taken: std::collections::HashSet<PathBuf>,
    dirs: std::collections::HashSet<PathBuf>,
}

impl Made {
    /// Takes `e`'s plaintext path, or says why it is not written.
    fn claim(&mut self, e: &Entry) -> Result<(), &'static str> {
        let parent = e.plain.parent().unwrap_or(Path::new(""));
        let in_made_dir = parent.as_os_str().is_empty() || self.dirs.contains(parent);
        if !in_made_dir {
            return Err("its directory was not exported; not written");
        }
        if !self.taken.insert(e.plain.clone()) {
            return Err("another entry has the same plaintext name; not written");
        }
        Ok(())
    }
}

fn apply_meta(path: &Path, meta: &std::fs::Metadata, restore: &Restore) {
    super::meta::apply(rustix::fs::CWD, path.as_os_str(), meta, restore);
}

fn export_file(
    volume: &Volume,
    e: &Entry,
    target: &Path,
    opts: &ExportOptions,
    restore: &Restore,
    report: &mut ExportReport,
) -> Result<(), OpsError> {
    let plain = e.plain.display().to_string();
    let file = e.open().map_err(io(&e.cipher))?;
    let mode = restore.mode_of(e.meta.permissions().mode());
    let force = opts.force_partial;
    match decrypt_file_to_path(volume, file, &e.cipher, &plain, target, mode, force) {
        Ok(d) => {
            report.files += 1;
            report.bytes += d.bytes;
            if !d.zeroed_blocks.is_empty() {
                report.damaged.push(format!(
                    "{plain}: blocks {:?} written as zeros",
                    d.zeroed_blocks
                ));
            }
            apply_meta(target, &e.meta, restore);
        }
        Err(OpsError::Damaged { path, blocks }) => {
            report.damaged.push(format!(
                "{path}: blocks {blocks:?} fail authentication; not written"
            ));
        }
        Err(err) if err.is_damage() => {
            let err = crate::describe(&err);
            report.damaged.push(format!("{plain}: {err}; not written"));
        }
        Err(err) => return Err(err),
    }
    Ok(())
}

fn export_symlink(
    volume: &Volume,
    e: &Entry,
    target: &Path,
    restore: &Restore,
    report: &mut ExportReport,
) -> Result<(), OpsError> {
    let fd = e.path_fd().map_err(io(&e.cipher))?;
    match volume.namespace().read_symlink(fd.as_fd()) {
        Ok(t) => {
            let t = std::ffi::OsStr::from_bytes(&t);
            std::os::unix::fs::symlink(t, target).map_err(io(target))?;
            apply_meta(target, &e.meta, restore);
            report.symlinks += 1;
        }
        Err(err) => report.damaged.push(format!(
            "{}: symlink target {}; not written",
            e.plain.display(),
            crate::describe(&err)
        )),
    }
    Ok(())
}

/// A FIFO, socket or device node, made as itself (best effort; only when asked).
fn export_special(e: &Entry, target: &Path, restore: &Restore) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ft = e.meta.file_type();
    let kind = if ft.is_fifo() {
        rustix::fs::FileType::Fifo
    } else if ft.is_socket() {
        rustix::fs::FileType::Socket
    } else if ft.is_char_device() {
        rustix::fs::FileType::CharacterDevice
    } else {
        rustix::fs::FileType::BlockDevice
    };
    let mode = rustix::fs::Mode::from_raw_mode(restore.mode_of(e.meta.mode()));
    if rustix::fs::mknodat(rustix::fs::CWD, target, kind, mode, e.meta.rdev()).is_ok() {
        apply_meta(target, &e.meta, restore);
    }
}

/// The directory holding the ciphertext file at `cipher` (`O_PATH`, not through a symlink).
fn open_parent(cipher: &Path) -> Result<std::os::fd::OwnedFd, OpsError> {
    let parent = cipher.parent().unwrap_or(Path::new("."));
    let flags = rustix::fs::OFlags::PATH
        | rustix::fs::OFlags::DIRECTORY
        | rustix::fs::OFlags::NOFOLLOW
        | rustix::fs::OFlags::CLOEXEC;
    rustix::fs::open(parent, flags, rustix::fs::Mode::empty()).map_err(|e| io(parent)(e.into()))
}
