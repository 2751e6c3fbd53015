//! The length record of format versions 3 and 4 against changes of length cut by a crash
//! (`docs/format.md`, "The length record"): an append cut at any page leaves a file that
//! reads as a prefix of its new content, a truncate cut after its re-seal reads as
//! truncated, read-only opens take the cut into account without writing, and an open for
//! writing finishes the change. Tampering with the record is still caught. Every test
//! runs on both versions.
//!
//! Appends are cut for real: a child process writes with its file size limit
//! (`RLIMIT_FSIZE`) at a page of the ciphertext, which stops its writes there as a kill
//! would (`SIGXFSZ` ignored, the write fails with `EFBIG`). Truncates change no size until
//! their last step, so their cut states are built from the files before and after.

mod common;

use std::fs::File;
use std::path::Path;

use kmsfs::crypto::FileCipher;
use kmsfs::file::{self, read_header, EncryptedFile, KeySlot};
use kmsfs::format::slots::{LengthChange, ENTRY_LEN};
use kmsfs::format::{FileId, Layout, DEFAULT_HEADER_LEN};
use kmsfs::secret::DataKey;

use common::rw;

const P: u64 = 4096;

/// Held by every test: `cut_write` forks, and a child forked while another test's thread
/// held one of the library's locks (its buffer pool) would wait on it for ever.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn key() -> DataKey {
    DataKey::from_slice(&[0x42; 32]).unwrap()
}

/// The format version the test running now uses (set under [`serial`]).
static FORMAT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(3);

fn version() -> u16 {
    FORMAT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs `test` on format versions 3 and 4.
fn on_each_version(test: impl Fn(u16)) {
    for v in [3, 4] {
        FORMAT.store(v, std::sync::atomic::Ordering::Relaxed);
        test(v);
    }
}

fn layout() -> Layout {
    Layout::new(version(), DEFAULT_HEADER_LEN)
}

fn create(path: &Path, plain: &[u8]) -> EncryptedFile {
    let _ = std::fs::remove_file(path);
    let cipher = FileCipher::new(&key(), FileId([9; 16]));
    let slot = KeySlot {
        key_id: common::KEY_ID.into(),
        wrapped_key: vec![1, 2, 3],
    };
    let header = file::new_header(&cipher, (version(), false), DEFAULT_HEADER_LEN, slot).unwrap();
    let f = EncryptedFile::create(rw(path), cipher, header).unwrap();
    f.write_at(plain, 0).unwrap();
    f
}

fn open(file: File) -> EncryptedFile {
    let header = read_header(&file).unwrap();
    EncryptedFile::open(file, header, &key()).unwrap()
}

fn read(f: &EncryptedFile) -> Vec<u8> {
    let mut buf = vec![0u8; f.len() as usize];
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(n, buf.len());
    buf
}

/// Writes `data` at `off` in a child process whose writes stop at `limit` bytes of file.
/// With `made`, the child first makes the file with that content and writes through the
/// same open file: nothing of it was synced, so the write is not ordered (`ordered.rs`);
/// else it opens the file (whose content counts as synced).
fn cut_write(path: &Path, off: u64, data: &[u8], limit: u64, made: Option<&[u8]>) {
    // SAFETY: the child only writes the file and exits; it never returns into the test.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            let f = match made {
                Some(plain) => create(path, plain),
                None => open(rw(path)),
            };
            let cut = f.write_at(data, off).is_err();
            libc::_exit(if cut { 0 } else { 1 });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the write at {off} was not cut at {limit}"
        );
    }
}

/// The file at `path`, opened read-only and then for writing: reads as a prefix of
/// `new` no shorter than `min` both times, the read-only open writes nothing, and the
/// open for writing leaves a whole file with no change under way. Returns its length.
fn check_cut(path: &Path, new: &[u8], min: usize) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let ro = open(File::open(path).unwrap());
    let got = read(&ro);
    assert!(
        got.len() >= min && got.len() <= new.len(),
        "length {}",
        got.len()
    );
    assert!(got == new[..got.len()], "read something never written");
    ro.check_slack().expect("a cut change is not slack");
    drop(ro);
    let whole_check = file::decrypt_bytes(&key(), &bytes).expect("whole-file checks agree");
    assert!(whole_check == got, "whole-file checks read another length");
    assert!(
        std::fs::read(path).unwrap() == bytes,
        "a read-only open wrote"
    );
    let f = open(rw(path));
    assert_eq!(read(&f), got, "finishing changed the content");
    drop(f);
    let whole = std::fs::read(path).unwrap();
    let at = layout().length_record_at().unwrap() as usize;
    assert!(
        whole[at..at + 64].iter().all(|&b| b == 0),
        "finished: no change under way"
    );
    let size = whole.len() as u64;
    assert_eq!(
        layout().plain_len(size).ok(),
        Some(got.len() as u64),
        "finished: its size"
    );
    assert!(file::decrypt_bytes(&key(), &whole).unwrap() == got);
    got.len()
}

