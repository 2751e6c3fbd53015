//! Extended attributes of entries. With encrypted names, `user.` and `trusted.` values are
//! stored encrypted and bound to their entry (a file's id from its header, a directory's
//! id from its record), so a value copied onto another entry does not open; the rest
//! (ACLs, security labels) pass through for the kernel to read.
//!
//! Every call goes through `/proc/self/fd/N` of an `O_PATH` descriptor with the following
//! (non-`l`) calls: the magic link resolves to the inode itself.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, XattrFlags};

use super::{proc_path, Namespace, NamespaceError};

/// What `getxattr(2)` and `listxattr(2)` answer: the length alone when asked with a
/// zero-sized buffer, else the bytes, which must fit in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply {
    Len(usize),
    Bytes(Vec<u8>),
}

impl XattrReply {
    fn fit(value: Vec<u8>, size: usize) -> Result<Self, NamespaceError> {
        if size == 0 {
            Ok(Self::Len(value.len()))
        } else if value.len() > size {
            Err(NamespaceError::TooSmall)
        } else {
            Ok(Self::Bytes(value))
        }
    }
}

impl Namespace {
    /// What an encrypted value of the entry open at `fd` (of type `kind`) is bound to.
    pub fn xattr_binding(
        &self,
        fd: BorrowedFd<'_>,
        kind: rfs::FileType,
    ) -> Result<Vec<u8>, NamespaceError> {
        match kind {
            rfs::FileType::RegularFile => Ok(self.file_id_of(fd)?.0.to_vec()),
            rfs::FileType::Directory => Ok(self
                .dir_names(fd, false)?
                .dir_id()
                .map(|id| id.to_vec())
                .unwrap_or_default()),
            _ => Ok(Vec::new()),
        }
    }

    /// The id in the header of the regular file open at `fd` (`O_PATH` will do).
    pub fn file_id_of(&self, fd: BorrowedFd<'_>) -> Result<crate::format::FileId, NamespaceError> {
        let f = std::fs::File::open(proc_path(fd))?;
        let header = crate::file::read_header(&f).map_err(NamespaceError::Header)?;
        Ok(header.file_id)
    }

    /// The plaintext value of xattr `name` of the entry open at `fd`.
    pub fn get_xattr(
        &self,
        fd: BorrowedFd<'_>,
        kind: rfs::FileType,
        name: &OsStr,
    ) -> Result<Vec<u8>, NamespaceError> {
        let path = proc_path(fd);
        let stored = read_value(&path, name)?;
        if !self.names.xattr_encrypted(name) {
            return Ok(stored);
        }
        let binding = self.xattr_binding(fd, kind)?;
        Ok(self.names.open_xattr(&binding, name, &stored)?)
    }

    /// `getxattr(2)` of the entry open at `fd` into a buffer of `size` bytes: a value
    /// stored as it is is not read for its length alone.
    pub fn getxattr(
        &self,
        fd: BorrowedFd<'_>,
        kind: rfs::FileType,
        name: &OsStr,
        size: usize,
    ) -> Result<XattrReply, NamespaceError> {
        if size == 0 && !self.names.xattr_encrypted(name) {
            let len = rfs::getxattr_query(proc_path(fd).as_str(), name)?;
            return Ok(XattrReply::Len(len));
        }
        XattrReply::fit(self.get_xattr(fd, kind, name)?, size)
    }

    /// `listxattr(2)` of the entry open at `fd` into a buffer of `size` bytes.
    pub fn listxattr(&self, fd: BorrowedFd<'_>, size: usize) -> Result<XattrReply, NamespaceError> {
        if size == 0 {
            let len = rfs::listxattr_query(proc_path(fd).as_str())?;
            return Ok(XattrReply::Len(len));
        }
        XattrReply::fit(self.list_xattrs(fd)?, size)
    }

    /// Sets xattr `name` of the entry open at `fd` to `value` (sealed where it must be).
    pub fn set_xattr(
        &self,
        fd: BorrowedFd<'_>,
        kind: rfs::FileType,
        name: &OsStr,
        value: &[u8],
        flags: XattrFlags,
    ) -> Result<(), NamespaceError> {
        let stored = if self.names.xattr_encrypted(name) {
            let binding = self.xattr_binding(fd, kind)?;
            self.names.seal_xattr(&binding, name, value)?
        } else {
            value.to_vec()
        };
        rfs::setxattr(proc_path(fd).as_str(), name, &stored, flags)?;
        Ok(())
    }

    /// The NUL-separated names of the entry's xattrs (they are not encrypted).
    pub fn list_xattrs(&self, fd: BorrowedFd<'_>) -> Result<Vec<u8>, NamespaceError> {
        let path = proc_path(fd);
        let mut buf = vec![0u8; rfs::listxattr_query(path.as_str())?];
        let n = rfs::listxattr(path.as_str(), &mut buf[..])?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn remove_xattr(&self, fd: BorrowedFd<'_>, name: &OsStr) -> Result<(), NamespaceError> {
        rfs::removexattr(proc_path(fd).as_str(), name)?;
        Ok(())
    }

    /// The encrypted xattrs of the entry open at `fd` that do not open under `binding`.
    pub fn bad_xattrs(
        &self,
        fd: BorrowedFd<'_>,
        binding: &[u8],
    ) -> Result<Vec<OsString>, NamespaceError> {
        let path = proc_path(fd);
        let mut bad = Vec::new();
        for name in names_in(&self.list_xattrs(fd)?) {
            if !self.names.xattr_encrypted(name) {
                continue;
            }
            let stored = read_value(&path, name)?;
            if self.names.open_xattr(binding, name, &stored).is_err() {
                bad.push(name.to_owned());
            }
        }
        Ok(bad)
    }

    /// Copies every xattr of `from` to `to` (both open, `O_PATH` will do), re-binding
    /// encrypted values from `from_binding` to `to_binding`.
    pub fn copy_xattrs(
        &self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        from_binding: &[u8],
        to_binding: &[u8],
    ) -> Result<(), NamespaceError> {
        let (from_path, to_path) = (proc_path(from), proc_path(to));
        for name in names_in(&self.list_xattrs(from)?) {
            let stored = read_value(&from_path, name)?;
            let copied = if self.names.xattr_encrypted(name) {
                let plain = self.names.open_xattr(from_binding, name, &stored)?;
                self.names.seal_xattr(to_binding, name, &plain)?
            } else {
                stored
            };
            rfs::setxattr(to_path.as_str(), name, &copied, XattrFlags::empty())?;
        }
        Ok(())
    }
}

/// The names in a NUL-separated xattr list.
fn names_in(list: &[u8]) -> impl Iterator<Item = &OsStr> {
    list.split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(OsStr::from_bytes)
}

/// The stored value of xattr `name` at `path`, whatever its length.
fn read_value(path: &str, name: &OsStr) -> Result<Vec<u8>, NamespaceError> {
    let mut value = vec![0u8; rfs::getxattr_query(path, name)?];
    let n = rfs::getxattr(path, name, &mut value[..])?;
    value.truncate(n);
    Ok(value)
}
