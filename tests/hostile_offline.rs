//! The offline tools against a ciphertext directory someone else could write (issue 20):
//! `export` trusts no owner, set-ID bit or special file unless asked and never writes
//! through a symlink it made, `decrypt` refuses links, FIFOs and devices, and fsck, export,
//! rekey and rewrap finish on planted FIFOs and links in place of records, names and files.
//! Each volume is made with `kmsfs init` on the built-in KMS and filled with `kmsfs import`
//! (no mount); every command runs under a time limit, so a hang fails the test.

mod mountkit;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mountkit::{cipher_of, TestVolume};
use serde_json::Value;

/// Longest any command may take before the test calls it hung.
const LIMIT: Duration = Duration::from_secs(20);

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `kmsfs ARGS` for `v`; kills it and fails the test if it runs past [`LIMIT`].
fn run(v: &TestVolume, args: &[&str]) -> Ran {
    let out = v.dir.path().join("out.txt");
    let err = v.dir.path().join("err.txt");
    let mut child: std::process::Child = v
        .command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("kmsfs {args:?} did not finish within {LIMIT:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code: status.code(),
        stdout: fs::read_to_string(out).unwrap(),
        stderr: fs::read_to_string(err).unwrap(),
    }
}

/// A volume holding the plaintext tree `src` (made by `fill` in a directory of its own).
fn volume_with(fill: impl FnOnce(&Path)) -> TestVolume {
    let v = TestVolume::new();
    let src = v.dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fill(&src);
    let cipher = v.cipher.to_str().unwrap().to_owned();
    let r = run(&v, &["import", src.to_str().unwrap(), &cipher]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    v
}

fn mkfifo(path: &Path) {
    let mode = rustix::fs::Mode::from_raw_mode(0o644);
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, mode, 0).unwrap();
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Replaces the ciphertext entry at `path` with a FIFO of the same name.
fn fifo_in_place_of(path: &Path) {
    fs::remove_file(path).unwrap();
    mkfifo(path);
}

#[test]
fn export_restores_no_owner_set_id_bit_or_special_file_unless_asked() {
    let v = volume_with(|src| {
        fs::write(src.join("tool"), b"#!/bin/sh\n").unwrap();
        fs::create_dir(src.join("shared")).unwrap();
        fs::write(src.join("shared/x"), b"x").unwrap();
        fs::write(src.join("pipe"), b"to be a fifo").unwrap();
    });
    // What whoever can write the ciphertext directory can do without any key.
    let tool = cipher_of(&v, "tool");
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o6755)).unwrap();
    let shared = cipher_of(&v, "shared");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(cipher_of(&v, "shared/x"), Some(4321), Some(4321)).unwrap();
    }
    fifo_in_place_of(&cipher_of(&v, "pipe"));
    let me = rustix::process::geteuid().as_raw();
    let cipher = v.cipher.to_str().unwrap();

    // As `cp` without -p: no set-ID or sticky bit, nothing beyond the volume's bits, owned
    // by whoever exports, no FIFO; the summary says how many and which flag makes them.
    let plain = v.dir.path().join("plain");
    let r = run(&v, &["export", cipher, plain.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let tool_mode = fs::metadata(plain.join("tool")).unwrap().mode();
    assert_eq!(tool_mode & 0o7000, 0, "set-ID bits copied: {tool_mode:o}");
    assert_eq!(tool_mode & 0o777 & !0o755, 0, "{tool_mode:o}");
    assert_eq!(
        fs::metadata(plain.join("shared")).unwrap().mode() & 0o7000,
        0
    );
    assert_eq!(fs::metadata(plain.join("shared/x")).unwrap().uid(), me);
    assert!(
        fs::symlink_metadata(plain.join("pipe")).is_err(),
        "FIFO made"
    );
    assert!(
        r.stdout
            .contains("skipped 1 device nodes, FIFOs and sockets (--special makes them)"),
        "{}",
        r.stdout
    );

    // --owners --modes: exact bits, sticky included, but still no set-ID bit or FIFO.
    let exact = v.dir.path().join("exact");
    let args = [
        "export",
        cipher,
        exact.to_str().unwrap(),
        "--owners",
        "--modes",
    ];
    let r = run(&v, &[&args[..], &["--json"]].concat());
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["special_skipped"], 1, "{report}");
    assert_eq!(
        fs::metadata(exact.join("tool")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::metadata(exact.join("shared")).unwrap().mode() & 0o7777,
        0o1777
    );
    if is_root() {
        assert_eq!(fs::metadata(exact.join("shared/x")).unwrap().uid(), 4321);
    }
    assert!(
        fs::symlink_metadata(exact.join("pipe")).is_err(),
        "FIFO made"
    );

    // --special: everything, as the volume says.
    let all = v.dir.path().join("all");
    let r = run(&v, &["export", cipher, all.to_str().unwrap(), "--special"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert_eq!(
        fs::metadata(all.join("tool")).unwrap().mode() & 0o7777,
        0o6755
    );
    let pipe = fs::symlink_metadata(all.join("pipe")).unwrap();
    assert!(pipe.file_type().is_fifo());
}

#[test]
fn export_never_writes_through_a_symlink_it_made() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_owned();
    // Several symlinks, so that one's ciphertext name sorts before the stand-in below and
    // is exported first, as on the attacker's pick.
    let links: Vec<String> = (0..8).map(|i| format!("link{i}")).collect();
    let v = volume_with(|src| {
        for l in &links {
            std::os::unix::fs::symlink(&target, src.join(l)).unwrap();
        }
        fs::create_dir(src.join("dir")).unwrap();
        fs::write(src.join("dir/planted"), b"written outside the export").unwrap();
    });
    let on_disk = |plain: &str| -> String {
        let c = cipher_of(&v, plain);
        c.file_name().unwrap().to_str().unwrap().to_owned()
    };
    let stand_in = |encoded: &str| kmsfs::format::names::long_name_for(encoded);
    let link = links
        .iter()
        .map(|l| on_disk(l))
        .find(|enc| enc.as_str() < stand_in(enc).as_str())
        .expect("one of eight names sorts before its stand-in");
    // A copy of `dir` under a long-name stand-in whose long-name file says the symlink's
    // name: both entries have the same plaintext name, the symlink first.
    let copy = v.cipher.join(stand_in(&link));
    let copied = Command::new("cp")
        .arg("-a")
        .arg(cipher_of(&v, "dir"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());
    let mut name_file = copy.clone().into_os_string();
    name_file.push(".name");
    fs::write(name_file, &link).unwrap();

    let dest = v.dir.path().join("plain");
    let r = run(
        &v,
        &["export", v.cipher.to_str().unwrap(), dest.to_str().unwrap()],
    );
    let written: Vec<PathBuf> = fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(written.is_empty(), "export wrote outside: {written:?}");
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("same plaintext name"), "{}", r.stdout);
    assert!(fs::symlink_metadata(dest.join("dir/planted")).is_ok());
}

#[test]
fn decrypt_refuses_a_fifo_a_symlink_and_a_device() {
    let v = volume_with(|src| {
        fs::write(src.join("a"), b"alpha").unwrap();
        fs::write(src.join("b"), b"bravo").unwrap();
    });
    let a = cipher_of(&v, "a");
    let b = cipher_of(&v, "b");
    // A FIFO made the open wait for a writer, for ever.
    fifo_in_place_of(&a);
    let r = run(&v, &["decrypt", a.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    // A symlink in a file's place would serve another file's content under its name.
    fs::remove_file(&a).unwrap();
    std::os::unix::fs::symlink(&b, &a).unwrap();
    let r = run(&v, &["decrypt", a.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("is a symlink"), "{}", r.stderr);
    assert!(!r.stdout.contains("bravo"));
    if is_root() {
        let zero = v.cipher.join("zero");
        let mode = rustix::fs::Mode::from_raw_mode(0o644);
        let dev = rustix::fs::makedev(1, 5);
        let kind = rustix::fs::FileType::CharacterDevice;
        rustix::fs::mknodat(rustix::fs::CWD, &zero, kind, mode, dev).unwrap();
        let out = v.dir.path().join("out");
        let r = run(
            &v,
            &[
                "decrypt",
                zero.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    }
}

#[test]
fn offline_tools_finish_on_planted_fifos_and_links() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"not the volume's").unwrap();
    let v = volume_with(|src| {
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("sub/f"), b"f").unwrap();
        fs::write(src.join("sub/deeper/g"), b"g").unwrap();
        fs::write(src.join("n".repeat(200)), b"long").unwrap();
        fs::write(src.join("file"), b"file").unwrap();
    });
    let sub = cipher_of(&v, "sub");
    let deeper = cipher_of(&v, "sub/deeper");
    // The top record a link to /dev/zero (its record name gone too, so it is read), a
    // directory's record a FIFO, a long name's file a FIFO, a file a FIFO, and a link to a
    // directory outside the volume.
    for e in fs::read_dir(&sub).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with("kmsfs.dirid") {
            fs::remove_file(sub.join(name)).unwrap();
        }
    }
    std::os::unix::fs::symlink("/dev/zero", sub.join("kmsfs.dirid")).unwrap();
    for e in fs::read_dir(&deeper).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with("kmsfs.dirid.") {
            fs::remove_file(deeper.join(name)).unwrap();
        }
    }
    fifo_in_place_of(&deeper.join("kmsfs.dirid"));
    let long = cipher_of(&v, &"n".repeat(200));
    let mut long_name_file = long.into_os_string();
    long_name_file.push(".name");
    fifo_in_place_of(Path::new(&long_name_file));
    fifo_in_place_of(&cipher_of(&v, "file"));
    std::os::unix::fs::symlink(outside.path(), v.cipher.join("outside")).unwrap();

    let cipher = v.cipher.to_str().unwrap();
    let r = run(&v, &["fsck", cipher, "--json"]);
    assert_eq!(r.code, Some(4), "{}{}", r.stdout, r.stderr);
    assert!(
        !r.stdout.contains("secret"),
        "fsck walked outside: {}",
        r.stdout
    );
    let dest = v.dir.path().join("plain");
    let r = run(&v, &["export", cipher, dest.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    let exported = walkdir(&dest);
    assert!(
        !exported.iter().any(|p| p.ends_with("secret")),
        "{exported:?}"
    );
    let r = run(&v, &["rekey", cipher]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    let conf: Value =
        serde_json::from_slice(&fs::read(v.cipher.join("kmsfs.conf")).unwrap()).unwrap();
    let key = conf["key_arn"].as_str().unwrap();
    let r = run(&v, &["rewrap", cipher, "--to-key", key, "--dry-run"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert_eq!(
        fs::read(outside.path().join("secret")).unwrap(),
        b"not the volume's"
    );
}

/// Every path under `root` (no symlink followed).
fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}
