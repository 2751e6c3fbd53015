//! `EncryptedFile` against a plain `Vec<u8>` model: any sequence of writes (any offset,
//! any length, far past the end), truncations and reads gives the model's bytes, and the
//! file on disk stays a valid ciphertext file that the whole-file reader accepts.

mod common;

use std::fs::File;

use kmsfs::crypto::FileCipher;
use kmsfs::file::{self, read_header, EncryptedFile, KeySlot};
use kmsfs::format::{FileId, DEFAULT_HEADER_LEN, VERSION};
use kmsfs::secret::DataKey;
use proptest::prelude::*;

use common::rw;

fn key() -> DataKey {
    DataKey::from_slice(&[0x42; 32]).unwrap()
}

fn new_file(path: &std::path::Path) -> EncryptedFile {
    new_file_v(path, VERSION)
}

fn new_file_v(path: &std::path::Path, version: u16) -> EncryptedFile {
    let id = FileId([9; 16]);
    let cipher = FileCipher::new(&key(), id);
    let slot = KeySlot {
        key_id: common::KEY_ID.into(),
        wrapped_key: vec![1, 2, 3],
    };
    let header = file::new_header(&cipher, (version, false), DEFAULT_HEADER_LEN, slot).unwrap();
    EncryptedFile::create(rw(path), cipher, header).unwrap()
}

fn reopen(path: &std::path::Path) -> EncryptedFile {
    let f = rw(path);
    let header = read_header(&f).unwrap();
    EncryptedFile::open(f, header, &key()).unwrap()
}

fn read_all(f: &EncryptedFile) -> Vec<u8> {
    let mut buf = vec![0u8; f.len() as usize + 10];
    let n = f.read_at(&mut buf, 0).unwrap();
    buf.truncate(n);
    buf
}

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: usize, seed: u64 },
    SetLen(u64),
    Append { len: usize, seed: u64 },
    Read { off: u64, len: usize, direct: bool },
    Reopen,
}

