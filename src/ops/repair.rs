//! `fsck --repair`: mends what a crash can leave in a volume, then checks it as `fsck`
//! does (`docs/cli.md`, "kmsfs fsck"; `docs/posix.md`, "What survives a crash").
//!
//! It removes kmsfs's own temporary files, long-name files without their entry and files a
//! create left at 0 bytes (they hold no data); writes a torn directory record again from
//! its record name, or gives the directory a new one when it holds no entries; zeroes the
//! slack a cut truncation left in a version 2 file, once every block of that file
//! authenticates; and cuts a file before its failing blocks when they are its last ones
//! (what a power cut leaves of writes not fsynced). It never removes a byte that could
//! still be read: a file of one byte, a directory whose entries need its lost record, a
//! file with a failing block before sound ones are left as they are and reported. Each
//! action is said; the cut opens the file with its key, audited as the check's opens are.
//!
//! Only on an unmounted volume ([`refuse_if_mounted`]): a mount's temporary and half-made
//! entries look like a crash's. The steps in the ciphertext directory are the namespace's
//! (`namespace/repair.rs`); this file picks where, writes the slack, and keeps the list.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use serde::Serialize;

use super::error::{file as file_error, io};
use super::fsck::{self, Fault, FsckReport};
use super::walk::{walk, Entry, Kind};
use super::OpsError;
use crate::file::EncryptedFile;
use crate::format::names::DIR_ID_NAME;
use crate::format::Layout;
use crate::namespace::repair::{FileShape, NoData, Renewal};
use crate::namespace::{open_root, Namespace};
use crate::volume::Requester;
use crate::volume::Volume;

/// One thing `--repair` did.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Repaired {
    /// Plaintext path of the entry, or of the directory holding the kmsfs file removed
    /// (`""` for the top).
    pub path: String,
    pub cipher_path: String,
    /// `temp_file`, `long_name_file`, `empty_file`, `directory_record` or `slack`.
    pub action: &'static str,
    pub detail: String,
}

/// Something `--repair` looked at and left as it is: what, and why.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Left {
    pub path: String,
    pub cipher_path: String,
    /// The action it would have taken (as in [`Repaired::action`]).
    pub problem: &'static str,
    pub detail: String,
}

/// What `--repair` did and left, and the check of the volume afterwards.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub repaired: Vec<Repaired>,
    pub left: Vec<Left>,
    #[serde(flatten)]
    pub check: FsckReport,
}

impl RepairReport {
    fn done(&mut self, path: &Path, cipher: &Path, action: &'static str, detail: String) {
        self.repaired.push(Repaired {
            path: path.display().to_string(),
            cipher_path: cipher.display().to_string(),
            action,
            detail,
        });
    }

    fn leave(&mut self, path: &Path, cipher: &Path, problem: &'static str, detail: String) {
        self.left.push(Left {
            path: path.display().to_string(),
            cipher_path: cipher.display().to_string(),
            problem,
            detail,
        });
    }
}

/// Mends the volume, then checks it. `progress(done, total)` is called after each entry
/// checked.
pub fn repair(
    volume: &Volume,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RepairReport, OpsError> {
    refuse_if_mounted(volume.cipherdir())?;
    let mut report = RepairReport::default();
    mend_tree(volume, &mut report);
    let mut mend = |e: &Entry, ef: &EncryptedFile, fault: Fault<'_>| match fault {
        Fault::Slack => mend_slack(e, ef, &mut report),
        Fault::Blocks(bad) => mend_tail(volume, e, ef, bad, &mut report),
    };
    let check = fsck::check(volume, progress, Some(&mut mend));
    report.check = check;
    Ok(report)
}

/// Fails if a kmsfs mount serves the volume at `cipherdir` ([`mounted_at`]).
pub fn refuse_if_mounted(cipherdir: &Path) -> Result<(), OpsError> {
    match mounted_at(cipherdir) {
        None => Ok(()),
        Some(mnt) => Err(OpsError::Refused(format!(
            "the volume is mounted at {}; --repair works only on an unmounted volume: unmount it first (kmsfs unmount {})",
            mnt.display(),
            mnt.display()
        ))),
    }
}

