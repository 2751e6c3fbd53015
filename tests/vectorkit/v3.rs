//! The version-3 vectors (version 2's layout with 64-byte entries of two slots, 64 to a
//! group): valid files, files a crash left in the middle of rewriting a block (they read as
//! the slot that opens them says), and damage.

use kmsfs::format::slots::LengthChange;
use kmsfs::format::DEFAULT_HEADER_LEN;

use super::{broken_v, build, describe, sha, text, valid_v, Vector, KEY_ID};
use serde_json::json;

const H: usize = DEFAULT_HEADER_LEN as usize;
/// With the default header: block 0's data page, the bytes of a page and of an entry, the
/// state byte's offset in an entry, and the second slot's.
const D: usize = 8192;
const P: usize = 4096;
const E: usize = 64;
const STATE: usize = 56;
const SLOT1: usize = 28;

/// Valid files: what reading them must give is their plaintext.
pub fn valid_files() -> Vec<Vector> {
    let long_key_id = super::long_key_id();
    vec![
        valid_v(
            3,
            "v3-empty",
            "Version 3, empty: header, block 0's entry (slot 0 current, settled), zeros to the first data page.",
            b"",
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            3,
            "v3-three-blocks",
            "Version 3, 10000 bytes: two full data pages and a partial one.",
            &text("v3-three-blocks", 10000),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            3,
            "v3-second-group",
            "Version 3, 64 blocks and 1 byte: block 64's entry starts group 1's table page.",
            &text("v3-second-group", 64 * 4096 + 1),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            3,
            "v3-large-header",
            "Version 3, a 4096-byte header: group 0's table takes the second page.",
            &text("v3-large-header", 5000),
            4096,
            &long_key_id,
        ),
        crashed(
            "v3-cut-before-data",
            "Version 3, a write of block 1 cut after its entry: the current slot (1) holds the \
             new nonce and tag, the data is the old one, which slot 0 still opens.",
            |b| {
                let e = H + E;
                b[e + SLOT1..e + 2 * SLOT1].copy_from_slice(&sha(&[b"new slot"])[..SLOT1]);
                b[e + STATE] = 1; // current 1, not settled
            },
        ),
        crashed(
            "v3-cut-before-settled",
            "Version 3, a write of block 2 cut before its entry was settled: slot 1 current and \
             opening the data, slot 0 holding an older write's nonce and tag.",
            |b| {
                let e = H + 2 * E;
                let valid = b[e..e + SLOT1].to_vec();
                b[e + SLOT1..e + 2 * SLOT1].copy_from_slice(&valid);
                b[e..e + SLOT1].copy_from_slice(&sha(&[b"older slot"])[..SLOT1]);
                b[e + STATE] = 1;
            },
        ),
        {
            let name = "v3-append-cut";
            let (plain, bytes, b) = append_cut(name, false);
            let outcome = json!({
                "plaintext_size": plain.len(),
                "plaintext_sha256": hex::encode(sha(&[&plain])),
            });
            let description = "Version 3, an append from 10000 to 20000 bytes cut after \
                 block 2's data page: the length record names the change, block 2 (now last) \
                 is sealed as not final, blocks 3 and 4 have entries and no data. It reads as \
                 its first 12288 bytes.";
            (name.into(), bytes, describe(&b, description, outcome))
        },
        {
            let name = "v3-append-old-tail-kept";
            let (plain, bytes, b) = ordered_append_cut(name);
            let outcome = json!({
                "plaintext_size": plain.len(),
                "plaintext_sha256": hex::encode(sha(&[&plain])),
            });
            let description = "Version 3, an ordered append from 10000 to 20000 bytes cut \
                 before block 2's data page was rewritten: the length record names the \
                 change, the file has its new size and blocks 3 and 4, block 2's entry has \
                 the new seal (not final) current and the old one (final, 1808 bytes) in \
                 its other slot, and its data page is the old one. It reads as its first \
                 10000 bytes.";
            (name.into(), bytes, describe(&b, description, outcome))
        },
    ]
}

/// The bytes of a 20000-byte version-3 file as an ordered append from 10000 bytes
/// (`docs/format.md`, "Ordered changes") leaves them when cut after its second flush:
/// everything of the new file but block 2's data page, which is still the old file's, and
/// block 2's entry keeping the old seal in its other slot. Also the plaintext it reads as.
fn ordered_append_cut(name: &str) -> (Vec<u8>, Vec<u8>, super::Built) {
    let plain = text(name, 20000);
    let old = build(name, &plain[..10000], DEFAULT_HEADER_LEN, KEY_ID, 3);
    let b = build(name, &plain, DEFAULT_HEADER_LEN, KEY_ID, 3);
    let mut bytes = b.bytes.clone();
    let e = H + 2 * E;
    bytes[e + SLOT1..e + 2 * SLOT1].copy_from_slice(&old.bytes[e..e + SLOT1]);
    bytes[e + STATE] = 0; // slot 0 current, not settled
    let page = D + 2 * P;
    bytes[page..page + P].fill(0);
    bytes[page..page + 1808].copy_from_slice(&old.bytes[page..page + 1808]);
    let key = kmsfs::secret::DataKey::from_slice(&b.data_key).unwrap();
    let cipher = kmsfs::crypto::FileCipher::new(&key, b.header.file_id);
    let change = LengthChange {
        from: 10000,
        to: 20000,
    };
    bytes[D - 64..D].copy_from_slice(&change.encode(&cipher.length_mac(&change)));
    (plain[..10000].to_vec(), bytes, b)
}

