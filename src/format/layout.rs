//! Offset arithmetic between plaintext and ciphertext, for a given header length.
//! Pure functions of sizes: no IO and no keys, so `stat` never needs the KMS.

use super::{FormatError, BLOCK_CIPHER_LEN, BLOCK_OVERHEAD, BLOCK_PLAIN_LEN};

/// The geometry of one volume's files (all share one header length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    header_len: u64,
}

/// The part of one block that a plaintext range covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    pub block_no: u64,
    /// Offset of the range inside the block's plaintext.
    pub start_in_block: usize,
    pub len: usize,
}

impl BlockSpan {
    /// Whether the span covers the whole of a block holding `block_plain_len` bytes.
    pub fn is_whole(&self, block_plain_len: usize) -> bool {
        self.start_in_block == 0 && self.len == block_plain_len
    }
}

/// The largest plaintext size we accept, so that ciphertext offsets fit in an `i64`
/// (what `pwrite` and `off_t` take) with room for the header.
pub const MAX_PLAIN_LEN: u64 = (i64::MAX as u64 / BLOCK_CIPHER_LEN - 1) * BLOCK_PLAIN_LEN;

impl Layout {
    pub fn new(header_len: u32) -> Self {
        Self {
            header_len: u64::from(header_len),
        }
    }

    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Blocks a file of `plain_len` bytes has: at least one (an empty file has an empty
    /// final block).
    pub fn block_count(plain_len: u64) -> u64 {
        plain_len.div_ceil(BLOCK_PLAIN_LEN).max(1)
    }

    /// Plaintext bytes in block `block_no` of a file of `plain_len` bytes (0 for a block
    /// past the end).
    pub fn block_plain_len(plain_len: u64, block_no: u64) -> usize {
        let start = block_no.saturating_mul(BLOCK_PLAIN_LEN);
        plain_len.saturating_sub(start).min(BLOCK_PLAIN_LEN) as usize
    }

    /// Ciphertext size of a file of `plain_len` bytes.
    pub fn cipher_len(&self, plain_len: u64) -> Result<u64, FormatError> {
        if plain_len > MAX_PLAIN_LEN {
            return Err(FormatError::TooLarge(plain_len));
        }
        Ok(self.header_len + plain_len + BLOCK_OVERHEAD * Self::block_count(plain_len))
    }

    /// Plaintext size of a ciphertext file of `cipher_len` bytes, or why that length is
    /// impossible.
    pub fn plain_len(&self, cipher_len: u64) -> Result<u64, FormatError> {
        let invalid = FormatError::InvalidCipherLen {
            cipher_len,
            header_len: self.header_len,
        };
        let body = cipher_len
            .checked_sub(self.header_len)
            .ok_or(invalid.clone())?;
        let full = body / BLOCK_CIPHER_LEN;
        let rest = body % BLOCK_CIPHER_LEN;
        match (full, rest) {
            (0, BLOCK_OVERHEAD) => Ok(0),
            (f, 0) if f >= 1 => Ok(f * BLOCK_PLAIN_LEN),
            (f, r) if r > BLOCK_OVERHEAD => Ok(f * BLOCK_PLAIN_LEN + r - BLOCK_OVERHEAD),
            _ => Err(invalid),
        }
    }

    /// Ciphertext offset of block `block_no`.
    pub fn block_offset(&self, block_no: u64) -> u64 {
        self.header_len + block_no * BLOCK_CIPHER_LEN
    }

    /// The blocks that plaintext range `[plain_off, plain_off + len)` touches, in order.
    pub fn spans(plain_off: u64, len: usize) -> impl Iterator<Item = BlockSpan> {
        let end = plain_off.saturating_add(len as u64);
        let first = plain_off / BLOCK_PLAIN_LEN;
        let last_excl = if len == 0 {
            first
        } else {
            end.div_ceil(BLOCK_PLAIN_LEN)
        };
        (first..last_excl).map(move |block_no| {
            let block_start = block_no * BLOCK_PLAIN_LEN;
            let s = plain_off.max(block_start);
            let e = end.min(block_start + BLOCK_PLAIN_LEN);
            BlockSpan {
                block_no,
                start_in_block: (s - block_start) as usize,
                len: (e - s) as usize,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: Layout = Layout { header_len: 1024 };

    #[test]
    fn worked_examples_from_the_format_doc() {
        for (plain, cipher) in [
            (0u64, 1052u64),
            (1, 1053),
            (4095, 5147),
            (4096, 5148),
            (4097, 5177),
            (1 << 20, 1_056_768),
            ((1 << 20) + 3, 1_056_799),
            (1 << 30, 1_081_082_880),
        ] {
            assert_eq!(L.cipher_len(plain).unwrap(), cipher, "plain {plain}");
            assert_eq!(L.plain_len(cipher).unwrap(), plain, "cipher {cipher}");
        }
    }

    #[test]
    fn impossible_lengths_are_rejected() {
        // Shorter than header + empty block; mid-overhead cuts; an empty block after full ones.
        for cipher in [0, 1023, 1024, 1051, 5149, 5148 + 27, 5148 + 28] {
            assert!(
                L.plain_len(cipher).is_err(),
                "cipher {cipher} must be invalid"
            );
        }
    }

    #[test]
    fn sweep_every_length_near_block_boundaries() {
        for blocks in 0..4u64 {
            for delta in 0..BLOCK_PLAIN_LEN + 2 {
                let plain = blocks * BLOCK_PLAIN_LEN + delta;
                let cipher = L.cipher_len(plain).unwrap();
                assert_eq!(L.plain_len(cipher), Ok(plain));
                assert_eq!(
                    cipher,
                    L.block_offset(Layout::block_count(plain) - 1)
                        + BLOCK_OVERHEAD
                        + Layout::block_plain_len(plain, Layout::block_count(plain) - 1) as u64
                );
            }
        }
    }

    #[test]
    fn too_large_is_an_error_not_an_overflow() {
        assert!(L.cipher_len(u64::MAX).is_err());
        assert!(L.cipher_len(MAX_PLAIN_LEN).is_ok());
        // Huge ciphertext lengths give a size, without overflowing on the way.
        assert_eq!(
            L.plain_len(u64::MAX).unwrap(),
            (u64::MAX - 1024) / BLOCK_CIPHER_LEN * BLOCK_PLAIN_LEN
                + (u64::MAX - 1024) % BLOCK_CIPHER_LEN
                - BLOCK_OVERHEAD
        );
    }

    proptest! {
        #[test]
        fn plain_cipher_round_trip(plain in 0u64..(1 << 44), h in 128u32..16384) {
            let l = Layout::new(h);
            let c = l.cipher_len(plain).unwrap();
            prop_assert_eq!(l.plain_len(c).unwrap(), plain);
            // The map is injective, so neighbours of a valid length are other sizes or invalid.
            if let Ok(p) = l.plain_len(c + 1) { prop_assert!(p > plain); }
        }

        #[test]
        fn spans_tile_the_range(off in 0u64..(1 << 40), len in 0usize..100_000) {
            let spans: Vec<_> = Layout::spans(off, len).collect();
            prop_assert_eq!(spans.iter().map(|s| s.len).sum::<usize>(), len);
            let mut pos = off;
            for s in &spans {
                prop_assert_eq!(s.block_no * BLOCK_PLAIN_LEN + s.start_in_block as u64, pos);
                prop_assert!(s.start_in_block + s.len <= BLOCK_PLAIN_LEN as usize);
                prop_assert!(s.len > 0);
                pos += s.len as u64;
            }
        }
    }
}