/// Where a kmsfs mount serves the volume at `cipherdir`: a FUSE mount (type `fuse`, or
/// `fuse.kmsfs` where the subtype shows) in /proc/self/mountinfo whose source is this
/// directory. A mount whose daemon is gone counts too.
pub fn mounted_at(cipherdir: &Path) -> Option<PathBuf> {
    let want = std::fs::canonicalize(cipherdir).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mount_of(&info, &want)
}

/// The mount point of the FUSE mount of `want` in a mountinfo text (the last, the mount
/// on top, if several).
fn mount_of(info: &str, want: &Path) -> Option<PathBuf> {
    info.lines().rev().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let point = mount.split(' ').nth(4)?;
        let mut fs = fs.split(' ');
        let (fstype, source) = (fs.next()?, fs.next()?);
        if fstype != "fuse" && !fstype.starts_with("fuse.") {
            return None;
        }
        let source = PathBuf::from(unescape(source));
        let source = std::fs::canonicalize(&source).unwrap_or(source);
        (source == want).then(|| PathBuf::from(unescape(point)))
    })
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = (b[i] == b'\\')
            .then(|| b.get(i + 1..i + 4))
            .flatten()
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// Every repair but the slack's: in each directory the walk reaches (its record, then
/// temporary and long-name files), then every empty file.
fn mend_tree(volume: &Volume, report: &mut RepairReport) {
    let ns = volume.namespace();
    // Problems with names are the check's to report, afterwards.
    let (entries, _) = walk(volume);
    let top = volume.cipherdir();
    if let Ok(fd) = open_root(top) {
        mend_dir(ns, fd.as_fd(), true, Path::new(""), top, report);
    }
    for e in entries.iter().filter(|e| e.kind == Kind::Dir) {
        match e.path_fd() {
            Ok(fd) => mend_dir(ns, fd.as_fd(), false, &e.plain, &e.cipher, report),
            Err(err) => report.leave(&e.plain, &e.cipher, "directory", could_not(&err)),
        }
    }
    // Every file that holds nothing that can be read (`NoData`).
    let layout = volume.layout();
    let valid_size = |size: u64| layout.plain_len(size).is_ok();
    let shape = FileShape {
        empty_len: layout.cipher_len(0).unwrap_or(0),
        header_len: layout.header_len(),
        valid_size: &valid_size,
    };
    for e in entries.iter().filter(|e| e.kind == Kind::File) {
        let n = e.meta.len();
        let detail = match ns.remove_empty_file(e.dir.as_fd(), &e.on_disk, &shape) {
            Ok(None) => continue,
            Ok(Some(NoData::Empty)) => "removed a file of 0 bytes (a create cut before its header): it held no data".into(),
            Ok(Some(NoData::Zeros)) => format!("removed a file of {n} zero bytes (its header never reached the disk): it held no data"),
            Ok(Some(NoData::NoBlock)) => format!("removed a file of {n} bytes, a header without the block every file has (a create cut by a power cut): it held no data"),
            Ok(Some(NoData::NoHeader)) => format!("removed a file of {n} bytes whose header never reached the disk (its first {} bytes are zeros), a new file cut by a power cut: without its header none of its blocks can be opened", shape.header_len),
            Err(err) => {
                report.leave(&e.plain, &e.cipher, "empty_file", could_not(&err));
                continue;
            }
        };
        report.done(&e.plain, &e.cipher, "empty_file", detail);
    }
}

