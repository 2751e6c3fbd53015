//! Walking a volume offline: every entry of the ciphertext tree with its plaintext path,
//! through the namespace (directory descriptors, no symlink followed), and every problem
//! with names found on the way (a name that does not decrypt, a missing directory record).
//! Used by fsck, rekey and export.

use std::ffi::OsString;
use std::fs::Metadata;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{self as rfs, Mode, OFlags};

use crate::namespace::{open_root, path_flags, Dir, Namespace, NamespaceError};
use crate::volume::Volume;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// fifo, socket, device: stored as themselves.
    Special,
}

#[derive(Debug)]
pub struct Entry {
    /// Absolute path in the ciphertext directory (for reports).
    pub cipher: PathBuf,
    /// Path relative to the mount's root.
    pub plain: PathBuf,
    pub kind: Kind,
    pub meta: Metadata,
    /// The directory holding it (`O_PATH`), and its name there.
    pub dir: Arc<OwnedFd>,
    pub on_disk: OsString,
}

impl Entry {
    /// Opens the (regular) file for reading: never through a symlink, never a FIFO or
    /// device put in its place since the walk.
    pub fn open(&self) -> std::io::Result<std::fs::File> {
        crate::namespace::records::open_regular(self.dir.as_fd(), &self.on_disk, false)
    }

    /// An `O_PATH` descriptor of the entry itself.
    pub fn path_fd(&self) -> std::io::Result<OwnedFd> {
        Ok(rfs::openat(
            &*self.dir,
            &self.on_disk,
            path_flags(),
            Mode::empty(),
        )?)
    }
}

/// What is wrong with the tree itself (not with a file's contents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A directory's record is missing or damaged: none of its entries can be named.
    DirRecord,
    /// An entry's name does not decrypt.
    Name,
    /// A directory cannot be listed.
    Unlistable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub cipher: PathBuf,
    /// The plaintext directory it is in.
    pub plain_dir: PathBuf,
    pub kind: ProblemKind,
    /// What went wrong, with its causes.
    pub error: String,
}

impl Problem {
    /// One line for people.
    pub fn what(&self) -> String {
        match self.kind {
            ProblemKind::DirRecord => {
                format!("directory record missing or damaged: {}", self.error)
            }
            ProblemKind::Unlistable => format!("cannot list: {}", self.error),
            ProblemKind::Name => format!("name: {}", self.error),
        }
    }
}

/// A directory still to walk: its descriptor, ciphertext path, plaintext path.
type Todo = (Arc<OwnedFd>, PathBuf, PathBuf);

/// Every entry under the volume's root, sorted by plaintext path, and the problems found.
pub fn walk(volume: &Volume) -> (Vec<Entry>, Vec<Problem>) {
    let ns = volume.namespace();
    let root_path = volume.cipherdir();
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let problem = |cipher: &Path, plain_dir: &Path, kind, e: &NamespaceError| Problem {
        cipher: cipher.to_path_buf(),
        plain_dir: plain_dir.to_path_buf(),
        kind,
        error: crate::describe(e),
    };
    let mut stack: Vec<Todo> = match open_root(root_path) {
        Ok(fd) => vec![(Arc::new(fd), root_path.to_path_buf(), PathBuf::new())],
        Err(e) => {
            problems.push(problem(
                root_path,
                Path::new(""),
                ProblemKind::Unlistable,
                &e,
            ));
            return (entries, problems);
        }
    };
    while let Some((dir_fd, cipher_dir, plain_dir)) = stack.pop() {
        let at_root = cipher_dir == root_path;
        let names = match ns.dir_names(dir_fd.as_fd(), at_root) {
            Ok(n) => n,
            Err(e) => {
                problems.push(problem(&cipher_dir, &plain_dir, ProblemKind::DirRecord, &e));
                continue;
            }
        };
        let dir = Dir {
            fd: dir_fd.as_fd(),
            names: &names,
        };
        match walk_dir(ns, dir, &dir_fd, &cipher_dir, &plain_dir) {
            Ok(walked) => {
                entries.extend(walked.entries);
                problems.extend(
                    walked
                        .bad_names
                        .iter()
                        .map(|(cipher, e)| problem(cipher, &plain_dir, ProblemKind::Name, e)),
                );
                stack.extend(walked.subdirs);
            }
            Err(e) => problems.push(problem(
                &cipher_dir,
                &plain_dir,
                ProblemKind::Unlistable,
                &e,
            )),
        }
    }
    entries.sort_by(|a, b| a.plain.cmp(&b.plain));
    (entries, problems)
}

/// What one directory holds.
struct Walked {
    entries: Vec<Entry>,
    /// Entries whose names do not decrypt.
    bad_names: Vec<(PathBuf, NamespaceError)>,
    /// The subdirectories, to walk next.
    subdirs: Vec<Todo>,
}

fn walk_dir(
    ns: &Namespace,
    dir: Dir<'_>,
    dir_fd: &Arc<OwnedFd>,
    cipher_dir: &Path,
    plain_dir: &Path,
) -> Result<Walked, NamespaceError> {
    let mut listed = ns.list(dir)?;
    listed.sort_by(|a, b| a.on_disk.cmp(&b.on_disk));
    let mut w = Walked {
        entries: Vec::new(),
        bad_names: Vec::new(),
        subdirs: Vec::new(),
    };
    for l in listed {
        if l.on_disk == "." || l.on_disk == ".." {
            continue;
        }
        let cipher = cipher_dir.join(&l.on_disk);
        let name = match l.name {
            Ok(n) => n,
            Err(e) => {
                w.bad_names.push((cipher, e));
                continue;
            }
        };
        let Ok(meta) = entry_meta(dir_fd, &l.on_disk) else {
            continue; // gone since the listing
        };
        let kind = kind_of(&meta);
        let plain = plain_dir.join(&name);
        if kind == Kind::Dir {
            let sub = rfs::openat(
                &**dir_fd,
                &l.on_disk,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            w.subdirs
                .push((Arc::new(sub), cipher.clone(), plain.clone()));
        }
        w.entries.push(Entry {
            cipher,
            plain,
            kind,
            meta,
            dir: dir_fd.clone(),
            on_disk: l.on_disk,
        });
    }
    Ok(w)
}

/// The entry's own metadata (a symlink's, not its target's), through its directory's
/// descriptor rather than its path, which a directory renamed above it could redirect.
fn entry_meta(dir: &OwnedFd, on_disk: &std::ffi::OsStr) -> std::io::Result<Metadata> {
    let fd = rfs::openat(dir, on_disk, path_flags(), Mode::empty())?;
    std::fs::File::from(fd).metadata()
}

fn kind_of(meta: &Metadata) -> Kind {
    let t = meta.file_type();
    if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_file() {
        Kind::File
    } else {
        Kind::Special
    }
}

/// Where a volume's ciphertext directory is, for a path inside it.
pub fn volume_root_of(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    abs.ancestors()
        .skip(1)
        .take(256)
        .find(|d| crate::volume::VolumeConfig::path_in(d).is_file())
        .map(Path::to_path_buf)
}