/// Operations within `scale` bytes: small ones exercise block edges, large ones (over
/// 32 blocks) the requests that are sealed and opened on several threads.
fn op(scale: u64) -> impl Strategy<Value = Op> {
    let s = |n: u64| n * scale / 40_000;
    prop_oneof![
        4 => (0u64..s(40_000), 0usize..s(12_000) as usize, any::<u64>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        1 => (0u64..s(40_000)).prop_map(Op::SetLen),
        1 => (0usize..s(9000) as usize, any::<u64>()).prop_map(|(len, seed)| Op::Append { len, seed }),
        2 => (0u64..s(45_000), 0usize..s(20_000) as usize, any::<bool>()).prop_map(|(off, len, direct)| Op::Read { off, len, direct }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn matches_a_vec_model(ops in proptest::collection::vec(op(40_000), 1..25), v in 1u16..=4) {
        check_model(ops, v)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn matches_a_vec_model_with_large_requests(ops in proptest::collection::vec(op(4 << 20), 1..12), v in 1u16..=4) {
        check_model(ops, v)?;
    }
}

fn check_model(ops: Vec<Op>, version: u16) -> Result<(), TestCaseError> {
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = new_file_v(&path, version);
        let mut model: Vec<u8> = Vec::new();
        for op in ops {
            match op {
                Op::Write { off, len, seed } => {
                    let data = common::pattern(len, seed);
                    prop_assert_eq!(f.write_at(&data, off).unwrap(), len);
                    if len > 0 {
                        let end = off as usize + len;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[off as usize..end].copy_from_slice(&data);
                    }
                }
                Op::SetLen(n) => {
                    f.set_len(n).unwrap();
                    model.resize(n as usize, 0);
                }
                Op::Append { len, seed } => {
                    let data = common::pattern(len, seed);
                    prop_assert_eq!(f.append(&data).unwrap(), model.len() as u64);
                    model.extend_from_slice(&data);
                }
                Op::Read { off, len, direct } => {
                    let mut buf = vec![0u8; len];
                    let n = if direct {
                        f.read_at_direct(&mut buf, off).unwrap()
                    } else {
                        f.read_at(&mut buf, off).unwrap()
                    };
                    let want = model
                        .get(off as usize..)
                        .map(|s| &s[..s.len().min(len)])
                        .unwrap_or(&[]);
                    prop_assert_eq!(&buf[..n], want);
                }
                Op::Reopen => {
                    drop(f);
                    f = reopen(&path);
                }
            }
            prop_assert_eq!(f.len(), model.len() as u64);
        }
        prop_assert_eq!(read_all(&f), model.clone());
        let on_disk = std::fs::read(&path).unwrap();
        prop_assert_eq!(file::decrypt_bytes(&key(), &on_disk).unwrap(), model);
    }
    Ok(())
}

#[test]
fn the_sizes_from_the_mount_issue_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [
        0usize,
        1,
        4067,
        4068,
        4069,
        4095,
        4096,
        4097,
        109 * 4096 + 1,
        (1 << 20) + 3,
    ];
    for (size, version) in sizes
        .into_iter()
        .flat_map(|s| [(s, 1u16), (s, 2), (s, 3), (s, 4)])
    {
        let path = dir.path().join(format!("f{size}-v{version}"));
        let f = new_file_v(&path, version);
        let data = common::pattern(size, size as u64);
        f.write_at(&data, 0).unwrap();
        drop(f);
        let f = reopen(&path);
        assert_eq!(read_all(&f), data, "size {size}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            kmsfs::format::Layout::new(version, DEFAULT_HEADER_LEN)
                .cipher_len(size as u64)
                .unwrap()
        );
    }
}

#[test]
fn a_write_far_past_the_end_leaves_sealed_zeros_not_holes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse");
    let f = new_file(&path);
    f.write_at(b"tail", 10 * 4096 + 5).unwrap();
    let all = read_all(&f);
    assert_eq!(all.len(), 10 * 4096 + 9);
    assert!(all[..10 * 4096 + 5].iter().all(|&b| b == 0));
    // Every block is there and authenticated: zeroing any one on disk is caught.
    drop(f);
    let mut bytes = std::fs::read(&path).unwrap();
    let block3 = kmsfs::format::Layout::new(VERSION, DEFAULT_HEADER_LEN).place(3, 4096);
    bytes[block3.data as usize..block3.data as usize + 4096].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let f = reopen(&path);
    let mut buf = vec![0u8; 100];
    let err = f.read_at(&mut buf, 3 * 4096 + 10).unwrap_err();
    assert_eq!(err.kind(), "block_auth{3}");
}

#[test]
fn tampered_blocks_fail_reads_and_partial_writes() {
    for version in [1, 2, 3, 4] {
        tampered_blocks_fail_reads_and_partial_writes_in(version);
    }
}

fn tampered_blocks_fail_reads_and_partial_writes_in(version: u16) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let f = new_file_v(&path, version);
    f.write_at(&common::pattern(3 * 4096, 1), 0).unwrap();
    drop(f);
    let mut bytes = std::fs::read(&path).unwrap();
    let layout = kmsfs::format::Layout::new(version, DEFAULT_HEADER_LEN);
    bytes[layout.place(1, 4096).data as usize + 50] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let f = reopen(&path);
    let mut buf = vec![0u8; 10];
    assert!(f.read_at(&mut buf, 0).is_ok(), "block 0 is intact");
    assert_eq!(
        f.read_at(&mut buf, 4096).unwrap_err().kind(),
        "block_auth{1}"
    );
    // A partial write into the damaged block must not launder it into a valid one.
    assert_eq!(f.write_at(b"x", 4100).unwrap_err().kind(), "block_auth{1}");
    assert_eq!(
        f.read_at(&mut buf, 4096).unwrap_err().kind(),
        "block_auth{1}"
    );
}

#[test]
fn wrong_key_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    drop(new_file(&path));
    let f = rw(&path);
    let header = read_header(&f).unwrap();
    let err = EncryptedFile::open(f, header, &DataKey::from_slice(&[1; 32]).unwrap())
        .err()
        .unwrap();
    assert_eq!(err.kind(), "wrong_key");
}

#[test]
fn concurrent_writers_to_one_file_do_not_corrupt_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c");
    let f = std::sync::Arc::new(new_file(&path));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    // Each thread owns every 4th 1000-byte slice; slices straddle blocks.
                    let slice = i * 4 + t;
                    f.write_at(&[t as u8 + 1; 1000], slice * 1000).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = read_all(&f);
    assert_eq!(all.len(), 200 * 1000);
    for slice in 0..200usize {
        let t = (slice % 4) as u8 + 1;
        assert!(
            all[slice * 1000..(slice + 1) * 1000]
                .iter()
                .all(|&b| b == t),
            "slice {slice}"
        );
    }
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(file::decrypt_bytes(&key(), &on_disk).unwrap(), all);
}

