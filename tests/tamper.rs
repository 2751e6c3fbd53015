//! The tamper matrix of the format issue: every class of tampering, applied to real
//! sealed bytes, must be rejected when the file is read. Nothing may come back as data.
//! Every test runs on both format versions: version 1 (blocks packed) and version 2
//! (block data on pages, nonces and tags in tables).

mod common;

use common::{make_file_v, pattern, read_file, MockKms};
use kmsfs::format::{FileId, Layout, DEFAULT_HEADER_LEN};
use kmsfs::secret::DataKey;

const H: usize = DEFAULT_HEADER_LEN as usize;
const VERSIONS: [u16; 2] = [1, 2];

struct Fixture {
    kms: MockKms,
    v: u16,
    layout: Layout,
    /// 3 blocks, the last one partial.
    a: Vec<u8>,
    a_plain: Vec<u8>,
    /// Another file under the same data key as `a` (only the file id differs).
    b_same_key: Vec<u8>,
    /// Another file under its own key.
    c_other_key: Vec<u8>,
}

fn fixture(v: u16) -> Fixture {
    let kms = MockKms::new();
    let key = DataKey::from_slice(&[1; 32]).unwrap();
    let other = DataKey::from_slice(&[2; 32]).unwrap();
    let a_plain = pattern(3 * 4096 - 100, 1);
    let a = make_file_v(&kms, &key, FileId([0xA; 16]), &a_plain, v);
    let b_same_key = make_file_v(
        &kms,
        &key,
        FileId([0xB; 16]),
        &pattern(3 * 4096 - 100, 2),
        v,
    );
    let c_other_key = make_file_v(
        &kms,
        &other,
        FileId([0xC; 16]),
        &pattern(3 * 4096 - 100, 3),
        v,
    );
    Fixture {
        kms,
        v,
        layout: Layout::new(v, DEFAULT_HEADER_LEN),
        a,
        a_plain,
        b_same_key,
        c_other_key,
    }
}

impl Fixture {
    fn block(&self, file: &[u8], n: u64) -> Vec<u8> {
        common::get_block(&self.layout, file, n)
    }

    fn put_block(&self, t: &mut Vec<u8>, n: u64, bytes: &[u8]) {
        common::put_block(&self.layout, t, n, bytes)
    }

    fn make(&self, id: u8, plain: &[u8]) -> Vec<u8> {
        let key = DataKey::from_slice(&[1; 32]).unwrap();
        make_file_v(&self.kms, &key, FileId([id; 16]), plain, self.v)
    }
}

fn assert_rejected(f: &Fixture, bytes: &[u8], what: &str) -> String {
    match read_file(&f.kms, bytes) {
        Ok(_) => panic!("v{}: {what}: tampered file was read without an error", f.v),
        Err(e) => e,
    }
}

#[test]
fn untampered_files_read_back() {
    for f in VERSIONS.map(fixture) {
        assert_eq!(read_file(&f.kms, &f.a).unwrap(), f.a_plain);
        assert!(read_file(&f.kms, &f.b_same_key).is_ok());
        assert!(read_file(&f.kms, &f.c_other_key).is_ok());
    }
}

#[test]
fn a_flipped_bit_anywhere_is_caught() {
    for f in VERSIONS.map(fixture) {
        for pos in 0..f.a.len() {
            for bit in [0u8, 7] {
                let mut t = f.a.clone();
                t[pos] ^= 1 << bit;
                assert_rejected(&f, &t, &format!("bit {bit} of byte {pos}"));
            }
        }
    }
}

#[test]
fn a_block_overwritten_with_zeros_is_caught() {
    for f in VERSIONS.map(fixture) {
        for n in 0..3 {
            let mut t = f.a.clone();
            let zeros = vec![0u8; f.block(&f.a, n).len()];
            f.put_block(&mut t, n, &zeros);
            assert_eq!(
                assert_rejected(&f, &t, "zeroed block"),
                format!("block_auth{{{n}}}")
            );
        }
    }
}

#[test]
fn truncation_anywhere_is_caught() {
    for f in VERSIONS.map(fixture) {
        // At block boundaries: the new last block was sealed as not final.
        for blocks in 1..3u64 {
            let t = &f.a[..f.layout.cipher_len(blocks * 4096).unwrap() as usize];
            assert_eq!(
                assert_rejected(&f, t, "cut at block boundary"),
                format!("block_auth{{{}}}", blocks - 1)
            );
        }
        // Down to the bare header, and at every other length.
        assert_rejected(&f, &f.a[..H], "cut to the header");
        for len in 0..f.a.len() {
            assert_rejected(&f, &f.a[..len], &format!("cut to {len} bytes"));
        }
        // A whole-block file cut at its boundary (no partial block to give it away).
        let full = f.make(0xD, &pattern(2 * 4096, 4));
        assert!(read_file(&f.kms, &full).is_ok());
        let cut = f.layout.cipher_len(4096).unwrap() as usize;
        assert_eq!(
            assert_rejected(&f, &full[..cut], "cut full file"),
            "block_auth{0}"
        );
        // An empty file still has its final block; removing it is caught.
        let empty = f.make(0xE, b"");
        assert_eq!(read_file(&f.kms, &empty).unwrap(), b"");
        assert_rejected(&f, &empty[..H], "empty file without its block");
    }
}

