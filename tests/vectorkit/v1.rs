//! The version-1 vectors (blocks packed: `nonce || ciphertext || tag` after the one
//! before): valid files of every interesting length and header size, and damaged files,
//! each with the error a reader must give.

use kmsfs::format::DEFAULT_HEADER_LEN;

use super::{broken, build, text, valid, Vector, KEY_ID};

const H: usize = DEFAULT_HEADER_LEN as usize;
/// Bytes of a full sealed block in version 1.
const CB: usize = 4124;

/// Valid files: what reading them must give is their plaintext.
pub fn valid_files() -> Vec<Vector> {
    let long_key_id = super::long_key_id();
    vec![
        valid(
            "empty",
            "An empty file: header and one empty final block.",
            b"",
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "one-byte",
            "One byte of plaintext.",
            &text("one-byte", 1),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "block-minus-one",
            "4095 bytes: one partial block.",
            &text("block-minus-one", 4095),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "one-block",
            "Exactly 4096 bytes: one full final block.",
            &text("one-block", 4096),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "block-plus-one",
            "4097 bytes: a full block and a 1-byte final block.",
            &text("block-plus-one", 4097),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "three-blocks",
            "10000 bytes: two full blocks and a partial one.",
            &text("three-blocks", 10000),
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "zeros",
            "8192 zero bytes (as a write past the end leaves them): sealed like any data.",
            &[0u8; 8192],
            DEFAULT_HEADER_LEN,
            KEY_ID,
        ),
        valid(
            "large-header",
            "A 4096-byte header holding a 444-byte key id.",
            &text("large-header", 5000),
            4096,
            &long_key_id,
        ),
    ]
}

/// Damaged headers, and the wrong data key: each with the error a reader must give.
pub fn header_damage() -> Vec<Vector> {
    vec![
        broken(
            "bad-magic",
            "The magic bytes are wrong: not a kmsfs file.",
            100,
            |b, _| b[0] = b'X',
            "not_kmsfs",
        ),
        broken(
            "truncated-header",
            "Cut inside the header.",
            100,
            |b, _| b.truncate(500),
            "truncated_header",
        ),
        broken(
            "version-4",
            "A version-1 file labelled version 4: the commitment covers the version. (Readers \
             without version 4 refuse it as unsupported_version, what version-5 now shows.)",
            100,
            |b, _| b[9] = 4,
            "wrong_key",
        ),
        broken(
            "version-5",
            "Format version 5, which this version does not read.",
            100,
            |b, _| b[9] = 5,
            "unsupported_version",
        ),
        broken(
            "version-relabelled",
            "A version-1 file labelled version 2: the commitment covers the version.",
            100,
            |b, _| b[9] = 2,
            "wrong_key",
        ),
        broken(
            "algorithm-9",
            "An unknown algorithm id.",
            100,
            |b, _| b[11] = 9,
            "unsupported_algorithm",
        ),
        broken(
            "flags-set",
            "Flag bit 0 (names bound) set on a header committed without it: the key commitment fails (before bit 0 was defined, this read as unsupported_flags).",
            100,
            |b, _| b[15] = 1,
            "wrong_key",
        ),
        broken(
            "flags-unknown",
            "A feature flag this version does not know.",
            100,
            |b, _| b[15] = 2,
            "unsupported_flags",
        ),
        broken(
            "header-len-huge",
            "header_len beyond the 16384 maximum.",
            100,
            |b, _| b[16] = 1,
            "bad_header_len",
        ),
        broken(
            "nonzero-padding",
            "A non-zero byte in the header padding.",
            100,
            |b, _| b[H - 1] = 0xFF,
            "nonzero_padding",
        ),
        broken(
            "commitment-edited",
            "The key commitment was edited.",
            100,
            |b, _| b[36] ^= 1,
            "wrong_key",
        ),
        broken(
            "file-id-edited",
            "The file id was edited (the commitment covers it).",
            100,
            |b, _| b[20] ^= 1,
            "wrong_key",
        ),
        broken(
            "wrong-key",
            "Read with a data key that is not the file's.",
            100,
            |_, k| k[0] ^= 1,
            "wrong_key",
        ),
    ]
}

/// Damaged blocks: cut, appended, swapped, flipped, zeroed or taken from another file.
pub fn block_damage() -> Vec<Vector> {
    vec![
        broken(
            "cut-mid-block",
            "Cut inside a block's overhead: an impossible length.",
            5000,
            |b, _| b.truncate(H + CB + 10),
            "invalid_cipher_len",
        ),
        broken(
            "cut-at-block-boundary",
            "A 3-block file cut to its first 2 blocks.",
            10000,
            |b, _| b.truncate(H + 2 * CB),
            "block_auth{1}",
        ),
        broken(
            "block-appended",
            "A copy of the first block appended to a 2-block file.",
            8192,
            |b, _| {
                let first = b[H..H + CB].to_vec();
                b.extend_from_slice(&first);
            },
            "block_auth{1}",
        ),
        broken(
            "blocks-swapped",
            "Blocks 0 and 1 of a 3-block file swapped.",
            10000,
            |b, _| {
                let (b0, b1) = (b[H..H + CB].to_vec(), b[H + CB..H + 2 * CB].to_vec());
                b[H..H + CB].copy_from_slice(&b1);
                b[H + CB..H + 2 * CB].copy_from_slice(&b0);
            },
            "block_auth{0}",
        ),
        broken(
            "bit-flip",
            "One bit flipped in block 1's ciphertext.",
            10000,
            |b, _| b[H + CB + 100] ^= 0x04,
            "block_auth{1}",
        ),
        broken(
            "block-zeroed",
            "Block 0 overwritten with zeros.",
            10000,
            |b, _| b[H..H + CB].fill(0),
            "block_auth{0}",
        ),
        broken(
            "foreign-block",
            "Block 1 replaced by block 1 of another file.",
            10000,
            |b, _| {
                let other = build(
                    "foreign-block-other",
                    &text("x", 10000),
                    DEFAULT_HEADER_LEN,
                    KEY_ID,
                    1,
                );
                b[H + CB..H + 2 * CB].copy_from_slice(&other.bytes[H + CB..H + 2 * CB]);
            },
            "block_auth{1}",
        ),
        broken(
            "foreign-header",
            "Another file's header (with that file's key) on these blocks.",
            10000,
            |b, k| {
                let other = build(
                    "foreign-header-other",
                    &text("y", 10000),
                    DEFAULT_HEADER_LEN,
                    KEY_ID,
                    1,
                );
                b[..H].copy_from_slice(&other.bytes[..H]);
                *k = other.data_key;
            },
            "block_auth{0}",
        ),
    ]
}
