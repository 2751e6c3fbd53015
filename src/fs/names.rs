//! Glue between plaintext names in the mount and on-disk names: each directory's name
//! cipher (from its `kmsfs.dirid` record, cached per inode), long-name `.name` files, and
//! the per-directory record written by `mkdir`. The naming rules are the volume's.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::errno::FsError;
use super::inodes::Inode;
use super::KmsFs;
use crate::format::names::DIR_ID_NAME;
use crate::volume::{tree, CipherName, DirNames, NameError};

impl From<NameError> for FsError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::TooLong => FsError::NameTooLong,
            NameError::Reserved => FsError::NotFound,
            NameError::Undecryptable => FsError::Damaged,
        }
    }
}

impl KmsFs {
    /// The name cipher of directory `dir`.
    pub(super) fn dir_names(&self, dir: &Inode) -> Result<Arc<DirNames>, FsError> {
        if let Some(d) = dir.dir_names.get() {
            return Ok(d.clone());
        }
        let names = self.volume.names();
        let d = if names.is_encrypted() {
            let id = tree::read_dir_record(dir.fd()).map_err(|_| FsError::Damaged);
            match id {
                Ok(id) => names.for_dir(Some(id)),
                Err(e) => {
                    tracing::error!(
                        "directory /{}: its {DIR_ID_NAME} record is missing or damaged ({e}); its entries cannot be named",
                        self.inodes.path_of(dir.ino)
                    );
                    return Err(FsError::Damaged);
                }
            }
        } else {
            names.for_dir(None)
        };
        Ok(dir.dir_names.get_or_init(|| Arc::new(d)).clone())
    }

    /// Where plaintext `name` lives inside directory `parent`.
    pub(super) fn cipher_name(&self, parent: &Inode, name: &OsStr) -> Result<CipherName, FsError> {
        let dir = self.dir_names(parent)?;
        Ok(self.volume.names().encrypt(&dir, name)?)
    }

    /// Writes a long name's `.name` file (replacing a stale one).
    pub(super) fn write_sidecar(&self, parent: &Inode, c: &CipherName) -> Result<(), FsError> {
        Ok(tree::write_sidecar(parent.fd(), c)?)
    }

    pub(super) fn remove_sidecar(&self, parent: &Inode, c: &CipherName) {
        tree::remove_sidecar(parent.fd(), c);
    }

    /// Gives a directory just made at `on_disk` in `parent` its record.
    pub(super) fn write_dir_record(&self, parent: &Inode, on_disk: &OsStr) -> Result<(), FsError> {
        if !self.volume.names().is_encrypted() {
            return Ok(());
        }
        let dir = open_subdir(parent, on_disk)?;
        Ok(tree::write_dir_record(rustix::fd::AsFd::as_fd(&dir))?)
    }

    /// Removes the directory `on_disk` of `parent` if it holds nothing but its record.
    pub(super) fn remove_dir(&self, parent: &Inode, on_disk: &OsStr) -> Result<(), FsError> {
        if !self.volume.names().is_encrypted() {
            rfs::unlinkat(parent.fd(), on_disk, AtFlags::REMOVEDIR)?;
            return Ok(());
        }
        let dir = open_subdir(parent, on_disk)?;
        let dir_fd = rustix::fd::AsFd::as_fd(&dir);
        for entry in rfs::Dir::read_from(dir_fd)? {
            let n = entry?.file_name().to_bytes().to_vec();
            if n != b"." && n != b".." && n != DIR_ID_NAME.as_bytes() {
                return Err(FsError::Sys(rustix::io::Errno::NOTEMPTY));
            }
        }
        let record = tree::read_small(dir_fd, OsStr::new(DIR_ID_NAME), 64).ok();
        let _ = rfs::unlinkat(dir_fd, DIR_ID_NAME, AtFlags::empty());
        if let Err(e) = rfs::unlinkat(parent.fd(), on_disk, AtFlags::REMOVEDIR) {
            // Something appeared meanwhile (or no permission): put the record back.
            if let Some(r) = record {
                let _ = tree::write_new(dir_fd, OsStr::new(DIR_ID_NAME), &r);
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// The plaintext name of an on-disk entry of `dir`, or `None` for kmsfs's own files.
    /// An entry that does not decrypt is an error for that entry only.
    pub(super) fn plain_name(
        &self,
        dir: &Inode,
        dir_fd: BorrowedFd<'_>,
        dir_names: &DirNames,
        on_disk: &OsStr,
    ) -> Result<Option<OsString>, FsError> {
        let names = self.volume.names();
        if names.is_internal(on_disk, dir.ino == super::inodes::ROOT) {
            return Ok(None);
        }
        let sidecar = if names.needs_sidecar(on_disk) {
            Some(tree::read_sidecar(dir_fd, on_disk).map_err(|_| FsError::Damaged)?)
        } else {
            None
        };
        Ok(Some(names.decrypt(
            dir_names,
            on_disk,
            sidecar.as_deref(),
        )?))
    }
}

/// Opens the directory `on_disk` of `parent` for reading (never through a symlink).
fn open_subdir(parent: &Inode, on_disk: &OsStr) -> Result<rustix::fd::OwnedFd, FsError> {
    Ok(rfs::openat(
        parent.fd(),
        on_disk,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}