#[test]
fn an_append_cut_at_any_page_reads_as_a_prefix_of_its_new_content() {
    let _serial = serial();
    on_each_version(append_cut_at_any_page);
}

fn append_cut_at_any_page(v: u16) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    // 50 blocks and 100 bytes, grown by 30 blocks and then some: the old last block turns
    // whole, and the write crosses into group 1 (its table page, then its data).
    let old = common::pattern(50 * P as usize + 100, 1);
    let more = common::pattern(30 * P as usize + 777, 2);
    let new = [&old[..], &more[..]].concat();
    let (from, to) = (
        layout().cipher_len(old.len() as u64).unwrap(),
        layout().cipher_len(new.len() as u64).unwrap(),
    );
    let mut lengths = Vec::new();
    // A kill stops a write at a page boundary: cut at each one.
    let mut limit = from.next_multiple_of(P);
    while limit < to {
        cut_write(&path, old.len() as u64, &more, limit, Some(&old));
        lengths.push(check_cut(&path, &new, old.len()));
        // The file takes writes again: the rest of the append.
        let f = open(rw(&path));
        let len = f.len() as usize;
        f.write_at(&new[len..], len as u64).unwrap();
        drop(f);
        let whole = std::fs::read(&path).unwrap();
        assert!(file::decrypt_bytes(&key(), &whole).unwrap() == new);
        limit += P;
    }
    // The cuts left the old last block whole (and last), lengths in between and (version
    // 3) the file ending in group 1's table page (taken as the end of group 0's data).
    let bs = layout().block_len() as usize;
    assert_eq!(lengths[0], 51 * bs, "v{v}: {lengths:?}");
    if v == 3 {
        assert!(lengths.contains(&(64 * P as usize)), "{lengths:?}");
        assert!(lengths.iter().any(|&l| l > 64 * P as usize), "{lengths:?}");
    } else {
        // Each page a whole block: a cut after block k leaves k + 1 blocks.
        let want: Vec<usize> = (0..lengths.len()).map(|i| (51 + i) * bs).collect();
        assert_eq!(lengths, want);
    }
}

/// An append to a file opened from disk, whose last block holds synced bytes, is ordered
/// (`docs/format.md`, "Ordered changes"): the old last block is rewritten last, so a cut
/// at any page leaves the old content, which the reading rule takes, and the file then
/// takes the rest of the append.
#[test]
fn an_ordered_append_cut_at_any_page_reads_as_its_old_content() {
    let _serial = serial();
    on_each_version(ordered_append_cut_at_any_page);
}

fn ordered_append_cut_at_any_page(v: u16) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let old = common::pattern(50 * P as usize + 100, 3);
    let more = common::pattern(30 * P as usize + 777, 4);
    let new = [&old[..], &more[..]].concat();
    let (from, to) = (
        layout().cipher_len(old.len() as u64).unwrap(),
        layout().cipher_len(new.len() as u64).unwrap(),
    );
    let mut limit = from.next_multiple_of(P);
    while limit < to {
        drop(create(&path, &old));
        cut_write(&path, old.len() as u64, &more, limit, None);
        assert_eq!(
            check_cut(&path, &new, old.len()),
            old.len(),
            "cut at {limit}"
        );
        // Version 3: the finished file's old last block takes a write cut between its
        // entry and its data (its data page put back as it was): it still reads, through
        // the slot that finishing kept current, not one that opens nothing.
        if v == 3 {
            let before = std::fs::read(&path).unwrap();
            let page = layout().place(50, 100).data as usize;
            open(rw(&path)).write_at(b"rewritten", 50 * P + 10).unwrap();
            let mut torn = std::fs::read(&path).unwrap();
            torn[page..page + 100].copy_from_slice(&before[page..page + 100]);
            std::fs::write(&path, &torn).unwrap();
            assert!(
                read(&open(File::open(&path).unwrap())) == old,
                "cut at {limit}"
            );
        }
        let f = open(rw(&path));
        f.write_at(&more, old.len() as u64).unwrap();
        drop(f);
        let whole = std::fs::read(&path).unwrap();
        assert!(file::decrypt_bytes(&key(), &whole).unwrap() == new);
        limit += 5 * P;
    }
}

