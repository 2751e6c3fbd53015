//! The namespace's steps on a real directory: long-name files and directory records come
//! and go with their entries, failures roll back, listings name what they can, and the
//! small files are never read through a link or a FIFO.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::*;
use crate::secret::DataKey;

fn encrypted() -> Namespace {
    Namespace::new(Names::encrypted(DataKey::from_slice(&[7; 32]).unwrap()))
}

/// A volume's top directory, with its record (as `kmsfs init` writes it).
fn root(ns: &Namespace, path: &Path) -> (OwnedFd, DirNames) {
    let fd = open_root(path).unwrap();
    let file = std::fs::File::open(path).unwrap();
    if ns.is_encrypted() {
        records::write_dir_record(file.as_fd()).unwrap();
    }
    let names = ns.dir_names(fd.as_fd(), true).unwrap();
    (fd, names)
}

/// Makes directory `name` in `dir` and opens it: its descriptor and names.
fn subdir(ns: &Namespace, dir: Dir<'_>, name: &str) -> (OwnedFd, DirNames) {
    ns.mkdir(dir, OsStr::new(name), 0o755, None).unwrap();
    let (fd, _) = ns.lookup(dir, OsStr::new(name)).unwrap();
    let names = ns.dir_names(fd.as_fd(), false).unwrap();
    (fd, names)
}

fn on_disk(path: &Path) -> Vec<OsString> {
    let mut v: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

fn long_name() -> OsString {
    OsString::from("L".repeat(240))
}

#[test]
fn a_new_file_dropped_before_finish_leaves_nothing() {
    let ns = encrypted();
    let tmp = tempfile::tempdir().unwrap();
    let (fd, names) = root(&ns, tmp.path());
    let dir = Dir {
        fd: fd.as_fd(),
        names: &names,
    };
    let before = on_disk(tmp.path());
    let new = ns.create_file(dir, &long_name(), 0o600).unwrap();
    // While its header is written only its long-name file is there: the file has no name
    // until `finish`.
    assert_eq!(on_disk(tmp.path()).len(), before.len() + 1);
    drop(new);
    assert_eq!(on_disk(tmp.path()), before);
    // Finished, it stays, and a second create of the name is refused as taken.
    let mut new = ns.create_file(dir, &long_name(), 0o600).unwrap();
    let _file = new.take_file();
    let c = new.finish(&ns, None).unwrap();
    assert!(c.long.is_some());
    assert!(ns
        .create_file(dir, &long_name(), 0o600)
        .err()
        .unwrap()
        .already_exists());
    let (_, st) = ns.lookup(dir, &long_name()).unwrap();
    assert_eq!(st.st_mode & 0o777, 0o600);
}

#[test]
fn directories_carry_their_record_and_are_removed_only_when_empty() {
    let ns = encrypted();
    let tmp = tempfile::tempdir().unwrap();
    let (fd, names) = root(&ns, tmp.path());
    let dir = Dir {
        fd: fd.as_fd(),
        names: &names,
    };
    let (sub_fd, sub_names) = subdir(&ns, dir, "sub");
    assert_ne!(
        sub_names.dir_id(),
        names.dir_id(),
        "each directory has its own id"
    );
    let sub = Dir {
        fd: sub_fd.as_fd(),
        names: &sub_names,
    };
    ns.symlink(sub, OsStr::new("link"), b"../target", None)
        .unwrap();
    let err = ns.remove(dir, OsStr::new("sub"), true).unwrap_err();
    assert!(matches!(err, NamespaceError::NotEmpty), "{err}");
    // The refused removal kept the record: the entry still names.
    let (link, _) = ns.lookup(sub, OsStr::new("link")).unwrap();
    assert_eq!(ns.read_symlink(link.as_fd()).unwrap(), b"../target");
    ns.remove(sub, OsStr::new("link"), false).unwrap();
    ns.remove(dir, OsStr::new("sub"), true).unwrap();
    assert!(ns.lookup(dir, OsStr::new("sub")).err().unwrap().not_found());
}

#[test]
fn a_rename_takes_the_long_name_file_along_and_leaves_none_behind() {
    let ns = encrypted();
    let tmp = tempfile::tempdir().unwrap();
    let (fd, names) = root(&ns, tmp.path());
    let dir = Dir {
        fd: fd.as_fd(),
        names: &names,
    };
    let (a_fd, a_names) = subdir(&ns, dir, "a");
    let a = Dir {
        fd: a_fd.as_fd(),
        names: &a_names,
    };
    let mut new = ns.create_file(dir, &long_name(), 0o600).unwrap();
    let _ = new.take_file();
    new.finish(&ns, None).unwrap();
    let flags = rfs::RenameFlags::empty();
    ns.rename(dir, &long_name(), a, &long_name(), flags)
        .unwrap();
    let names_in = |d: Dir<'_>| -> Vec<OsString> {
        let mut v: Vec<_> = ns
            .list(d)
            .unwrap()
            .into_iter()
            .filter_map(|l| l.name.ok())
            .filter(|n| n != "." && n != "..")
            .collect();
        v.sort();
        v
    };
    assert_eq!(names_in(dir), vec![OsString::from("a")]);
    assert_eq!(names_in(a), vec![long_name()]);
    // Only the record (its file and its name) and the directory remain at the top: no
    // stray long-name file.
    assert_eq!(on_disk(tmp.path()).len(), 3);
}

