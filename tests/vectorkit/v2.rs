//! The version-2 vectors (block data on pages of its own, nonces and tags in tables of
//! 109 entries per group): valid files across a group boundary and with a large header,
//! and the damage that only this layout can suffer (table entries, slack, data pages).

use kmsfs::format::DEFAULT_HEADER_LEN;

use super::{broken_v, text, valid_v, Vector, KEY_ID};

const H: usize = DEFAULT_HEADER_LEN as usize;
/// With the default header: block 0's data page, the bytes of a page and of a table entry,
/// and group 1's table page (after group 0's 109 data pages).
const D: usize = 4096;
const P: usize = 4096;
const E: usize = 28;
const G1_TABLE: usize = D + 109 * P;

/// Valid files: what reading them must give is their plaintext.
pub fn valid_files() -> Vec<Vector> {
    let long_key_id = super::long_key_id();
    vec![
        valid_v(
            2,
            "v2-empty",
            "Version 2, empty: header, block 0's table entry, zeros to the first data page.",
            b"",
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            2,
            "v2-one-byte",
            "Version 2, one byte: its data starts the second page.",
            &text("v2-one-byte", 1),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            2,
            "v2-three-blocks",
            "Version 2, 10000 bytes: two full data pages and a partial one.",
            &text("v2-three-blocks", 10000),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            2,
            "v2-second-group",
            "Version 2, 109 blocks and 1 byte: block 109's entry starts group 1's table page.",
            &text("v2-second-group", 109 * 4096 + 1),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid_v(
            2,
            "v2-large-header",
            "Version 2, a 4096-byte header: group 0's table takes the second page.",
            &text("v2-large-header", 5000),
            4096,
            &long_key_id,
        ),
    ]
}

/// Damaged files, each with the error a reader must give: the places only version 2 has
/// (table entries, slack, data pages on their own) and its cuts.
pub fn broken_files() -> Vec<Vector> {
    vec![
        broken_v(
            2,
            "v2-cut-in-table",
            "Version 2, cut inside group 1's table page: an impossible length.",
            109 * 4096 + 1,
            |b, _| b.truncate(G1_TABLE + 100),
            "invalid_cipher_len",
        ),
        broken_v(
            2,
            "v2-cut-at-block-boundary",
            "Version 2, a 3-block file cut after block 1's data page.",
            10000,
            |b, _| b.truncate(D + 2 * P),
            "block_auth{1}",
        ),
        broken_v(
            2,
            "v2-tag-edited",
            "Version 2, one bit of block 1's tag flipped in the table.",
            10000,
            |b, _| b[H + E + 12 + 3] ^= 0x10,
            "block_auth{1}",
        ),
        broken_v(
            2,
            "v2-data-swapped",
            "Version 2, the data pages of blocks 0 and 1 swapped (table entries left).",
            10000,
            |b, _| super::swap(b, D, D + P, P),
            "block_auth{0}",
        ),
        broken_v(
            2,
            "v2-entries-swapped",
            "Version 2, the table entries of blocks 0 and 1 swapped (data left).",
            10000,
            |b, _| super::swap(b, H, H + E, E),
            "block_auth{0}",
        ),
        broken_v(
            2,
            "v2-slack-edited",
            "Version 2, a byte set in the unused end of group 0's table.",
            10000,
            |b, _| b[D - 1] = 1,
            "nonzero_slack",
        ),
        broken_v(
            2,
            "v2-block-appended",
            "Version 2, block 0 (entry and data page) copied in as a third block.",
            8192,
            |b, _| {
                let (e0, p0) = (b[H..H + E].to_vec(), b[D..D + P].to_vec());
                b[H + 2 * E..H + 3 * E].copy_from_slice(&e0);
                b.extend_from_slice(&p0);
            },
            "block_auth{1}",
        ),
    ]
}
