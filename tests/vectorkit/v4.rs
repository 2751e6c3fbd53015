//! The version-4 vectors (each block sealed whole on a 4096-byte page of its own, 4068
//! bytes of plaintext, after a header region of whole pages that ends with the length
//! record): valid files, files a crash left in the middle of a change of length (they read
//! as the record and the blocks say), and damage.

use kmsfs::format::slots::LengthChange;
use kmsfs::format::DEFAULT_HEADER_LEN;

use super::{broken_v, build, describe, sha, text, valid_v, Built, Vector, KEY_ID};
use serde_json::{json, Value};

const H: usize = DEFAULT_HEADER_LEN as usize;
/// With the default header: block 0's page, the bytes of a page and of a block's plaintext.
const D: usize = 4096;
const P: usize = 4096;
const B: usize = 4068;

/// Valid files: what reading them must give is their plaintext.
pub fn valid_files() -> Vec<Vector> {
    let mut out = Vec::new();
    for (name, len, description) in [
        ("v4-empty", 0, "Version 4, empty: header, zeros to the first page (the length record zero), block 0 empty and final on it."),
        ("v4-one-byte", 1, "Version 4, 1 byte."),
        ("v4-one-block", B, "Version 4, 4068 bytes: block 0 fills its page, and the file ends on a page boundary."),
        ("v4-two-blocks", B + 1, "Version 4, 4069 bytes: block 1 holds 1 byte."),
        ("v4-three-blocks", 2 * B + 1, "Version 4, 8137 bytes: two full pages and block 2 of 1 byte."),
    ] {
        out.push(valid_v(4, name, description, &text(name, len), DEFAULT_HEADER_LEN, KEY_ID));
    }
    out.push(valid_v(
        4,
        "v4-header-4033",
        "Version 4, a header region of 4033 bytes: the record no longer fits on its page, so block 0 starts at 8192.",
        &text("v4-header-4033", 5000),
        4033,
        KEY_ID,
    ));
    let name = "v4-append-cut";
    let (plain, bytes, b) = append_cut(name, false);
    let description = "Version 4, an append from 10000 to 20000 bytes cut with the size on \
         the page boundary after block 2: the length record names the change, block 2 (now \
         last) is sealed as not final. It reads as its first 12204 bytes.";
    out.push(crash_left(name, &plain, bytes, &b, description));
    let name = "v4-append-old-tail-kept";
    let plain = text(name, 20000);
    let old = build(name, &plain[..10000], DEFAULT_HEADER_LEN, KEY_ID, 4);
    let b = build(name, &plain, DEFAULT_HEADER_LEN, KEY_ID, 4);
    let mut bytes = b.bytes.clone();
    // Block 2's page as the old file had it: 1864 bytes, final.
    let page = D + 2 * P;
    bytes[page..page + P].fill(0);
    bytes[page..old.bytes.len()].copy_from_slice(&old.bytes[page..]);
    put_record(&mut bytes, &b, 10000, 20000);
    let description = "Version 4, an ordered append from 10000 to 20000 bytes cut before \
         block 2's page was rewritten: the length record names the change, the file has its \
         new size and blocks 3 and 4, and block 2's page is the old one (1864 bytes, final). \
         It reads as its first 10000 bytes.";
    out.push(crash_left(name, &plain[..10000], bytes, &b, description));
    let name = "v4-append-to-empty-old-block-kept";
    let plain = text(name, 10000);
    let old = build(name, b"", DEFAULT_HEADER_LEN, KEY_ID, 4);
    let b = build(name, &plain, DEFAULT_HEADER_LEN, KEY_ID, 4);
    let mut bytes = b.bytes.clone();
    // Block 0's page as the empty file had it: an empty final block, then zeros.
    bytes[D..D + P].fill(0);
    bytes[D..D + 28].copy_from_slice(&old.bytes[D..D + 28]);
    put_record(&mut bytes, &b, 0, 10000);
    let description = "Version 4, an append to an empty file (0 to 10000 bytes) cut with \
         the new size and blocks 1 and 2 on disk, block 0's page still the empty file's \
         (an overwrite the filesystem had not written back): the length record names the \
         change. It reads as empty.";
    out.push(crash_left(name, b"", bytes, &b, description));
    let name = "v4-shrink-cut";
    let plain = text(name, 20000);
    let b = build(name, &plain, DEFAULT_HEADER_LEN, KEY_ID, 4);
    let new = build(name, &plain[..10000], DEFAULT_HEADER_LEN, KEY_ID, 4);
    let mut bytes = b.bytes.clone();
    let page = D + 2 * P;
    bytes[page..new.bytes.len()].copy_from_slice(&new.bytes[page..]);
    put_record(&mut bytes, &b, 20000, 10000);
    let description = "Version 4, a truncate from 20000 to 10000 bytes cut after block 2 was \
         sealed again (1864 bytes, final; the rest of its page still the old block's) and \
         before the file was cut: the length record names the change. It reads as its \
         first 10000 bytes.";
    out.push(crash_left(name, &plain[..10000], bytes, &b, description));
    out
}

