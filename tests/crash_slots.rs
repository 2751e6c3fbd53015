//! Format version 3 against the states a killed write leaves behind (`docs/format.md`,
//! "Layout, version 3"): a block rewritten in place reads as its old or its new content,
//! never as an authentication failure, whichever step the write was cut after, and also
//! when the next write of the same block is cut too. Version 2 fails the same states.
//!
//! The states are built from the files before and after a whole write: the entries of the
//! blocks written (one positional write) land before their data (the next one), and the
//! settled bit last; a killed process's writes reach the page cache in that order.

mod common;

use std::path::Path;

use kmsfs::crypto::FileCipher;
use kmsfs::file::{self, read_header, EncryptedFile, FileError, KeySlot};
use kmsfs::format::slots::{ENTRY_LEN, SETTLED, STATE_AT};
use kmsfs::format::{FileId, Layout, DEFAULT_HEADER_LEN};
use kmsfs::secret::DataKey;

use common::rw;

fn key() -> DataKey {
    DataKey::from_slice(&[0x42; 32]).unwrap()
}

fn create(path: &Path, version: u16, plain: &[u8]) {
    let _ = std::fs::remove_file(path);
    let cipher = FileCipher::new(&key(), FileId([9; 16]));
    let slot = KeySlot {
        key_id: common::KEY_ID.into(),
        wrapped_key: vec![1, 2, 3],
    };
    let header = file::new_header(&cipher, (version, false), DEFAULT_HEADER_LEN, slot).unwrap();
    let f = EncryptedFile::create(rw(path), cipher, header).unwrap();
    f.write_at(plain, 0).unwrap();
}

fn open(path: &Path) -> EncryptedFile {
    let f = rw(path);
    let header = read_header(&f).unwrap();
    EncryptedFile::open(f, header, &key()).unwrap()
}

fn read_all(path: &Path) -> Result<Vec<u8>, FileError> {
    let f = open(path);
    let mut buf = vec![0u8; f.len() as usize];
    f.read_at(&mut buf, 0)?;
    Ok(buf)
}

/// The file at `path` after writing `data` at `off`.
fn after_write(path: &Path, off: u64, data: &[u8]) -> Vec<u8> {
    open(path).write_at(data, off).unwrap();
    std::fs::read(path).unwrap()
}

/// Blocks `blocks`' entries (or, before version 3, nonces and tags) copied from `from`
/// into `into`, settled bit cleared: the write cut after its entries.
fn with_entries_of(
    into: &[u8],
    from: &[u8],
    layout: &Layout,
    blocks: std::ops::Range<u64>,
) -> Vec<u8> {
    let mut out = into.to_vec();
    for b in blocks {
        let at = layout.place(b, 4096).nonce as usize;
        let len = layout.entry_len() as usize;
        out[at..at + len].copy_from_slice(&from[at..at + len]);
        if layout.has_slots() {
            out[at + STATE_AT] &= !SETTLED;
        }
    }
    out
}

/// Runs one cut state: `bytes` on disk must read as `want` (or fail, for version 2).
fn reads_as(path: &Path, bytes: &[u8], want: &[u8]) -> Result<(), FileError> {
    std::fs::write(path, bytes).unwrap();
    let got = read_all(path)?;
    assert!(got == want, "read something that was never written");
    Ok(())
}

#[test]
fn a_rewrite_cut_at_any_step_reads_as_old_or_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    // 200 blocks (several groups), rewritten in the middle across a group boundary.
    let old = common::pattern(200 * 4096, 1);
    let (off, new) = (60 * 4096u64, common::pattern(8 * 4096, 2));
    let blocks = 60..68;
    let mut want_new = old.clone();
    want_new[off as usize..off as usize + new.len()].copy_from_slice(&new);
    for version in [3u16, 2] {
        let layout = Layout::new(version, DEFAULT_HEADER_LEN);
        create(&path, version, &old);
        let before = std::fs::read(&path).unwrap();
        let after = after_write(&path, off, &new);
        // Cut after the entries, before the data: the old content.
        let cut_early = with_entries_of(&before, &after, &layout, blocks.clone());
        let early = reads_as(&path, &cut_early, &old);
        // Cut after the data, before settling: the new content.
        let cut_late = with_entries_of(&after, &after, &layout, blocks.clone());
        reads_as(&path, &cut_late, &want_new).expect("new data under new tags reads");
        if version == 2 {
            let err = early.expect_err("version 2 cannot read a block whose tag ran ahead");
            assert_eq!(err.kind(), "block_auth{60}");
            continue;
        }
        early.expect("version 3 reads a block whose new tag never got its data");
        // From the early cut: write the same blocks again, and cut that write too.
        std::fs::write(&path, &cut_early).unwrap();
        let newer = common::pattern(8 * 4096, 3);
        let again = after_write(&path, off, &newer);
        let twice = with_entries_of(&cut_early, &again, &layout, blocks.clone());
        reads_as(&path, &twice, &old).expect("a second cut write still leaves the old data");
        // And that second write, completed, reads as itself.
        let mut want_newer = old.clone();
        want_newer[off as usize..off as usize + newer.len()].copy_from_slice(&newer);
        reads_as(&path, &again, &want_newer).unwrap();
        // The entries end settled, and whole-file checks accept every state above.
        for bytes in [&cut_early, &cut_late, &twice, &again] {
            file::decrypt_bytes(&key(), bytes).unwrap();
        }
        let e = layout.place(60, 4096).nonce as usize;
        assert_ne!(again[e + STATE_AT] & SETTLED, 0, "settled once written");
        assert_eq!(again[e..e + ENTRY_LEN].len(), ENTRY_LEN);
    }
}

#[test]
fn a_partial_rewrite_cut_early_reads_as_old() {
    // A write of part of a block reads the block, merges, and re-seals it whole.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let layout = Layout::new(3, DEFAULT_HEADER_LEN);
    let old = common::pattern(3 * 4096 + 100, 4);
    create(&path, 3, &old);
    let before = std::fs::read(&path).unwrap();
    let after = after_write(&path, 4096 + 10, b"a few bytes");
    let cut = with_entries_of(&before, &after, &layout, 1..2);
    reads_as(&path, &cut, &old).expect("old content");
    // The next partial write of the block, from that state, keeps the slot that opens.
    std::fs::write(&path, &cut).unwrap();
    let again = after_write(&path, 4096 + 20, b"more");
    let mut want = old.clone();
    want[4096 + 20..4096 + 24].copy_from_slice(b"more");
    reads_as(&path, &again, &want).unwrap();
    let twice = with_entries_of(&cut, &again, &layout, 1..2);
    reads_as(&path, &twice, &old).expect("still the old content");
}
