//! Making, linking, renaming and removing entries, each with its long-name file (and a
//! directory with its record), undone when a later step fails so that no half-made entry
//! is left behind.
//!
//! Order on disk (`docs/format.md`, "Writing rules"): what a name depends on is written,
//! and its writeback started ([`super::start_writeback`]), before the name is made: a long
//! name's long-name file before the entry, a directory's record before the directory gets
//! its name (it is made under a temporary name and renamed into place), a new file's header
//! before the file gets its name (it is made unnamed, `O_TMPFILE`, and linked). So neither a
//! killed daemon nor, on ext4, a power cut leaves a name without what it needs to be read.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, CWD};

use super::records::{
    read_dir_record_bytes, remove_long_name_file, write_dir_record, write_long_name_file, write_new,
};
use super::temp::temp_name;
use super::{proc_path, CipherName, Dir, Namespace, NamespaceError, Owner, Place};
use crate::format::names::{DIR_ID_NAME, DIR_ID_NAME_PREFIX};

/// A regular file just created, empty, with its long-name file. It gets its name at
/// [`NewFile::finish`], after its header is written; dropped before, it leaves nothing.
pub struct NewFile<'a> {
    dir: BorrowedFd<'a>,
    name: CipherName,
    file: Option<File>,
    /// Another descriptor of the file (read-write): to link at `finish`, and to sync at the
    /// next `fsync` of a directory (`unsynced.rs`).
    fd: Option<OwnedFd>,
    /// Made without a name (`O_TMPFILE`), to link at `finish`; false where the filesystem
    /// cannot do that and the file was made under its name.
    unnamed: bool,
    /// Its directory's id and plaintext name, which `finish` binds it to.
    place: (Option<[u8; 16]>, std::ffi::OsString),
    done: bool,
}

impl NewFile<'_> {
    /// The open file (read-write), to write the header through; once only.
    pub fn take_file(&mut self) -> File {
        self.file.take().expect("the new file is taken once")
    }

    /// The new file, to give its metadata before it has a name: its descriptor, and its
    /// name on disk where it was made under it.
    pub fn target(&self) -> (BorrowedFd<'_>, Option<&OsStr>) {
        match (&self.fd, self.unnamed) {
            (Some(fd), true) => (fd.as_fd(), None),
            _ => (self.dir, Some(&self.name.on_disk)),
        }
    }

    /// Binds the file to its name (where names are bound), once its header is written:
    /// before its metadata is set, which the tag's write would otherwise touch. `finish`
    /// does it if this was not called.
    pub fn bind(&self, ns: &Namespace) -> Result<(), NamespaceError> {
        let Some(fd) = self.fd.as_ref().filter(|_| ns.binds_names()) else {
            return Ok(());
        };
        let (dir_id, name) = (self.place.0, self.place.1.as_os_str());
        ns.bind(&File::from(fd.try_clone()?), Place { dir_id, name }, false)
    }

    /// Gives the file to `owner` and its name.
    pub fn finish(
        mut self,
        ns: &Namespace,
        owner: Option<Owner>,
    ) -> Result<CipherName, NamespaceError> {
        // Not synced: the tag lies beside the header, which the next fsync syncs.
        self.bind(ns)?;
        let fd = self.fd.take().expect("finished once");
        if self.unnamed {
            ns.give_fd(self.dir, fd.as_fd(), owner)?;
            // Through /proc so that no CAP_DAC_READ_SEARCH is needed (AT_EMPTY_PATH would).
            let path = proc_path(fd.as_fd());
            let flags = AtFlags::SYMLINK_FOLLOW;
            rfs::linkat(CWD, path.as_str(), self.dir, &self.name.on_disk, flags)?;
        } else {
            ns.give(self.dir, &self.name.on_disk, owner)?;
        }
        self.done = true;
        ns.unsynced.add(fd);
        Ok(self.name.clone())
    }
}

impl Drop for NewFile<'_> {
    fn drop(&mut self) {
        if !self.done {
            // An unnamed file goes when its last descriptor closes.
            if !self.unnamed {
                let _ = rfs::unlinkat(self.dir, &self.name.on_disk, AtFlags::empty());
            }
            remove_orphan_long_name_file(self.dir, &self.name);
        }
    }
}

/// Removes a long-name file whose entry does not exist: the undo of a step that wrote it.
/// One whose entry exists (made meanwhile by someone else) is that entry's and stays.
fn remove_orphan_long_name_file(dir: BorrowedFd<'_>, c: &CipherName) {
    if rfs::statat(dir, &c.on_disk, AtFlags::SYMLINK_NOFOLLOW).is_err() {
        remove_long_name_file(dir, c);
    }
}