/// The bytes of a file cut in the middle of truncating `before` to `after`: the length
/// record written and, with `resealed`, the new last block's entry and data (version 4:
/// its sealed block) too.
fn truncate_cut(before: &[u8], after: &[u8], to: u64, from: u64, resealed: bool) -> Vec<u8> {
    let l = layout();
    let mut out = before.to_vec();
    let change = LengthChange { from, to };
    let cipher = FileCipher::new(&key(), FileId([9; 16]));
    let at = l.length_record_at().unwrap() as usize;
    out[at..at + 64].copy_from_slice(&change.encode(&cipher.length_mac(&change)));
    if resealed {
        let last = l.block_count(to) - 1;
        let blen = l.block_plain_len(to, last);
        let p = l.place(last, blen);
        let (e, d) = (p.nonce as usize, p.data as usize);
        if l.has_slots() {
            out[e..e + ENTRY_LEN].copy_from_slice(&after[e..e + ENTRY_LEN]);
            out[d..d + blen].copy_from_slice(&after[d..d + blen]);
        } else {
            let end = p.tag as usize + 16;
            out[e..end].copy_from_slice(&after[e..end]);
        }
    }
    out
}

#[test]
fn a_truncate_cut_reads_as_old_or_truncated_and_is_finished() {
    let _serial = serial();
    on_each_version(truncate_cut_reads_as_old_or_truncated);
}

fn truncate_cut_reads_as_old_or_truncated(_: u16) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let old = common::pattern(100 * P as usize + 5, 3);
    // Into another block of group 1, within the last block, and into group 0.
    for to in [70 * P + 1234, 100 * P + 2, 10 * P + 9] {
        drop(create(&path, &old));
        let before = std::fs::read(&path).unwrap();
        open(rw(&path)).set_len(to).unwrap();
        let after = std::fs::read(&path).unwrap();
        let from = old.len() as u64;
        for resealed in [false, true] {
            std::fs::write(&path, truncate_cut(&before, &after, to, from, resealed)).unwrap();
            let want = if resealed { to } else { from };
            let len = check_cut(&path, &old, to as usize);
            assert_eq!(len as u64, want, "cut to {to}, resealed: {resealed}");
        }
    }
}

#[test]
fn a_length_record_that_does_not_check_changes_nothing_and_is_reported() {
    let _serial = serial();
    on_each_version(record_that_does_not_check);
}

fn record_that_does_not_check(_: u16) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let old = common::pattern(100 * P as usize + 5, 4);
    drop(create(&path, &old));
    let before = std::fs::read(&path).unwrap();
    open(rw(&path)).set_len(10 * P).unwrap();
    let after = std::fs::read(&path).unwrap();
    let mut cut = truncate_cut(&before, &after, 10 * P, old.len() as u64, true);
    // A record with a wrong mac (a stranger's, or flipped): the block re-sealed as the
    // last one stays unreadable.
    let at = layout().length_record_at().unwrap() as usize;
    cut[at + 40] ^= 1;
    std::fs::write(&path, &cut).unwrap();
    let f = open(rw(&path));
    assert_eq!(f.len(), old.len() as u64, "the record was not followed");
    let (bs, b) = (layout().block_len(), layout().block_count(10 * P) - 1);
    let mut buf = vec![0u8; bs as usize];
    let err = f.read_at(&mut buf, b * bs).unwrap_err();
    assert_eq!(err.kind(), format!("block_auth{{{b}}}"));
    assert_eq!(
        f.check_slack().unwrap_err().kind(),
        "nonzero_slack",
        "whole-file checks report it"
    );
    assert!(std::fs::read(&path).unwrap() == cut, "nothing was finished");
}
