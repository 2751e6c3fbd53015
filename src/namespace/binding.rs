//! Names bound to files (`docs/format.md`, "Names bound to files"): each regular file's
//! header region ends with one tag per name the file has, made with the volume's binding
//! key. A file is read only under a name it is bound to, so one moved, swapped or copied
//! over another in the ciphertext directory is refused. A rename or link through the
//! mount adds the new name's tag, synced, before the name changes, and removes the old
//! one after: a crash in between leaves the file readable under either name.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::{proc_path, DirNames, Namespace, NamespaceError};
use crate::format::binding::{area_offset, BindingArea, Tag, BINDING_AREA_LEN};
use crate::format::Header;

/// Where a regular file is, as the binding sees it: its directory's id and its plaintext
/// name.
#[derive(Clone, Copy)]
pub struct Place<'a> {
    pub dir_id: Option<[u8; 16]>,
    pub name: &'a OsStr,
}

impl<'a> Place<'a> {
    pub fn new(dir: &DirNames, name: &'a OsStr) -> Self {
        Self {
            dir_id: dir.dir_id().copied(),
            name,
        }
    }
}

impl Namespace {
    /// Whether this volume's names are bound to files.
    pub fn binds_names(&self) -> bool {
        self.names.binding().is_some()
    }

    /// The tag of the file with `header` under `at`; `None` where names are not bound.
    fn tag(&self, header: &Header, at: Place<'_>) -> Result<Option<Tag>, NamespaceError> {
        let Some(key) = self.names.binding() else {
            return Ok(None);
        };
        let dir_id = at.dir_id.ok_or(NamespaceError::Unbound)?;
        Ok(Some(key.tag(
            &header.file_id.0,
            &dir_id,
            at.name.as_bytes(),
        )))
    }

    /// Checks that the file open as `file`, with `header`, is bound to its name `at`: the
    /// one it was written under or last renamed or linked to through the mount.
    pub fn check_binding(
        &self,
        file: &File,
        header: &Header,
        at: Place<'_>,
    ) -> Result<(), NamespaceError> {
        let Some(tag) = self.tag(header, at)? else {
            return Ok(());
        };
        if !header.is_bound() {
            return Err(NamespaceError::Unbound);
        }
        match read_area(file, header)?.find(&tag) {
            Some(_) => Ok(()),
            None => Err(NamespaceError::Unbound),
        }
    }

    /// Binds the regular file open (read-write) as `file` to the name `at`, and with
    /// `sync` makes the tag durable before returning. A file bound to as many names as its
    /// area holds cannot get another (`EMLINK`).
    pub fn bind(&self, file: &File, at: Place<'_>, sync: bool) -> Result<(), NamespaceError> {
        if !self.binds_names() {
            return Ok(());
        }
        let _one_at_a_time = self.binding_lock.lock().unwrap_or_else(|e| e.into_inner());
        let header = crate::file::read_header(file).map_err(NamespaceError::Header)?;
        let Some(tag) = self.tag(&header, at)? else {
            return Ok(());
        };
        if !header.is_bound() {
            return Err(NamespaceError::Unbound);
        }
        let area = read_area(file, &header)?;
        if area.find(&tag).is_some() {
            return Ok(());
        }
        let slot = area.free_slot().ok_or(NamespaceError::TooManyLinks)?;
        let at_slot = area_offset(header.header_len) + BindingArea::slot_offset(slot);
        file.write_all_at(&tag, at_slot)?;
        if sync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Removes the tag of the name `at` from the file open as `file`: after the name is
    /// gone. Not synced: a tag left by a crash names a name the file no longer has.
    pub fn unbind(&self, file: &File, at: Place<'_>) -> Result<(), NamespaceError> {
        if !self.binds_names() {
            return Ok(());
        }
        let _one_at_a_time = self.binding_lock.lock().unwrap_or_else(|e| e.into_inner());
        let header = crate::file::read_header(file).map_err(NamespaceError::Header)?;
        let Some(tag) = self.tag(&header, at)? else {
            return Ok(());
        };
        if !header.is_bound() {
            return Ok(());
        }
        if let Some(slot) = read_area(file, &header)?.find(&tag) {
            let at_slot = area_offset(header.header_len) + BindingArea::slot_offset(slot);
            file.write_all_at(&[0; crate::format::binding::TAG_LEN], at_slot)?;
        }
        Ok(())
    }

    /// The regular file `on_disk` of `dir` opened read-write to change its tags, or `None`
    /// for anything else or where names are not bound. A file without write permission
    /// is opened by its owner (the daemon, or root) with the permission lent for the open.
    pub fn open_to_bind(
        &self,
        dir: BorrowedFd<'_>,
        on_disk: &OsStr,
    ) -> Result<Option<File>, NamespaceError> {
        if !self.binds_names() {
            return Ok(None);
        }
        let fd = rfs::openat(dir, on_disk, super::path_flags(), Mode::empty())?;
        self.reopen_to_bind(fd.as_fd())
    }

    /// [`open_to_bind`](Self::open_to_bind) of the entry open at `entry` (`O_PATH`).
    pub(super) fn reopen_to_bind(
        &self,
        entry: BorrowedFd<'_>,
    ) -> Result<Option<File>, NamespaceError> {
        if !self.binds_names() {
            return Ok(None);
        }
        let st = rfs::fstat(entry)?;
        if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
            return Ok(None);
        }
        let path = proc_path(entry);
        let flags = OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC;
        match rfs::openat(rfs::CWD, path.as_str(), flags, Mode::empty()) {
            Ok(fd) => return Ok(Some(File::from(fd))),
            Err(e) => {
                let e = std::io::Error::from(e);
                if e.kind() != std::io::ErrorKind::PermissionDenied {
                    return Err(e.into());
                }
            }
        }
        let mode = st.st_mode & 0o7777;
        let lend = Mode::from_raw_mode(mode | 0o200);
        rfs::chmodat(rfs::CWD, path.as_str(), lend, AtFlags::empty())?;
        let opened = rfs::openat(rfs::CWD, path.as_str(), flags, Mode::empty());
        let back = rfs::chmodat(
            rfs::CWD,
            path.as_str(),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        );
        let fd = opened?;
        back?;
        Ok(Some(File::from(fd)))
    }
}

impl Namespace {
    /// Before a rename of `from` to `to` (not an exchange): the moved file, open to
    /// change its tags, bound to its new name and synced. Returns it, to unbind the old
    /// name once the rename is done.
    pub(super) fn bind_before_rename(
        &self,
        (dir, on_disk): (BorrowedFd<'_>, &OsStr),
        to: Place<'_>,
    ) -> Result<Option<File>, NamespaceError> {
        let Some(file) = self.open_to_bind(dir, on_disk)? else {
            return Ok(None);
        };
        self.bind(&file, to, true)?;
        Ok(Some(file))
    }

    /// After a rename: the moved file's old name's tag removed (best effort: a tag left
    /// names a name the file no longer has).
    pub(super) fn unbind_after_rename(&self, moved: Option<File>, from: Place<'_>) {
        if let Some(file) = moved {
            if let Err(e) = self.unbind(&file, from) {
                tracing::warn!("{:?}: the tag of its old name stays: {e}", from.name);
            }
        }
    }
}

/// The binding area of the file open as `file`, with `header`.
fn read_area(file: &File, header: &Header) -> Result<BindingArea, NamespaceError> {
    let mut area = BindingArea::default();
    file.read_exact_at(&mut area.0, area_offset(header.header_len))?;
    debug_assert_eq!(area.0.len(), BINDING_AREA_LEN);
    Ok(area)
}