/// Mends one directory: a torn record first, and nothing more while its entries need it.
fn mend_dir(
    ns: &Namespace,
    dir: BorrowedFd<'_>,
    at_root: bool,
    plain: &Path,
    cipher: &Path,
    report: &mut RepairReport,
) {
    let record = cipher.join(DIR_ID_NAME);
    match ns.renew_dir_record(dir, at_root) {
        Ok(Renewal::Intact) => {}
        Ok(Renewal::Restored) => report.done(
            plain,
            &record,
            "directory_record",
            "wrote the directory's record file again from its record name: a power cut left the file missing or torn; the directory keeps its id and its entries".into(),
        ),
        Ok(Renewal::Renewed) => report.done(
            plain,
            &record,
            "directory_record",
            "gave the directory a new record: its record was missing or torn, and it held no entries".into(),
        ),
        Ok(Renewal::HoldsEntries(n)) => {
            let entries = if n == 1 { "an entry" } else { "entries" };
            let detail = format!(
                "its record is missing or torn and it holds {entries} ({n}), whose names cannot be read without it: not touched; restore the directory, or its {DIR_ID_NAME}, from a backup"
            );
            return report.leave(plain, &record, "directory_record", detail);
        }
        Ok(Renewal::Unreadable(err)) => {
            let detail = format!("its record cannot be read ({err}), not torn: not touched");
            return report.leave(plain, &record, "directory_record", detail);
        }
        Err(err) => return report.leave(plain, &record, "directory_record", could_not(&err)),
    }
    match ns.sweep_temp_files_named(dir) {
        Ok(names) => {
            for name in names {
                let detail = "removed a temporary file (or empty temporary directory) of kmsfs, left by a killed run";
                report.done(plain, &cipher.join(name), "temp_file", detail.into());
            }
        }
        Err(err) => report.leave(plain, cipher, "temp_file", could_not(&err)),
    }
    match ns.remove_orphan_long_name_files(dir) {
        Ok(names) => {
            for name in names {
                let detail = "removed a long-name file whose entry does not exist";
                report.done(plain, &cipher.join(name), "long_name_file", detail.into());
            }
        }
        Err(err) => report.leave(plain, cipher, "long_name_file", could_not(&err)),
    }
}