/// A valid vector of a file a crash left, reading as `plain`.
fn crash_left(name: &str, plain: &[u8], bytes: Vec<u8>, b: &Built, description: &str) -> Vector {
    let outcome = json!({
        "plaintext_size": plain.len(),
        "plaintext_sha256": hex::encode(sha(&[plain])),
    });
    (name.into(), bytes, describe(b, description, outcome))
}

/// Writes the length record of a change from `from` to `to` bytes into `bytes`, with its
/// mac under `b`'s key.
fn put_record(bytes: &mut [u8], b: &Built, from: u64, to: u64) {
    let key = kmsfs::secret::DataKey::from_slice(&b.data_key).unwrap();
    let cipher = kmsfs::crypto::FileCipher::new(&key, b.header.file_id);
    let change = LengthChange { from, to };
    bytes[D - 64..D].copy_from_slice(&change.encode(&cipher.length_mac(&change)));
}

/// A 20000-byte version-4 file as an append from 10000 bytes leaves it when cut with the
/// size after block 2's page: the length record names the change, with its mac or, with
/// `flip`, a flipped bit in it. Also the plaintext it reads as (valid) and how it was built.
fn append_cut(name: &str, flip: bool) -> (Vec<u8>, Vec<u8>, Built) {
    let plain = text(name, 20000);
    let mut b = build(name, &plain, DEFAULT_HEADER_LEN, KEY_ID, 4);
    let mut bytes = b.bytes.clone();
    bytes.truncate(D + 3 * P);
    put_record(&mut bytes, &b, 10000, 20000);
    if flip {
        bytes[D - 1] ^= 1;
    }
    b.bytes = bytes.clone();
    (plain[..3 * B].to_vec(), bytes, b)
}

/// Damaged files, each with the error a reader must give.
pub fn broken_files() -> Vec<Vector> {
    let mut out = vec![
        broken_v(
            4,
            "v4-pages-swapped",
            "Version 4, the pages of blocks 0 and 1 swapped.",
            10000,
            |b, _| super::swap(b, D, D + P, P),
            "block_auth{0}",
        ),
        broken_v(
            4,
            "v4-cut-at-block-boundary",
            "Version 4, a 3-block file cut after block 1's page.",
            10000,
            |b, _| b.truncate(D + 2 * P),
            "block_auth{1}",
        ),
        broken_v(
            4,
            "v4-slack-edited",
            "Version 4, a byte between the header and the length record set.",
            10000,
            |b, _| b[H + 10] = 1,
            "nonzero_slack",
        ),
        broken_v(
            4,
            "v4-size-d",
            "Version 4, an empty file without its block: the size is D, which no file has.",
            0,
            |b, _| b.truncate(D),
            "invalid_cipher_len",
        ),
        broken_v(
            4,
            "v4-size-d-plus-27",
            "Version 4, an empty file cut inside its block's tag.",
            0,
            |b, _| b.truncate(D + 27),
            "invalid_cipher_len",
        ),
        broken_v(
            4,
            "v4-partial-nonce-after-block",
            "Version 4, a 2-block file cut 10 bytes into block 1's page.",
            4069,
            |b, _| b.truncate(D + P + 10),
            "invalid_cipher_len",
        ),
    ];
    let name = "v4-length-record-bad-mac";
    let (_, bytes, b) = append_cut(name, true);
    let description = "Version 4, v4-append-cut with a bit of the length record's mac \
         flipped: the record is not followed, and block 2 is not final.";
    let outcome: Value = json!({"expected_error": "block_auth{2}"});
    out.push((name.into(), bytes, describe(&b, description, outcome)));
    out
}
