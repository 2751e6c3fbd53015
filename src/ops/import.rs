//! `import`: seeds a volume from a plaintext directory tree without FUSE (names, contents,
//! symlinks, modes, times; owners as root), through the namespace like the mount. Nothing
//! existing is overwritten; an existing directory is imported into. A file gets its name
//! only once its content is written and synced, so a killed run leaves each file whole or
//! absent, and running it again finishes the job.

use std::fs::Metadata;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::error::{self, io};
use super::meta::Restore;
use super::OpsError;
use crate::format::BLOCK_PLAIN_LEN;
use crate::namespace::{open_root, Dir, Namespace};
use crate::volume::{Requester, Volume};

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries whose name was taken in the volume already (by an earlier run, say): left
    /// as they are. Directories are not counted: what they hold is imported.
    pub already_there: u64,
    /// Entries not imported, with why (special file, unreadable, a name too long).
    pub skipped: Vec<String>,
}

/// A directory still to import: its source, the volume directory it goes to (`O_PATH`),
/// its plaintext path in the volume.
struct Todo {
    src: PathBuf,
    dir: Arc<OwnedFd>,
    plain: PathBuf,
}

/// What became of one source entry.
enum Imported {
    File {
        bytes: u64,
    },
    /// A directory, to import into next; its name in the volume directory.
    Dir(Todo, std::ffi::OsString),
    Symlink,
    /// Not a directory, and its name is taken in the volume: left as it is.
    AlreadyThere,
    Skipped(String),
}

/// Imports everything under `src` into the volume's root.
pub fn import(
    volume: &Volume,
    src: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ImportReport, OpsError> {
    let ns = volume.namespace();
    let mut report = ImportReport::default();
    let mut todo = vec![Todo {
        src: src.to_path_buf(),
        dir: Arc::new(open_root(volume.cipherdir())?),
        plain: PathBuf::new(),
    }];
    // Directory times last: each entry made in a directory changes its mtime.
    let mut dirs_done: Vec<(Arc<OwnedFd>, std::ffi::OsString, Metadata)> = Vec::new();
    let mut done = 0u64;
    while let Some(t) = todo.pop() {
        let names = match ns.dir_names(t.dir.as_fd(), t.plain.as_os_str().is_empty()) {
            Ok(d) => d,
            Err(e) => {
                let why = crate::describe(&e);
                report.skipped.push(format!("{}: {why}", t.plain.display()));
                continue;
            }
        };
        let dir = Dir {
            fd: t.dir.as_fd(),
            names: &names,
        };
        let mut children: Vec<_> = std::fs::read_dir(&t.src)
            .map_err(io(&t.src))?
            .filter_map(Result::ok)
            .collect();
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let plain = t.plain.join(child.file_name());
            match import_entry(volume, dir, &child.path(), &plain)? {
                Imported::File { bytes } => {
                    report.files += 1;
                    report.bytes += bytes;
                }
                Imported::Dir(sub, on_disk) => {
                    report.directories += 1;
                    let meta = std::fs::symlink_metadata(&sub.src).map_err(io(&sub.src))?;
                    dirs_done.push((t.dir.clone(), on_disk, meta));
                    todo.push(sub);
                }
                Imported::Symlink => report.symlinks += 1,
                Imported::AlreadyThere => report.already_there += 1,
                Imported::Skipped(why) => {
                    report.skipped.push(format!("{}: {why}", plain.display()))
                }
            }
            done += 1;
            progress(done, done + todo.len() as u64);
        }
    }
    for (parent, on_disk, meta) in dirs_done.iter().rev() {
        super::meta::apply(parent.as_fd(), on_disk, meta, &Restore::everything());
    }
    Ok(report)
}

/// Imports the source entry at `src` as `plain`, into `dir`.
fn import_entry(
    volume: &Volume,
    dir: Dir<'_>,
    src: &Path,
    plain: &Path,
) -> Result<Imported, OpsError> {
    let ns = volume.namespace();
    let name = src.file_name().unwrap_or_default();
    let meta = std::fs::symlink_metadata(src).map_err(io(src))?;
    let ft = meta.file_type();
    let made = if ft.is_dir() {
        ns.mkdir(dir, name, 0o700, None)
    } else if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(io(src))?;
        ns.symlink(dir, name, target.as_os_str().as_bytes(), None)
    } else if ft.is_file() {
        return import_file(volume, dir, src, plain, &meta);
    } else {
        return Ok(Imported::Skipped(
            "special file (create it through the mount)".into(),
        ));
    };
    let c = ns.locate(dir, name)?;
    match made {
        // A directory there already (an earlier run, cut short): import into it, so that
        // running import again finishes the job.
        Err(e) if e.already_exists() && ft.is_dir() && is_dir(dir, &c.on_disk) => {}
        Err(e) if e.already_exists() => return Ok(Imported::AlreadyThere),
        Err(e) => return Ok(Imported::Skipped(crate::describe(&e))),
        Ok(()) => {}
    }
    if ft.is_dir() {
        let (fd, _) = ns.open_entry(dir.fd, &c.on_disk)?;
        let sub = Todo {
            src: src.to_path_buf(),
            dir: Arc::new(fd),
            plain: plain.to_path_buf(),
        };
        return Ok(Imported::Dir(sub, c.on_disk));
    }
    super::meta::apply(dir.fd, &c.on_disk, &meta, &Restore::everything());
    Ok(Imported::Symlink)
}

/// Imports one regular file: a new entry with a fresh key, its content, its metadata.
fn import_file(
    volume: &Volume,
    dir: Dir<'_>,
    src: &Path,
    plain: &Path,
    meta: &Metadata,
) -> Result<Imported, OpsError> {
    let ns: &Namespace = volume.namespace();
    let mut new = match ns.create_file(dir, src.file_name().unwrap_or_default(), 0o600) {
        Ok(n) => n,
        Err(e) if e.already_exists() => return Ok(Imported::AlreadyThere),
        Err(e) => return Ok(Imported::Skipped(crate::describe(&e))),
    };
    // Until `finish`, dropping `new` on an error removes the half-written file.
    let who = Requester::current();
    let ef = volume.create_file(new.take_file(), &plain.display().to_string(), &who)?;
    new.bind(ns)?;
    let mut src_file = std::fs::File::open(src).map_err(io(src))?;
    let mut buf = vec![0u8; 256 * BLOCK_PLAIN_LEN as usize];
    let mut off = 0u64;
    loop {
        let n = std::io::Read::read(&mut src_file, &mut buf).map_err(io(src))?;
        if n == 0 {
            break;
        }
        ef.write_at(&buf[..n], off).map_err(error::file(src))?;
        off += n as u64;
    }
    // Metadata before the name: a run killed once the name is there has made it whole, and
    // a run again leaves it as it is (already there).
    match new.target() {
        (fd, None) => super::meta::apply_fd(fd, meta, &Restore::everything()),
        (dir_fd, Some(on_disk)) => {
            super::meta::apply(dir_fd, on_disk, meta, &Restore::everything())
        }
    }
    ef.sync(true).map_err(error::file(src))?;
    drop(ef);
    new.finish(ns, None)?;
    Ok(Imported::File { bytes: off })
}

/// Whether the entry `on_disk` of `dir` is a directory (never through a symlink).
fn is_dir(dir: Dir<'_>, on_disk: &std::ffi::OsStr) -> bool {
    let st = rustix::fs::statat(dir.fd, on_disk, rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
    st.is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
    })
}