fn could_not(err: &(dyn std::error::Error + 'static)) -> String {
    format!("could not repair: {}", crate::describe(err))
}

/// The check's hook: zeroes the slack of a file every block of which authenticates.
fn mend_slack(e: &Entry, ef: &EncryptedFile, report: &mut RepairReport) -> bool {
    match zero_slack(e, ef) {
        Ok(bytes) => {
            let detail = format!("zeroed {bytes} nonzero byte(s) of slack, left by a truncation cut short; every block authenticates");
            report.done(&e.plain, &e.cipher, "slack", detail);
            true
        }
        Err(err) => {
            report.leave(&e.plain, &e.cipher, "slack", could_not(&err));
            false
        }
    }
}

/// The check's hook for a file with failing blocks: if they are its last ones (what a
/// power cut leaves of writes that were not fsynced, `docs/posix.md`), cuts the file
/// before them. Failing blocks with sound ones after them are left to be reported.
fn mend_tail(
    volume: &Volume,
    e: &Entry,
    ef: &EncryptedFile,
    bad: &[u64],
    report: &mut RepairReport,
) -> bool {
    let Some(&first) = bad.first() else {
        return false;
    };
    let count = ef.block_count();
    let is_tail =
        bad.iter().zip(first..).all(|(&b, want)| b == want) && first + bad.len() as u64 == count;
    if !is_tail {
        return false;
    }
    match cut_tail(volume, e, ef, first * ef.block_len()) {
        Ok(()) => {
            let (from, to) = (ef.len(), first * ef.block_len());
            let blocks = if bad.len() == 1 { "block" } else { "blocks" };
            let detail = format!(
                "cut the file from {from} to {to} bytes: its last {} {blocks} failed authentication, as blocks written since the file's last fsync can after a power cut; every byte before them reads. If there was no crash, suspect tampering and restore the file from a backup",
                bad.len()
            );
            report.done(&e.plain, &e.cipher, "tail", detail);
            true
        }
        Err(err) => {
            report.leave(&e.plain, &e.cipher, "tail", could_not(&err));
            false
        }
    }
}

/// Cuts the file the check opened as `ef` to `new_len` plaintext bytes through a
/// read-write open of its own (never through a symlink), syncs it, and reads it whole
/// again: the new last block is sealed as final from what authenticated.
fn cut_tail(volume: &Volume, e: &Entry, ef: &EncryptedFile, new_len: u64) -> Result<(), OpsError> {
    let file = crate::namespace::records::open_regular(e.dir.as_fd(), &e.on_disk, true)
        .map_err(io(&e.cipher))?;
    let meta = file.metadata().map_err(io(&e.cipher))?;
    if (meta.dev(), meta.ino(), meta.len()) != (e.meta.dev(), e.meta.ino(), e.meta.len()) {
        let changed = std::io::Error::other("it changed while it was checked");
        return Err(io(&e.cipher)(changed));
    }
    let path = e.plain.display().to_string();
    let (dir_id, name) = volume.place_of(e.dir.as_fd(), &e.plain)?;
    let at = crate::namespace::Place {
        dir_id,
        name: &name,
    };
    let rw = volume.open_file(file, at, &path, &Requester::current())?;
    if rw.header().file_id != ef.header().file_id || rw.len() != ef.len() {
        let changed = std::io::Error::other("it changed while it was checked");
        return Err(io(&e.cipher)(changed));
    }
    rw.set_len(new_len).map_err(file_error(&e.cipher))?;
    rw.sync(true).map_err(file_error(&e.cipher))?;
    match fsck::bad_blocks(&rw).map_err(io(&e.cipher))? {
        bad if bad.is_empty() => Ok(()),
        bad => Err(OpsError::Refused(format!(
            "block {} still fails after the cut",
            bad[0]
        ))),
    }
}

/// Writes zeros over the nonzero slack of the file `ef`, which the check has read whole,
/// through a descriptor of its own (read-write, never through a symlink). Returns how
/// many bytes were not zero.
///
/// Only bytes no block owns are written, so no block can be lost; the file is synced
/// before it counts as mended, and a crash part way leaves slack that the next repair
/// zeroes again.
fn zero_slack(e: &Entry, ef: &EncryptedFile) -> Result<u64, OpsError> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rfs::openat(&*e.dir, &e.on_disk, flags, Mode::empty())
        .map_err(|err| io(&e.cipher)(err.into()))?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(io(&e.cipher))?;
    let layout = Layout::of(ef.header());
    let plain_len = ef.len();
    // The same file, at the length it was checked at.
    let same = meta.is_file()
        && (meta.dev(), meta.ino()) == (e.meta.dev(), e.meta.ino())
        && layout.cipher_len(plain_len).is_ok_and(|l| l == meta.len());
    if !same {
        let changed = std::io::Error::other("it changed while it was checked");
        return Err(io(&e.cipher)(changed));
    }
    let mut nonzero = 0;
    // Not a pending change's length record: zeroing it would lose the change it names.
    for (start, end) in ef.slack() {
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start).map_err(io(&e.cipher))?;
        let count = buf.iter().filter(|&&b| b != 0).count() as u64;
        if count > 0 {
            buf.fill(0);
            file.write_all_at(&buf, start).map_err(io(&e.cipher))?;
            nonzero += count;
        }
    }
    file.sync_data().map_err(io(&e.cipher))?;
    ef.check_slack().map_err(file_error(&e.cipher))?;
    Ok(nonzero)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_of_a_volume_is_found_by_its_source() {
        let tmp = tempfile::tempdir().unwrap();
        let spaced = tmp.path().join("my cipher");
        std::fs::create_dir(&spaced).unwrap();
        let want = std::fs::canonicalize(&spaced).unwrap();
        let escaped = want.display().to_string().replace(' ', "\\040");
        let info = format!(
            "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
             90 27 0:50 / /mnt/a\\040b rw,nosuid - fuse {escaped} rw,user_id=0\n\
             91 27 0:51 / /mnt/other rw - fuse.sshfs host:{escaped} rw\n"
        );
        assert_eq!(mount_of(&info, &want), Some(PathBuf::from("/mnt/a b")));
        assert_eq!(mount_of(&info, tmp.path()), None);
        let not_fuse = format!("92 27 0:52 / /mnt/c rw - ext4 {escaped} rw\n");
        assert_eq!(mount_of(&not_fuse, &want), None);
        assert_eq!(unescape("a\\134b\\"), OsString::from("a\\b\\"));
    }
}
