//! Mapping whole paths between the plaintext view and the ciphertext directory, for
//! operators (`kmsfs path encrypt|decrypt`) and offline tools: one directory at a time
//! from the top, reading each directory's record on the way and never following a
//! symlink inside the ciphertext directory.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};

use super::{Dir, Namespace, NamespaceError};

/// Opens a directory of the tree as `O_PATH`, never through a symlink.
fn open_dir_path(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, NamespaceError> {
    Ok(rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The top directory of a volume, as `O_PATH`.
pub fn open_root(cipherdir: &Path) -> Result<OwnedFd, NamespaceError> {
    Ok(rfs::open(
        cipherdir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The components of a relative path inside the volume (no `..`).
fn components(path: &Path) -> Result<Vec<&OsStr>, NamespaceError> {
    path.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(NamespaceError::DotDot(path.to_path_buf())),
        })
        .collect()
}

impl Namespace {
    /// The ciphertext path (relative to the ciphertext directory `cipherdir`) of a
    /// plaintext path (relative to the mount). The directories on the way must exist; the
    /// last component need not.
    pub fn encrypt_path(&self, cipherdir: &Path, plain: &Path) -> Result<PathBuf, NamespaceError> {
        let mut cipher_rel = PathBuf::new();
        let mut dir_fd = open_root(cipherdir)?;
        let comps = components(plain)?;
        for (i, comp) in comps.iter().enumerate() {
            let names = self
                .dir_names(dir_fd.as_fd(), i == 0)
                .map_err(at(cipherdir.join(&cipher_rel)))?;
            let dir = Dir {
                fd: dir_fd.as_fd(),
                names: &names,
            };
            let c = self.locate(dir, comp).map_err(at(PathBuf::from(comp)))?;
            if i + 1 < comps.len() {
                dir_fd = open_dir_path(&dir_fd, &c.on_disk).map_err(at(plain.to_path_buf()))?;
            }
            cipher_rel.push(c.on_disk);
        }
        Ok(cipher_rel)
    }

    /// The plaintext path (relative to the mount) of a path inside the ciphertext
    /// directory `cipherdir` (absolute, or relative to it).
    pub fn decrypt_path(&self, cipherdir: &Path, cipher: &Path) -> Result<PathBuf, NamespaceError> {
        let rel = match cipher.strip_prefix(cipherdir) {
            Ok(r) => r.to_path_buf(),
            Err(_) if cipher.is_absolute() => {
                return Err(NamespaceError::NotInside {
                    path: cipher.to_path_buf(),
                    cipherdir: cipherdir.to_path_buf(),
                })
            }
            Err(_) => cipher.to_path_buf(),
        };
        let mut plain = PathBuf::new();
        let mut cipher_dir = cipherdir.to_path_buf();
        let mut dir_fd = open_root(cipherdir)?;
        let comps = components(&rel)?;
        for (i, comp) in comps.iter().enumerate() {
            let names = self
                .dir_names(dir_fd.as_fd(), i == 0)
                .map_err(at(cipher_dir.clone()))?;
            let dir = Dir {
                fd: dir_fd.as_fd(),
                names: &names,
            };
            let name = self
                .plain_name(dir, comp)
                .map_err(at(PathBuf::from(comp)))?
                .ok_or_else(|| NamespaceError::Internal(comp.to_os_string()))?;
            if i + 1 < comps.len() {
                dir_fd = open_dir_path(&dir_fd, comp).map_err(at(cipher_dir.join(comp)))?;
            }
            cipher_dir.push(comp);
            plain.push(name);
        }
        Ok(plain)
    }
}

/// Says which path an error happened at.
fn at(path: PathBuf) -> impl FnOnce(NamespaceError) -> NamespaceError {
    move |source| NamespaceError::At {
        path,
        source: Box::new(source),
    }
}