#[test]
fn an_appended_block_is_caught() {
    for f in VERSIONS.map(fixture) {
        // The file's own last block again, its first block, and blocks from other files.
        let full_last = f.make(0xA, &pattern(2 * 4096, 5));
        for (what, base, extra) in [
            ("own last block", &full_last, f.block(&full_last, 1)),
            ("own first block", &full_last, f.block(&full_last, 0)),
            (
                "block of a same-key file",
                &full_last,
                f.block(&f.b_same_key, 0),
            ),
            ("block of another file", &f.a, f.block(&f.c_other_key, 2)),
            ("random bytes", &f.a, pattern(4124, 9)),
        ] {
            let mut t = base.clone();
            f.put_block(&mut t, 3, &extra);
            assert_rejected(&f, &t, what);
            // Right after the end, too (version 1: what appending bytes gives).
            let mut t = base.clone();
            t.extend_from_slice(&extra);
            assert_rejected(&f, &t, what);
        }
    }
}

#[test]
fn swapped_blocks_are_caught() {
    for f in VERSIONS.map(fixture) {
        let mut t = f.a.clone();
        let (b0, b1) = (f.block(&f.a, 0), f.block(&f.a, 1));
        f.put_block(&mut t, 0, &b1);
        f.put_block(&mut t, 1, &b0);
        assert_eq!(assert_rejected(&f, &t, "swapped blocks"), "block_auth{0}");
    }
}

#[test]
fn a_block_from_another_file_is_caught() {
    for f in VERSIONS.map(fixture) {
        for (what, other) in [("same key", &f.b_same_key), ("other key", &f.c_other_key)] {
            let mut t = f.a.clone();
            f.put_block(&mut t, 1, &f.block(other, 1));
            assert_eq!(assert_rejected(&f, &t, what), "block_auth{1}", "{what}");
        }
    }
}

#[test]
fn a_header_on_another_files_blocks_is_caught() {
    for f in VERSIONS.map(fixture) {
        for (what, other) in [("same key", &f.b_same_key), ("other key", &f.c_other_key)] {
            let mut t = other[..H].to_vec();
            t.extend_from_slice(&f.a[H..]);
            assert_eq!(assert_rejected(&f, &t, what), "block_auth{0}", "{what}");
        }
    }
}

#[test]
fn a_file_cannot_pass_for_the_other_version() {
    // The version is committed: a version-1 file relabelled 2 (or back) is refused by the
    // header check before any block is read from the wrong places.
    for f in VERSIONS.map(fixture) {
        let mut t = f.a.clone();
        t[9] = 3 - t[9];
        assert_eq!(assert_rejected(&f, &t, "version relabelled"), "wrong_key");
    }
}

#[test]
fn every_header_field_edit_is_caught() {
    for f in VERSIONS.map(fixture) {
        every_header_field_edit_is_caught_in(&f);
    }
}

fn every_header_field_edit_is_caught_in(f: &Fixture) {
    let key_id_len = u16::from_be_bytes([f.a[68], f.a[69]]) as usize;
    let wrapped_at = 70 + key_id_len + 2;
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let edits: Vec<(&str, Edit, &str)> = vec![
        ("magic", Box::new(|t| t[3] = b'X'), "not_kmsfs"),
        ("version", Box::new(|t| t[9] = 3), "unsupported_version"),
        (
            "algorithm",
            Box::new(|t| t[11] = 2),
            "unsupported_algorithm",
        ),
        ("flags", Box::new(|t| t[12] = 0x80), "unsupported_flags"),
        ("header_len", Box::new(|t| t[18] ^= 0x10), "nonzero_padding"),
        (
            "file_id",
            Box::new(|t| t[25] ^= 1),
            "InvalidCiphertextException",
        ),
        ("commitment", Box::new(|t| t[40] ^= 1), "wrong_key"),
        (
            "key_id_len",
            Box::new(|t| t[69] -= 1),
            "InvalidCiphertextException|bad_header_len",
        ),
        (
            "key_id",
            Box::new(|t| t[75] ^= 1),
            "InvalidCiphertextException",
        ),
        (
            "wrapped_len",
            Box::new(move |t| t[wrapped_at - 1] -= 1),
            "nonzero_padding",
        ),
        (
            "wrapped_key",
            Box::new(move |t| t[wrapped_at + 20] ^= 1),
            "InvalidCiphertextException",
        ),
        ("padding", Box::new(|t| t[H - 1] = 1), "nonzero_padding"),
    ];
    for (field, edit, expected) in edits {
        let mut t = f.a.clone();
        edit(&mut t);
        let err = assert_rejected(f, &t, field);
        assert!(
            expected.split('|').any(|e| e == err),
            "{field}: expected {expected}, got {err}"
        );
    }
}

#[test]
fn the_file_id_is_bound_even_when_the_kms_is_fooled() {
    // If the key slot were re-wrapped for an edited file id (a KMS-level attacker), the
    // commitment still refuses the header, so blocks are never even tried.
    let f = fixture(2);
    let key = DataKey::from_slice(&[1; 32]).unwrap();
    let mut t = f.a.clone();
    t[20..36].copy_from_slice(&[0xF; 16]);
    assert_eq!(
        kmsfs::file::decrypt_bytes(&key, &t).unwrap_err().kind(),
        "wrong_key"
    );
}

#[test]
fn the_wrong_key_is_refused_by_the_header() {
    let f = fixture(2);
    let wrong = DataKey::from_slice(&[3; 32]).unwrap();
    assert_eq!(
        kmsfs::file::decrypt_bytes(&wrong, &f.a).unwrap_err().kind(),
        "wrong_key"
    );
}
