//! `import`: seeds a volume from a plaintext directory tree without FUSE (names, contents,
//! symlinks, modes, times; owners as root). Nothing existing is overwritten.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use serde::Serialize;

use crate::format::BLOCK_PLAIN_LEN;
use crate::volume::{tree, Requester, Volume};

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries not imported, with why (exists already, special file, unreadable).
    pub skipped: Vec<String>,
}

/// Imports everything under `src` into the volume's root.
pub fn import(
    volume: &Volume,
    src: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<ImportReport> {
    let who = Requester::current();
    let mut report = ImportReport::default();
    // (source dir, ciphertext dir, plaintext path)
    let mut todo: Vec<(PathBuf, PathBuf, PathBuf)> = vec![(
        src.to_path_buf(),
        volume.cipherdir().to_path_buf(),
        PathBuf::new(),
    )];
    let mut dirs_done: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    let mut done = 0u64;
    while let Some((src_dir, cipher_dir, plain_dir)) = todo.pop() {
        let names = volume.names();
        let dir_names = match volume.dir_names_at(&cipher_dir) {
            Ok(d) => d,
            Err(e) => {
                report.skipped.push(format!("{}: {e}", plain_dir.display()));
                continue;
            }
        };
        let parent = rfs::open(
            &cipher_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut children: Vec<_> = std::fs::read_dir(&src_dir)?
            .filter_map(Result::ok)
            .collect();
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let name = child.file_name();
            let plain = plain_dir.join(&name);
            let meta = std::fs::symlink_metadata(child.path())?;
            let c = match names.encrypt(&dir_names, &name) {
                Ok(c) => c,
                Err(e) => {
                    report.skipped.push(format!("{}: {e}", plain.display()));
                    continue;
                }
            };
            let target = cipher_dir.join(&c.on_disk);
            if target.symlink_metadata().is_ok() {
                report
                    .skipped
                    .push(format!("{}: already in the volume", plain.display()));
                continue;
            }
            let ft = meta.file_type();
            if ft.is_dir() {
                rfs::mkdirat(parent.as_fd(), &c.on_disk, Mode::from_raw_mode(0o700))?;
                if names.is_encrypted() {
                    let d = rfs::openat(
                        parent.as_fd(),
                        &c.on_disk,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    tree::write_dir_record(d.as_fd())?;
                }
                tree::write_sidecar(parent.as_fd(), &c)?;
                report.directories += 1;
                dirs_done.push((target.clone(), meta.clone()));
                todo.push((child.path(), target, plain));
            } else if ft.is_symlink() {
                let t = std::fs::read_link(child.path())?;
                let stored = names
                    .seal_symlink(t.as_os_str().as_bytes())
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", plain.display())))?;
                rfs::symlinkat(OsStr::from_bytes(&stored), parent.as_fd(), &c.on_disk)?;
                tree::write_sidecar(parent.as_fd(), &c)?;
                super::meta::apply(&target, &meta);
                report.symlinks += 1;
            } else if ft.is_file() {
                let fd = rfs::openat(
                    parent.as_fd(),
                    &c.on_disk,
                    OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                tree::write_sidecar(parent.as_fd(), &c)?;
                let plain_s = plain.display().to_string();
                let created = volume.create_file(std::fs::File::from(fd), &plain_s, &who);
                let ef = match created {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = rfs::unlinkat(parent.as_fd(), &c.on_disk, rfs::AtFlags::empty());
                        tree::remove_sidecar(parent.as_fd(), &c);
                        return Err(std::io::Error::other(e.to_string()));
                    }
                };
                let mut src_file = std::fs::File::open(child.path())?;
                let mut buf = vec![0u8; 256 * BLOCK_PLAIN_LEN as usize];
                let mut off = 0u64;
                loop {
                    let n = std::io::Read::read(&mut src_file, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    ef.write_at(&buf[..n], off)
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    off += n as u64;
                }
                ef.sync(true)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                drop(ef);
                super::meta::apply(&target, &meta);
                report.files += 1;
                report.bytes += off;
            } else {
                report.skipped.push(format!(
                    "{}: special file (create it through the mount)",
                    plain.display()
                ));
            }
            done += 1;
            progress(done, done + todo.len() as u64);
        }
    }
    for (path, meta) in dirs_done.iter().rev() {
        super::meta::apply(path, meta);
    }
    Ok(report)
}