/// Failed before the long-name file was kept: a rename over an entry with a long name
/// removed that entry's long-name file and wrote it anew, and a power cut in between left
/// the entry without it.
#[test]
fn a_rename_over_a_long_name_never_removes_its_long_name_file() {
    use std::os::unix::fs::MetadataExt;
    let ns = encrypted();
    let tmp = tempfile::tempdir().unwrap();
    let (fd, names) = root(&ns, tmp.path());
    let dir = Dir {
        fd: fd.as_fd(),
        names: &names,
    };
    for name in [OsString::from("short"), long_name()] {
        let mut new = ns.create_file(dir, &name, 0o600).unwrap();
        let _ = new.take_file();
        new.finish(&ns, None).unwrap();
    }
    let name_file = || {
        on_disk(tmp.path())
            .into_iter()
            .find(|n| n.to_string_lossy().ends_with(".name"))
            .map(|n| tmp.path().join(n))
            .expect("a long-name file")
    };
    let before = std::fs::metadata(name_file()).unwrap().ino();
    let flags = rfs::RenameFlags::empty();
    ns.rename(dir, OsStr::new("short"), dir, &long_name(), flags)
        .unwrap();
    assert_eq!(std::fs::metadata(name_file()).unwrap().ino(), before);
    assert!(ns.lookup(dir, &long_name()).is_ok());

    // A stale one (damaged, say) is replaced whole, by a rename over it.
    std::fs::write(name_file(), b"stale").unwrap();
    let mut new = ns.create_file(dir, OsStr::new("other"), 0o600).unwrap();
    let _ = new.take_file();
    new.finish(&ns, None).unwrap();
    ns.rename(dir, OsStr::new("other"), dir, &long_name(), flags)
        .unwrap();
    assert!(ns.lookup(dir, &long_name()).is_ok());
    assert!(!on_disk(tmp.path())
        .iter()
        .any(|n| n.to_string_lossy().starts_with(".kmsfs-tmp-")));
}

#[test]
fn a_listing_names_what_decrypts_and_reports_the_rest() {
    let ns = encrypted();
    let tmp = tempfile::tempdir().unwrap();
    let (fd, names) = root(&ns, tmp.path());
    let dir = Dir {
        fd: fd.as_fd(),
        names: &names,
    };
    ns.mkdir(dir, OsStr::new("kept"), 0o755, None).unwrap();
    std::fs::write(tmp.path().join("dropped-in"), b"x").unwrap();
    let listed = ns.list(dir).unwrap();
    let named: Vec<_> = listed.iter().filter_map(|l| l.name.as_ref().ok()).collect();
    assert!(named.contains(&&OsString::from("kept")));
    let bad: Vec<_> = listed.iter().filter(|l| l.name.is_err()).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].on_disk, "dropped-in");
    // The record is kmsfs's own: never listed.
    assert!(!listed.iter().any(|l| l.on_disk == "kmsfs.dirid"));
}