/// Whether an error says the filesystem cannot make unnamed files (`O_TMPFILE`).
fn no_tmpfile(e: rustix::io::Errno) -> bool {
    use std::io::ErrorKind::{InvalidInput, IsADirectory, Unsupported};
    matches!(
        std::io::Error::from(e).kind(),
        InvalidInput | IsADirectory | Unsupported
    )
}

/// What a rename moved: the backing inode numbers of the entry, and of the one it
/// replaced or (with `RENAME_EXCHANGE`) swapped with.
#[derive(Debug, Clone, Copy)]
pub struct Renamed {
    pub moved: u64,
    pub other: Option<u64>,
}

impl Namespace {
    /// Creates the regular file `name` in `dir` (it must not exist) with permissions
    /// `perm`. The caller writes its header, then calls [`NewFile::finish`].
    pub fn create_file<'a>(
        &self,
        dir: Dir<'a>,
        name: &OsStr,
        perm: u32,
    ) -> Result<NewFile<'a>, NamespaceError> {
        let c = self.locate(dir, name)?;
        // Checked first, so that no key is made for a name that is taken (the name is
        // only claimed at `finish`, which fails if someone took it meanwhile).
        ensure_free(dir.fd, &c)?;
        write_long_name_file(dir.fd, &c)?;
        let mode = Mode::from_raw_mode(perm & 0o7777);
        let unnamed = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        let (fd, unnamed) = match rfs::openat(dir.fd, ".", unnamed, mode) {
            Ok(fd) => (fd, true),
            Err(e) if no_tmpfile(e) => {
                let named = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW;
                let fd = rfs::openat(dir.fd, &c.on_disk, named | OFlags::CLOEXEC, mode)?;
                (fd, false)
            }
            Err(e) => {
                remove_orphan_long_name_file(dir.fd, &c);
                return Err(e.into());
            }
        };
        let mut new = NewFile {
            dir: dir.fd,
            name: c,
            file: None,
            fd: None,
            unnamed,
            place: (dir.names.dir_id().copied(), name.to_owned()),
            done: false,
        };
        // Dropped on an error, `new` removes what was made.
        new.fd = Some(fd.try_clone()?);
        new.file = Some(File::from(fd));
        Ok(new)
    }

    /// Makes the directory `name` in `dir`, with its record, for `owner`. With encrypted
    /// names it is made under a temporary name and renamed into place once its record is
    /// written, so that it never shows under its name without one.
    pub fn mkdir(
        &self,
        dir: Dir<'_>,
        name: &OsStr,
        perm: u32,
        owner: Option<Owner>,
    ) -> Result<(), NamespaceError> {
        let c = self.locate(dir, name)?;
        let mode = Mode::from_raw_mode(perm & 0o7777);
        if !self.names.has_records() {
            rfs::mkdirat(dir.fd, &c.on_disk, mode)?;
            return self.give(dir.fd, &c.on_disk, owner).inspect_err(|_| {
                let _ = rfs::unlinkat(dir.fd, &c.on_disk, AtFlags::REMOVEDIR);
            });
        }
        ensure_free(dir.fd, &c)?;
        let temp = temp_name()?;
        rfs::mkdirat(dir.fd, &temp, mode)?;
        let made = self
            .write_record(dir.fd, &temp)
            .and_then(|()| Ok(write_long_name_file(dir.fd, &c)?))
            .and_then(|()| self.give(dir.fd, &temp, owner))
            .and_then(|()| rename_noreplace(dir.fd, &temp, &c.on_disk));
        if let Err(e) = made {
            if self.remove_dir(dir.fd, &temp).is_err() {
                let _ = rfs::unlinkat(dir.fd, &temp, AtFlags::REMOVEDIR);
            }
            remove_orphan_long_name_file(dir.fd, &c);
            return Err(e);
        }
        Ok(())
    }

    /// Makes a FIFO, socket or device node `name` in `dir`, stored as itself.
    pub fn mknod(
        &self,
        dir: Dir<'_>,
        name: &OsStr,
        kind: rfs::FileType,
        perm: u32,
        rdev: u64,
        owner: Option<Owner>,
    ) -> Result<(), NamespaceError> {
        let c = self.locate(dir, name)?;
        self.make_entry(dir.fd, &c, owner, || {
            let mode = Mode::from_raw_mode(perm & 0o7777);
            rfs::mknodat(dir.fd, &c.on_disk, kind, mode, rdev)
        })
    }

    /// Makes the symlink `name` in `dir` to `target` (stored encrypted with encrypted names).
    pub fn symlink(
        &self,
        dir: Dir<'_>,
        name: &OsStr,
        target: &[u8],
        owner: Option<Owner>,
    ) -> Result<(), NamespaceError> {
        let c = self.locate(dir, name)?;
        let stored = self.names.seal_symlink(target)?;
        self.make_entry(dir.fd, &c, owner, || {
            rfs::symlinkat(OsStr::from_bytes(&stored), dir.fd, &c.on_disk)
        })
    }

    /// Links the entry open at `entry` (an `O_PATH` descriptor) as `new_name` in `dir`.
    pub fn link(
        &self,
        entry: BorrowedFd<'_>,
        dir: Dir<'_>,
        new_name: &OsStr,
    ) -> Result<(), NamespaceError> {
        let c = self.locate(dir, new_name)?;
        if let Some(file) = self.reopen_to_bind(entry)? {
            self.bind(&file, Place::new(dir.names, new_name), true)?;
        }
        write_long_name_file(dir.fd, &c)?;
        // Through /proc so that no CAP_DAC_READ_SEARCH is needed (AT_EMPTY_PATH would).
        let linked = rfs::linkat(
            CWD,
            proc_path(entry).as_str(),
            dir.fd,
            &c.on_disk,
            AtFlags::SYMLINK_FOLLOW,
        );
        if let Err(e) = linked {
            remove_orphan_long_name_file(dir.fd, &c);
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes the entry `name` of `dir`: a directory (`is_dir`, empty but for its record)
    /// or anything else.
    pub fn remove(&self, dir: Dir<'_>, name: &OsStr, is_dir: bool) -> Result<(), NamespaceError> {
        let c = self.locate(dir, name)?;
        if is_dir {
            self.remove_dir(dir.fd, &c.on_disk)?;
        } else {
            rfs::unlinkat(dir.fd, &c.on_disk, AtFlags::empty())?;
        }
        remove_long_name_file(dir.fd, &c);
        Ok(())
    }

    /// Renames `name` in `from` to `new_name` in `to` (with `rename(2)`'s flags). Names are
    /// per directory: the entry gets its new directory's name and a long name's long-name
    /// file goes with it; with `EXCHANGE` each name stays where it is. No content is
    /// touched.
    pub fn rename(
        &self,
        from: Dir<'_>,
        name: &OsStr,
        to: Dir<'_>,
        new_name: &OsStr,
        flags: rfs::RenameFlags,
    ) -> Result<Renamed, NamespaceError> {
        let (c_old, c_new) = (self.locate(from, name)?, self.locate(to, new_name)?);
        let moved = rfs::statat(from.fd, &c_old.on_disk, AtFlags::SYMLINK_NOFOLLOW)?.st_ino;
        let other = rfs::statat(to.fd, &c_new.on_disk, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|s| s.st_ino);
        let exchange = flags.contains(rfs::RenameFlags::EXCHANGE);
        // Two links of one file: rename(2) does nothing and both names stay.
        let same =
            other == Some(moved) || (c_old.on_disk == c_new.on_disk && same_dir(from.fd, to.fd));
        let moves_name = !exchange && !same;
        let (at_old, at_new) = (Place::new(from.names, name), Place::new(to.names, new_name));
        let (moved_file, other_file) = match (same, exchange) {
            (true, _) => (None, None),
            (false, false) => (
                self.bind_before_rename((from.fd, &c_old.on_disk), at_new)?,
                None,
            ),
            (false, true) => (
                self.bind_before_rename((from.fd, &c_old.on_disk), at_new)?,
                self.bind_before_rename((to.fd, &c_new.on_disk), at_old)?,
            ),
        };
        if moves_name {
            write_long_name_file(to.fd, &c_new)?;
        }
        if let Err(e) = rfs::renameat_with(from.fd, &c_old.on_disk, to.fd, &c_new.on_disk, flags) {
            if moves_name {
                remove_orphan_long_name_file(to.fd, &c_new);
            }
            return Err(e.into());
        }
        if moves_name {
            remove_long_name_file(from.fd, &c_old);
        }
        self.unbind_after_rename(moved_file, at_old);
        self.unbind_after_rename(other_file, at_new);
        Ok(Renamed { moved, other })
    }

    /// Makes a non-directory entry with `make`, after its long-name file, and gives it to
    /// `owner`; undoes both if a step fails.
    fn make_entry(
        &self,
        dir: BorrowedFd<'_>,
        c: &CipherName,
        owner: Option<Owner>,
        make: impl FnOnce() -> Result<(), rustix::io::Errno>,
    ) -> Result<(), NamespaceError> {
        write_long_name_file(dir, c)?;
        if let Err(e) = make() {
            remove_orphan_long_name_file(dir, c);
            return Err(e.into());
        }
        self.give(dir, &c.on_disk, owner).inspect_err(|_| {
            let _ = rfs::unlinkat(dir, &c.on_disk, AtFlags::empty());
            remove_long_name_file(dir, c);
        })
    }

    /// Gives the new entry `on_disk` of `dir` to `owner`, keeping a set-group-ID
    /// directory's group (as a local filesystem does).
    pub(super) fn give(
        &self,
        dir: BorrowedFd<'_>,
        on_disk: &OsStr,
        owner: Option<Owner>,
    ) -> Result<(), NamespaceError> {
        let Some(owner) = owner else {
            return Ok(());
        };
        let gid = owner_gid(dir, owner)?;
        rfs::chownat(
            dir,
            on_disk,
            Some(rfs::Uid::from_raw(owner.uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// Gives the file open at `fd` (new, in `dir`) to `owner`, keeping a set-group-ID
    /// directory's group.
    fn give_fd(
        &self,
        dir: BorrowedFd<'_>,
        fd: BorrowedFd<'_>,
        owner: Option<Owner>,
    ) -> Result<(), NamespaceError> {
        let Some(owner) = owner else {
            return Ok(());
        };
        let gid = owner_gid(dir, owner)?;
        let (uid, gid) = (rfs::Uid::from_raw(owner.uid), rfs::Gid::from_raw(gid));
        rfs::fchown(fd, Some(uid), Some(gid))?;
        Ok(())
    }

    /// Gives the directory just made at `on_disk` in `dir` its record.
    fn write_record(&self, dir: BorrowedFd<'_>, on_disk: &OsStr) -> Result<(), NamespaceError> {
        if !self.names.has_records() {
            return Ok(());
        }
        let sub = open_subdir(dir, on_disk)?;
        Ok(write_dir_record(sub.as_fd())?)
    }

    /// Removes the directory `on_disk` of `dir` if it holds nothing but its record.
    pub(super) fn remove_dir(
        &self,
        dir: BorrowedFd<'_>,
        on_disk: &OsStr,
    ) -> Result<(), NamespaceError> {
        if !self.names.has_records() {
            rfs::unlinkat(dir, on_disk, AtFlags::REMOVEDIR)?;
            return Ok(());
        }
        let sub = open_subdir(dir, on_disk)?;
        let mut record_names = Vec::new();
        for entry in rfs::Dir::read_from(&sub)? {
            let n = entry?.file_name().to_bytes().to_vec();
            if n.starts_with(DIR_ID_NAME_PREFIX.as_bytes()) {
                record_names.push(std::ffi::OsString::from_vec(n));
            } else if n != b"." && n != b".." && n != DIR_ID_NAME.as_bytes() {
                return Err(NamespaceError::NotEmpty);
            }
        }
        let record = read_dir_record_bytes(sub.as_fd());
        let _ = rfs::unlinkat(&sub, DIR_ID_NAME, AtFlags::empty());
        for name in &record_names {
            let _ = rfs::unlinkat(&sub, name, AtFlags::empty());
        }
        if let Err(e) = rfs::unlinkat(dir, on_disk, AtFlags::REMOVEDIR) {
            // Something appeared meanwhile (or no permission): put the record back.
            if let Some(r) = record {
                let _ = write_new(sub.as_fd(), OsStr::new(DIR_ID_NAME), &r);
            }
            for name in &record_names {
                let _ = write_new(sub.as_fd(), name, b"");
            }
            return Err(e.into());
        }
        Ok(())
    }
}

/// The group a new entry of `dir` gets for `owner`: the directory's own where it is
/// set-group-ID (as a local filesystem does), else the owner's.
fn owner_gid(dir: BorrowedFd<'_>, owner: Owner) -> Result<u32, NamespaceError> {
    let parent = rfs::fstat(dir)?;
    Ok(if parent.st_mode & 0o2000 != 0 {
        parent.st_gid
    } else {
        owner.gid
    })
}

/// Fails with [`NamespaceError::Exists`] if the entry `c` of `dir` exists.
fn ensure_free(dir: BorrowedFd<'_>, c: &CipherName) -> Result<(), NamespaceError> {
    match rfs::statat(dir, &c.on_disk, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Err(NamespaceError::Exists),
        Err(e) if std::io::Error::from(e).kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Renames `from` to `to` in `dir`, failing if `to` exists.
fn rename_noreplace(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> Result<(), NamespaceError> {
    match rfs::renameat_with(dir, from, dir, to, rfs::RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A filesystem without RENAME_NOREPLACE: check, then rename (a race with another
        // creator of the same name would replace its empty directory).
        Err(e) if std::io::Error::from(e).kind() == std::io::ErrorKind::InvalidInput => {
            ensure_free(
                dir,
                &CipherName {
                    on_disk: to.to_owned(),
                    long: None,
                },
            )?;
            Ok(rfs::renameat(dir, from, dir, to)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory `on_disk` of `dir` for reading (never through a symlink).
pub(super) fn open_subdir(dir: BorrowedFd<'_>, on_disk: &OsStr) -> Result<OwnedFd, NamespaceError> {
    Ok(rfs::openat(
        dir,
        on_disk,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Whether two descriptors are the same directory.
fn same_dir(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    match (rfs::fstat(a), rfs::fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}