/// The bytes of a 20000-byte version-3 file as an append from 10000 bytes leaves them when
/// cut after block 2's data page turned whole (blocks 3 and 4's entries written, their data
/// not): the length record names the change, with its mac, or with `flip` set, a flipped
/// bit in it. Also the plaintext it reads as (valid) and how it was built.
fn append_cut(name: &str, flip: bool) -> (Vec<u8>, Vec<u8>, super::Built) {
    let plain = text(name, 20000);
    let mut b = build(name, &plain, DEFAULT_HEADER_LEN, KEY_ID, 3);
    b.bytes.truncate(D + 3 * P);
    let key = kmsfs::secret::DataKey::from_slice(&b.data_key).unwrap();
    let cipher = kmsfs::crypto::FileCipher::new(&key, b.header.file_id);
    let change = LengthChange {
        from: 10000,
        to: 20000,
    };
    let record = change.encode(&cipher.length_mac(&change));
    b.bytes[D - 64..D].copy_from_slice(&record);
    if flip {
        b.bytes[D - 1] ^= 1;
    }
    (plain[..3 * P].to_vec(), b.bytes.clone(), b)
}

/// A valid three-block file as a crash in the middle of rewriting a block could leave it
/// (`change` edits its entries): it still reads as its plaintext.
fn crashed(name: &str, description: &str, change: impl FnOnce(&mut Vec<u8>)) -> Vector {
    let plain = text(name, 10000);
    let mut b = build(name, &plain, DEFAULT_HEADER_LEN, KEY_ID, 3);
    change(&mut b.bytes);
    let outcome = json!({
        "plaintext_size": plain.len(),
        "plaintext_sha256": hex::encode(sha(&[&plain])),
    });
    (
        name.into(),
        b.bytes.clone(),
        describe(&b, description, outcome),
    )
}

/// Damaged files, each with the error a reader must give.
pub fn broken_files() -> Vec<Vector> {
    vec![
        broken_v(
            3,
            "v3-both-slots-bad",
            "Version 3, block 1's current tag flipped and its other slot holding nothing.",
            10000,
            |b, _| b[H + E + 12 + 3] ^= 0x10,
            "block_auth{1}",
        ),
        broken_v(
            3,
            "v3-slots-swapped-between-blocks",
            "Version 3, the entries of blocks 0 and 1 swapped (data left).",
            10000,
            |b, _| super::swap(b, H, H + E, E),
            "block_auth{0}",
        ),
        broken_v(
            3,
            "v3-data-swapped",
            "Version 3, the data pages of blocks 0 and 1 swapped (entries left).",
            10000,
            |b, _| super::swap(b, D, D + P, P),
            "block_auth{0}",
        ),
        broken_v(
            3,
            "v3-reserved-set",
            "Version 3, a reserved byte of block 0's entry set: whole-file checks refuse it.",
            10000,
            |b, _| b[H + E - 1] = 1,
            "nonzero_slack",
        ),
        {
            let name = "v3-length-record-bad-mac";
            let (_, bytes, b) = append_cut(name, true);
            let description = "Version 3, v3-append-cut with a bit of the length record's mac \
                 flipped: the record is not followed, and block 2 is not final.";
            let outcome = json!({"expected_error": "block_auth{2}"});
            (name.into(), bytes, describe(&b, description, outcome))
        },
        broken_v(
            3,
            "v3-cut-at-block-boundary",
            "Version 3, a 3-block file cut after block 1's data page.",
            10000,
            |b, _| b.truncate(D + 2 * P),
            "block_auth{1}",
        ),
    ]
}

/// A file of a volume whose names are bound to files, linked under two names: its header
/// has flag bit 0 and its binding area their tags (`docs/format.md`, "Names bound to
/// files"). The JSON gives the names key, the directory id and each name's tag.
pub fn bound_files() -> Vec<Vector> {
    use kmsfs::crypto::BindingKey;
    use kmsfs::format::binding::area_offset;
    let name = "v3-names-bound";
    let plain = text(name, 5000);
    let mut b = super::build_shape(name, &plain, DEFAULT_HEADER_LEN, KEY_ID, (3, true));
    let names_key = sha(&[b"names-key:", name.as_bytes()]);
    let dir_id: [u8; 16] = sha(&[b"dir-id:", name.as_bytes()])[..16]
        .try_into()
        .unwrap();
    let key = BindingKey::new(&kmsfs::secret::DataKey::from_slice(&names_key).unwrap());
    let mut names = Vec::new();
    for (i, n) in ["report.pdf", "a link to it"].iter().enumerate() {
        let tag = key.tag(&b.header.file_id.0, &dir_id, n.as_bytes());
        let at = area_offset(DEFAULT_HEADER_LEN) as usize + 16 * (i + 1);
        b.bytes[at..at + 16].copy_from_slice(&tag);
        names.push(json!({"name": n, "tag_hex": hex::encode(tag), "slot": i + 1}));
    }
    let outcome = json!({
        "plaintext_size": plain.len(),
        "plaintext_sha256": hex::encode(sha(&[&plain])),
        "names_key_hex": hex::encode(names_key),
        "dir_id_hex": hex::encode(dir_id),
        "names": names,
    });
    let description = "Version 3, names bound: flag bit 0, and the tags of two names in slots 1 and 2 of the binding area (slot 0 free).";
    vec![(
        name.into(),
        b.bytes.clone(),
        describe(&b, description, outcome),
    )]
}
