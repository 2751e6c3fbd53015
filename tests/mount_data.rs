//! Reading and writing through a real mount (the built binary on the built-in local KMS):
//! files of every interesting size survive a remount and leave no plaintext in the
//! ciphertext, random writes and truncations match a model, open flags behave, and both
//! format versions read back what was written. Several handles on one file are in
//! `mount_coherence.rs`.

mod common;
mod mountkit;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use common::pattern;
use mountkit::{is_mounted, TestVolume};

#[test]
fn round_trips_of_every_interesting_size_survive_remount() {
    // Plaintext names, so that the test can find each file's ciphertext by name.
    let v = TestVolume::with_init_args(&["--plaintext-names"], vec![]);
    let sizes = [0usize, 1, 4095, 4096, 4097, (1 << 20) + 3];
    {
        let _m = v.mount();
        for &n in &sizes {
            fs::write(v.p(&format!("f{n}")), pattern(n, n as u64)).unwrap();
            assert_eq!(
                fs::read(v.p(&format!("f{n}"))).unwrap(),
                pattern(n, n as u64)
            );
            assert_eq!(fs::metadata(v.p(&format!("f{n}"))).unwrap().len(), n as u64);
        }
    }
    assert!(!is_mounted(&v.mnt));
    // The ciphertext is not the plaintext.
    let cipher = fs::read(v.cipher.join("f4097")).unwrap();
    assert!(!cipher
        .windows(64)
        .any(|w| pattern(4097, 4097).windows(64).any(|p| p == w)));
    let _m = v.mount();
    for &n in &sizes {
        assert_eq!(
            fs::read(v.p(&format!("f{n}"))).unwrap(),
            pattern(n, n as u64),
            "size {n}"
        );
    }
}

#[test]
fn random_offset_writes_and_truncates_match_a_model() {
    let v = TestVolume::new();
    let _m = v.mount();
    let path = v.p("model");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut x = 12345u64;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    for i in 0..300 {
        match next(5) {
            0 => {
                let len = next(20_000) as usize;
                f.set_len(len as u64).unwrap();
                model.resize(len, 0);
            }
            _ => {
                let off = next(60_000) as usize;
                let len = next(9_000) as usize;
                let data = pattern(len, i);
                f.write_all_at(&data, off as u64).unwrap();
                if len > 0 {
                    if model.len() < off + len {
                        model.resize(off + len, 0);
                    }
                    model[off..off + len].copy_from_slice(&data);
                }
            }
        }
        if i % 25 == 0 {
            assert_eq!(fs::read(&path).unwrap(), model, "after op {i}");
        }
    }
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), model);
    assert_eq!(fs::metadata(&path).unwrap().len(), model.len() as u64);
}

#[test]
fn truncate_up_and_down_across_block_boundaries() {
    let v = TestVolume::new();
    let _m = v.mount();
    let path = v.p("t");
    fs::write(&path, pattern(10_000, 7)).unwrap();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    for (len, keep) in [
        (4096u64, 4096usize),
        (4095, 4095),
        (9000, 4095),
        (0, 0),
        (12_289, 0),
        (1, 0),
    ] {
        f.set_len(len).unwrap();
        let got = fs::read(&path).unwrap();
        assert_eq!(got.len() as u64, len);
        assert_eq!(&got[..keep], &pattern(10_000, 7)[..keep]);
        assert!(
            got[keep..].iter().all(|&b| b == 0),
            "grown part must read as zeros"
        );
    }
}

#[test]
fn open_flags_append_excl_trunc_and_unlinked_files() {
    let v = TestVolume::new();
    let _m = v.mount();
    let path = v.p("f");
    fs::write(&path, b"hello").unwrap();
    let mut a = OpenOptions::new().append(true).open(&path).unwrap();
    a.write_all(b" world").unwrap();
    drop(a);
    assert_eq!(fs::read(&path).unwrap(), b"hello world");
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"");
    // Open, unlink, keep using.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(v.p("gone"))
        .unwrap();
    fs::remove_file(v.p("gone")).unwrap();
    f.write_all(&pattern(10_000, 3)).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back, pattern(10_000, 3));
}

#[test]
fn new_volumes_use_format_4_and_every_format_reads_back_what_was_written() {
    let default = TestVolume::with_init_args(&["--plaintext-names"], vec![]);
    assert_eq!(conf_of(&default)["format_version"], 4, "the default format");
    for version in [1u16, 2, 3, 4] {
        volume_of_format_reads_back(version);
    }
}

fn conf_of(v: &TestVolume) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(v.cipher.join("kmsfs.conf")).unwrap()).unwrap()
}

fn volume_of_format_reads_back(version: u16) {
    let arg = version.to_string();
    let v = TestVolume::with_init_args(&["--plaintext-names", "--format-version", &arg], vec![]);
    assert_eq!(conf_of(&v)["format_version"], version);
    let sizes = [
        0usize,
        1,
        4068,
        4069,
        4096,
        4097,
        64 * 4096 + 1,
        109 * 4096 + 1,
        300_000,
    ];
    let mut big = pattern(600_000, 7);
    {
        let _m = v.mount();
        for &n in &sizes {
            fs::write(v.p(&format!("f{n}")), pattern(n, n as u64)).unwrap();
        }
        // Random 4 KiB writes and an unaligned one into a file of several groups, then a
        // truncation into its second group.
        fs::write(v.p("big"), &big).unwrap();
        let f = fs::OpenOptions::new().write(true).open(v.p("big")).unwrap();
        for (i, off) in [0usize, 4096 * 120, 4096 * 5, 4096 * 140, 12_345]
            .into_iter()
            .enumerate()
        {
            let data = pattern(4096, 100 + i as u64);
            f.write_all_at(&data, off as u64).unwrap();
            big[off..off + 4096].copy_from_slice(&data);
        }
        f.set_len(4096 * 115 + 17).unwrap();
        big.truncate(4096 * 115 + 17);
    }
    let layout = kmsfs::format::Layout::new(version, 1024);
    {
        let _m = v.mount();
        // Small reads first, on a fresh mount: near group and file ends, where version 2
        // reads a window of neighbouring blocks that must stop at the group and the file.
        let f = fs::File::open(v.p("big")).unwrap();
        for off in [
            4096 * 108,
            4096 * 3 + 5,
            4096 * 113,
            4096 * 115,
            4096 * 114 + 9,
        ] {
            let mut buf = vec![0u8; 4096];
            let n = f.read_at(&mut buf, off as u64).unwrap();
            let want = &big[off.min(big.len())..(off + 4096).min(big.len())];
            assert_eq!(&buf[..n], want, "v{version} read at {off}");
        }
        for &n in &sizes {
            assert_eq!(
                fs::read(v.p(&format!("f{n}"))).unwrap(),
                pattern(n, n as u64),
                "f{n}"
            );
            let c = fs::metadata(v.cipher.join(format!("f{n}"))).unwrap().len();
            assert_eq!(c, layout.cipher_len(n as u64).unwrap(), "f{n}");
        }
        assert_eq!(fs::read(v.p("big")).unwrap(), big);
    }
    // The whole-file check agrees (version 2: slack zero after the truncation).
    let out = v.kmsfs(&["fsck", v.cipher.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
