//! Walking a volume offline: every entry of the ciphertext tree with its plaintext path,
//! and every problem with names found on the way (a name that does not decrypt, a missing
//! directory record). Used by fsck, rewrap, rekey and export.

use std::fs::Metadata;
use std::path::{Path, PathBuf};

use crate::volume::{sidecar_of, Volume};

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
    /// Absolute path in the ciphertext directory.
    pub cipher: PathBuf,
    /// Path relative to the mount's root.
    pub plain: PathBuf,
    pub kind: Kind,
    pub meta: Metadata,
}

/// Something wrong with the tree itself (not with a file's contents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub cipher: PathBuf,
    /// The plaintext directory it is in.
    pub plain_dir: PathBuf,
    pub what: String,
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

/// Every entry under the volume's root, parents before children, and the problems found.
pub fn walk(volume: &Volume) -> (Vec<Entry>, Vec<Problem>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut stack: Vec<(PathBuf, PathBuf)> =
        vec![(volume.cipherdir().to_path_buf(), PathBuf::new())];
    while let Some((cipher_dir, plain_dir)) = stack.pop() {
        let at_root = cipher_dir == volume.cipherdir();
        let dir_names = match volume.dir_names_at(&cipher_dir) {
            Ok(d) => d,
            Err(e) => {
                problems.push(Problem {
                    cipher: cipher_dir.clone(),
                    plain_dir: plain_dir.clone(),
                    what: format!("directory record missing or damaged: {e}"),
                });
                continue;
            }
        };
        let listing = match std::fs::read_dir(&cipher_dir) {
            Ok(l) => l,
            Err(e) => {
                problems.push(Problem {
                    cipher: cipher_dir.clone(),
                    plain_dir: plain_dir.clone(),
                    what: format!("cannot list: {e}"),
                });
                continue;
            }
        };
        let mut children: Vec<_> = listing.filter_map(|e| e.ok()).collect();
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let on_disk = child.file_name();
            let names = volume.names();
            if names.is_internal(&on_disk, at_root) {
                continue;
            }
            let sidecar = if names.needs_sidecar(&on_disk) {
                std::fs::read(cipher_dir.join(sidecar_of(&on_disk))).ok()
            } else {
                None
            };
            let plain_name = match names.decrypt(&dir_names, &on_disk, sidecar.as_deref()) {
                Ok(n) => n,
                Err(e) => {
                    problems.push(Problem {
                        cipher: child.path(),
                        plain_dir: plain_dir.clone(),
                        what: format!("name {on_disk:?}: {e}"),
                    });
                    continue;
                }
            };
            let Ok(meta) = std::fs::symlink_metadata(child.path()) else {
                continue;
            };
            let kind = kind_of(&meta);
            let plain = plain_dir.join(&plain_name);
            if kind == Kind::Dir {
                stack.push((child.path(), plain.clone()));
            }
            entries.push(Entry {
                cipher: child.path(),
                plain,
                kind,
                meta,
            });
        }
    }
    entries.sort_by(|a, b| a.plain.cmp(&b.plain));
    (entries, problems)
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