/// Reads of a file whose ciphertext is not in the page cache: version 2 then reads its
/// table and data pages from disk at once (the first only tried from the cache, then read
/// again), and small reads take a window of neighbouring blocks.
#[test]
fn cold_reads_match_what_was_written() {
    for version in [1, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cold");
        let len = 300 * 4096 + 123; // three groups in version 2, the last one short
        let data = common::pattern(len, version as u64);
        {
            let f = new_file_v(&path, version);
            f.write_at(&data, 0).unwrap();
            f.sync(true).unwrap();
        }
        let f = reopen(&path);
        for (off, n) in [
            (200 * 4096, 4096), // group 1, far from its table
            (4096 * 110 + 7, 5000),
            (4096 * 299, 4096), // the short last block, in the window's reach
            (4096 * 108, 4096), // the last block of group 0
            (5, 1 << 20),       // a large read across groups
            (0, 10),
        ] {
            // Only clean pages can be dropped: the file was synced above.
            let cipher = File::open(&path).unwrap();
            rustix::fs::fadvise(cipher, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            let mut buf = vec![0u8; n];
            let got = f.read_at(&mut buf, off as u64).unwrap();
            let want = &data[off..(off + n).min(len)];
            assert_eq!(&buf[..got], want, "v{version} read of {n} at {off}");
        }
    }
}

/// The mount's large reads take the ciphertext from the disk (`O_DIRECT`) where the file is
/// on a local disk: the same bytes as through the page cache, at any offset, right after
/// writes still in the page cache, and a damaged block is still caught.
#[test]
fn large_reads_straight_from_the_disk() {
    for version in [1, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("direct");
        let len = 700 * 4096 + 321; // several groups in version 2, the last one short
        let mut data = common::pattern(len, 40 + version as u64);
        let f = new_file_v(&path, version);
        f.write_at(&data, 0).unwrap();
        let local_disk = file::on_local_disk(dir.path());
        let check = |f: &EncryptedFile, data: &[u8]| {
            for (off, n) in [
                (0, 1 << 20),
                (4096 * 256, 1 << 20), // the readahead's requests
                (4096 * 108 + 17, 600_000),
                (len - 300_000, 1 << 20), // to the end
                (4096 * 690, 1 << 20),    // shorter than asked: under the direct minimum
            ] {
                let mut buf = vec![0u8; n];
                let got = f.read_at_direct(&mut buf, off as u64).unwrap();
                let want = &data[off..(off + n).min(len)];
                assert!(buf[..got] == *want, "v{version} read of {n} at {off}");
            }
        };
        check(&f, &data); // the ciphertext is still dirty in the page cache
        assert_eq!(f.reads_directly(), local_disk, "v{version}");
        let change = common::pattern(5000, 7);
        f.write_at(&change, 4096 * 300 + 5).unwrap();
        data[4096 * 300 + 5..4096 * 300 + 5 + 5000].copy_from_slice(&change);
        check(&f, &data);
        f.sync(true).unwrap();
        drop(f);
        check(&reopen(&path), &data);

        let mut bytes = std::fs::read(&path).unwrap();
        let layout = kmsfs::format::Layout::new(version, DEFAULT_HEADER_LEN);
        bytes[layout.place(400, 4096).data as usize + 9] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let f = reopen(&path);
        let mut buf = vec![0u8; 1 << 20];
        let err = f.read_at_direct(&mut buf, 4096 * 256).unwrap_err();
        assert_eq!(err.kind(), "block_auth{400}");
    }
}

/// What `fsck --repair` may zero as slack in a file whose change of length a crash cut
/// (open read-only, so not finished): never the length record that names the change.
#[test]
fn the_slack_of_a_cut_file_leaves_its_length_record() {
    use kmsfs::format::slots::LengthChange;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut");
    let f = new_file_v(&path, 4);
    f.write_at(&common::pattern(20_000, 3), 0).unwrap();
    drop(f);
    // An append from 10,000 bytes cut with the size after block 2's page, its record kept.
    let layout = kmsfs::format::Layout::new(4, DEFAULT_HEADER_LEN);
    let record = layout.length_record_at().unwrap();
    let cipher = FileCipher::new(&key(), FileId([9; 16]));
    let change = LengthChange {
        from: 10_000,
        to: 20_000,
    };
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate((layout.place(3, 0).nonce) as usize);
    bytes[record as usize..record as usize + 64]
        .copy_from_slice(&change.encode(&cipher.length_mac(&change)));
    std::fs::write(&path, &bytes).unwrap();
    let ro = File::open(&path).unwrap();
    let header = read_header(&ro).unwrap();
    let f = EncryptedFile::open(ro, header, &key()).unwrap();
    assert!(f.was_cut());
    assert_eq!(f.len(), 3 * 4068);
    assert_eq!(f.slack(), vec![(DEFAULT_HEADER_LEN as u64, record)]);
    f.check_slack().unwrap();
}