#[test]
fn records_are_never_read_through_a_symlink_or_a_fifo() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::fs::File::open(tmp.path()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", tmp.path().join("kmsfs.dirid")).unwrap();
    assert!(records::read_dir_record(dir.as_fd()).is_err());
    std::fs::remove_file(tmp.path().join("kmsfs.dirid")).unwrap();
    rustix::fs::mknodat(
        dir.as_fd(),
        "kmsfs.dirid",
        rfs::FileType::Fifo,
        rfs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Returns at once (no writer is waited for) with an error.
    assert!(records::read_dir_record(dir.as_fd()).is_err());
}

#[test]
fn a_replacement_is_whole_or_absent() {
    let ns = Namespace::new(Names::plaintext());
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), b"old").unwrap();
    let fd = open_root(tmp.path()).unwrap();
    let (r, mut file) = ns.replace_file(fd.as_fd(), OsStr::new("f")).unwrap();
    std::io::Write::write_all(&mut file, b"new").unwrap();
    drop(r);
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"old");
    assert_eq!(on_disk(tmp.path()), vec![OsString::from("f")]);
    let (r, mut file) = ns.replace_file(fd.as_fd(), OsStr::new("f")).unwrap();
    std::io::Write::write_all(&mut file, b"new").unwrap();
    file.sync_all().unwrap();
    r.commit().unwrap();
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"new");
    // A killed run's temporary file is swept; others are not.
    std::fs::write(tmp.path().join(".kmsfs-tmp-0123.tmp"), b"").unwrap();
    assert_eq!(ns.sweep_temp_files(fd.as_fd()).unwrap(), 1);
    assert_eq!(on_disk(tmp.path()), vec![OsString::from("f")]);
}

#[test]
fn paths_map_both_ways_and_refuse_dot_dot() {
    let ns = encrypted();
    let tmp = tempfile::tempdir().unwrap();
    let (fd, names) = root(&ns, tmp.path());
    let dir = Dir {
        fd: fd.as_fd(),
        names: &names,
    };
    ns.mkdir(dir, OsStr::new("docs"), 0o755, None).unwrap();
    let cipher = ns
        .encrypt_path(tmp.path(), Path::new("docs/new.txt"))
        .unwrap();
    assert_eq!(cipher.components().count(), 2);
    assert!(!cipher
        .as_os_str()
        .as_bytes()
        .windows(4)
        .any(|w| w == b"docs"));
    let top = tmp.path().join(cipher.iter().next().unwrap());
    assert_eq!(
        ns.decrypt_path(tmp.path(), &top).unwrap(),
        Path::new("docs")
    );
    let err = ns
        .encrypt_path(tmp.path(), Path::new("docs/../x"))
        .unwrap_err();
    assert!(matches!(err, NamespaceError::DotDot(_)), "{err}");
}

#[test]
fn a_new_file_has_no_name_until_its_header_is_written() {
    let ns = encrypted();
    let tmp = tempfile::tempdir().unwrap();
    let (fd, names) = root(&ns, tmp.path());
    let dir = Dir {
        fd: fd.as_fd(),
        names: &names,
    };
    let mut new = ns.create_file(dir, OsStr::new("short"), 0o600).unwrap();
    // A crash now (a killed daemon) leaves no empty file under the name.
    assert!(ns
        .lookup(dir, OsStr::new("short"))
        .err()
        .unwrap()
        .not_found());
    let mut file = new.take_file();
    std::io::Write::write_all(&mut file, b"header").unwrap();
    new.finish(&ns, None).unwrap();
    let (found, st) = ns.lookup(dir, OsStr::new("short")).unwrap();
    assert_eq!(st.st_size, 6);
    drop(found);
    // A taken name is refused before anything is made.
    let taken = ns
        .create_file(dir, OsStr::new("short"), 0o600)
        .err()
        .unwrap();
    assert!(taken.already_exists(), "{taken}");
}

