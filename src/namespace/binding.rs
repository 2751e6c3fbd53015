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
use crate::format::binding::{area_offset, BindingArea, Tag, BINDING_AREA_LEN, TAG_LEN};
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
    /// area holds cannot get another (`EMLINK`). With `sync` (a rename or link), its
    /// modification time stays as it was.
    ///
    /// The tags of names the file left in earlier renames ([`Self::defer_unbind`]) are
    /// cleared here, after a sync that makes those renames durable: cleared at once, the
    /// write could reach the disk before the rename did, and a power cut would leave the
    /// file under its old name without its tag.
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
        let st = rfs::fstat(file)?;
        let mut stale = self.take_stale(st.st_ino, &tag);
        let mut area = read_area(file, &header)?;
        if area.find(&tag).is_none() {
            if area.free_slot().is_none() && !stale.is_empty() {
                file.sync_all()?;
                clear(file, &header, &mut area, &std::mem::take(&mut stale))?;
            }
            let slot = area.free_slot().ok_or(NamespaceError::TooManyLinks)?;
            file.write_all_at(&tag, slot_at(&header, slot))?;
            if sync {
                keep_mtime(file, &st)?; // a new file's (unsynced) has no time to keep
            }
        }
        if sync && stale.is_empty() {
            file.sync_data()?;
        } else if sync {
            // fsync, not fdatasync: it also commits the renames that left `stale`.
            file.sync_all()?;
            clear(file, &header, &mut area, &stale)?;
            keep_mtime(file, &st)?;
        } else if !stale.is_empty() {
            self.stale_lock().insert(st.st_ino, stale);
        }
        Ok(())
    }

    /// After a rename that took the name `at` from the file open as `file`: its tag is
    /// cleared at the file's next sync of a tag (`bind`). A tag left by a stopped mount
    /// names a name the file no longer has.
    pub fn defer_unbind(&self, file: &File, at: Place<'_>) -> Result<(), NamespaceError> {
        if !self.binds_names() {
            return Ok(());
        }
        let header = crate::file::read_header(file).map_err(NamespaceError::Header)?;
        let Some(tag) = self.tag(&header, at)? else {
            return Ok(());
        };
        let ino = rfs::fstat(file)?.st_ino;
        let mut stale = self.stale_lock();
        // Bounded: forgetting a tag only leaves it in its file.
        if stale.len() >= MAX_STALE {
            stale.clear();
        }
        let tags = stale.entry(ino).or_default();
        if !tags.contains(&tag) {
            tags.push(tag);
        }
        Ok(())
    }

    fn stale_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Vec<Tag>>> {
        self.stale_tags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stale tags of inode `ino`, but `keep` (a name the file is being bound to again).
    fn take_stale(&self, ino: u64, keep: &Tag) -> Vec<Tag> {
        let mut tags = self.stale_lock().remove(&ino).unwrap_or_default();
        tags.retain(|t| t != keep);
        tags
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

    /// After a rename: the moved file's old name's tag to clear later (`defer_unbind`).
    pub(super) fn unbind_after_rename(&self, moved: Option<File>, from: Place<'_>) {
        if let Some(file) = moved {
            if let Err(e) = self.defer_unbind(&file, from) {
                tracing::warn!("{:?}: the tag of its old name stays: {e}", from.name);
            }
        }
    }
}

/// Most files with tags waiting to be cleared that a mount keeps track of.
const MAX_STALE: usize = 1 << 16;

/// Where slot `slot` of the binding area lies in the file.
fn slot_at(header: &Header, slot: usize) -> u64 {
    area_offset(header.header_len) + BindingArea::slot_offset(slot)
}

/// Clears the slots of `tags` in the file (and in `area`, its copy).
fn clear(
    file: &File,
    header: &Header,
    area: &mut BindingArea,
    tags: &[Tag],
) -> Result<(), NamespaceError> {
    for tag in tags {
        if let Some(slot) = area.find(tag) {
            file.write_all_at(&[0; TAG_LEN], slot_at(header, slot))?;
            area.0[slot * TAG_LEN..(slot + 1) * TAG_LEN].fill(0);
        }
    }
    Ok(())
}

/// Puts back the modification time `st` had: a tag is not a change of content.
fn keep_mtime(file: &File, st: &rfs::Stat) -> Result<(), NamespaceError> {
    let omit = rfs::Timespec {
        tv_sec: 0,
        tv_nsec: rfs::UTIME_OMIT,
    };
    let times = rfs::Timestamps {
        last_access: omit,
        last_modification: rfs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rfs::futimens(file, &times)?;
    Ok(())
}

/// The binding area of the file open as `file`, with `header`.
fn read_area(file: &File, header: &Header) -> Result<BindingArea, NamespaceError> {
    let mut area = BindingArea::default();
    file.read_exact_at(&mut area.0, area_offset(header.header_len))?;
    debug_assert_eq!(area.0.len(), BINDING_AREA_LEN);
    Ok(area)
}