#[test]
fn a_failed_link_keeps_the_long_name_file_of_the_entry_it_ran_into() {
    let ns = encrypted();
    let tmp = tempfile::tempdir().unwrap();
    let (fd, names) = root(&ns, tmp.path());
    let dir = Dir {
        fd: fd.as_fd(),
        names: &names,
    };
    for name in [long_name(), OsString::from("other")] {
        let mut new = ns.create_file(dir, &name, 0o600).unwrap();
        let _ = new.take_file();
        new.finish(&ns, None).unwrap();
    }
    let (other, _) = ns.lookup(dir, OsStr::new("other")).unwrap();
    assert!(ns
        .link(other.as_fd(), dir, &long_name())
        .err()
        .unwrap()
        .already_exists());
    // The long-named entry still names (its long-name file is still there).
    let listed = ns.list(dir).unwrap();
    assert!(listed
        .iter()
        .any(|l| l.name.as_ref().is_ok_and(|n| *n == long_name())));
    assert!(listed.iter().all(|l| l.name.is_ok()));
}

#[test]
fn a_directory_left_unnamed_by_a_crash_is_swept() {
    let ns = encrypted();
    let tmp = tempfile::tempdir().unwrap();
    let (fd, names) = root(&ns, tmp.path());
    let dir = Dir {
        fd: fd.as_fd(),
        names: &names,
    };
    ns.mkdir(dir, OsStr::new("made"), 0o755, None).unwrap();
    // What a daemon killed inside mkdir leaves: the directory with its record, no name.
    let left = tmp.path().join(".kmsfs-tmp-0011223344556677.tmp");
    std::fs::create_dir(&left).unwrap();
    let left_fd = std::fs::File::open(&left).unwrap();
    records::write_dir_record(left_fd.as_fd()).unwrap();
    assert!(ns
        .list(dir)
        .unwrap()
        .iter()
        .all(|l| !l.on_disk.to_string_lossy().contains("tmp")));
    assert_eq!(ns.sweep_temp_files(fd.as_fd()).unwrap(), 1);
    assert!(!left.exists());
    assert!(ns.lookup(dir, OsStr::new("made")).is_ok());
}

#[test]
fn a_record_file_a_power_cut_left_as_zeros_is_read_from_its_name() {
    let ns = encrypted();
    let tmp = tempfile::tempdir().unwrap();
    let (fd, names) = root(&ns, tmp.path());
    let dir = Dir {
        fd: fd.as_fd(),
        names: &names,
    };
    let (sub_fd, sub_names) = subdir(&ns, dir, "sub");
    let sub = Dir {
        fd: sub_fd.as_fd(),
        names: &sub_names,
    };
    ns.symlink(sub, OsStr::new("inside"), b"t", None).unwrap();
    // What a power cut leaves when the record file's data never reached the disk.
    let listed = ns.list(dir).unwrap();
    let sub_on_disk = &listed
        .iter()
        .find(|l| l.name.as_deref().ok() == Some(OsStr::new("sub")))
        .unwrap()
        .on_disk;
    let record = tmp.path().join(sub_on_disk).join("kmsfs.dirid");
    let mut perms = std::fs::metadata(&record).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&record, perms).unwrap();
    std::fs::write(&record, [0u8; 26]).unwrap();
    let again = ns.dir_names(sub_fd.as_fd(), false).unwrap();
    assert_eq!(again.dir_id(), sub_names.dir_id());
    let sub = Dir {
        fd: sub_fd.as_fd(),
        names: &again,
    };
    assert!(ns.lookup(sub, OsStr::new("inside")).is_ok());
    // Without the name either (a directory of an earlier kmsfs), it is damage.
    let name = records::record_name_for(sub_names.dir_id().unwrap());
    std::fs::remove_file(tmp.path().join(sub_on_disk).join(name)).unwrap();
    let err = ns.dir_names(sub_fd.as_fd(), false).err().unwrap();
    assert!(matches!(err, NamespaceError::DirRecord(_)), "{err}");
}
