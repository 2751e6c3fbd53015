//! Version 3's table entries: two nonce-and-tag slots and a state byte per block
//! (`docs/format.md`, "Layout, version 3"). Which slot opens a block is found by trying
//! (`file`); this module only says where the parts of an entry lie.

use super::{NONCE_LEN, TAG_LEN};

/// Bytes of a version-3 entry.
pub const ENTRY_LEN: usize = 64;
/// Bytes of one slot (a nonce and a tag).
pub const SLOT_LEN: usize = NONCE_LEN + TAG_LEN;
/// Offset of the state byte in an entry.
pub const STATE_AT: usize = 2 * SLOT_LEN;
/// State bit: which slot is current.
pub const CURRENT: u8 = 1;
/// State bit: the block's data was written after its current slot, at the file's length.
pub const SETTLED: u8 = 2;

/// Offsets, within an entry, of slot `slot`'s nonce and tag.
pub fn slot_at(slot: usize) -> (usize, usize) {
    debug_assert!(slot < 2);
    (slot * SLOT_LEN, slot * SLOT_LEN + NONCE_LEN)
}

/// The current slot named by an entry's state byte.
pub fn current(state: u8) -> usize {
    usize::from(state & CURRENT)
}

/// Whether an entry's state byte says it is settled.
pub fn settled(state: u8) -> bool {
    state & SETTLED != 0
}

/// Whether the bytes of an entry that mean nothing (state bits 2-7, the last 7 bytes) are
/// zero, as writers keep them.
pub fn reserved_zero(entry: &[u8]) -> bool {
    entry[STATE_AT] & !(CURRENT | SETTLED) == 0 && entry[STATE_AT + 1..].iter().all(|&b| b == 0)
}

/// Bytes of version 3's length record (`docs/format.md`, "The length record").
pub const LENGTH_RECORD_LEN: usize = 64;
/// Offset of the record's mac.
const LENGTH_MAC_AT: usize = 32;

/// A change of a file's length under way, as its length record names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthChange {
    pub from: u64,
    pub to: u64,
}

impl LengthChange {
    /// The record's bytes, with the change's `mac`.
    pub fn encode(&self, mac: &[u8; 32]) -> [u8; LENGTH_RECORD_LEN] {
        let mut out = [0u8; LENGTH_RECORD_LEN];
        out[..8].copy_from_slice(&self.from.to_be_bytes());
        out[8..16].copy_from_slice(&self.to.to_be_bytes());
        out[LENGTH_MAC_AT..].copy_from_slice(mac);
        out
    }

    /// The change a record names and its mac; `None` for all zeros (no change under way)
    /// and for a record whose zero bytes are not zero (which no mac can make valid).
    pub fn decode(record: &[u8; LENGTH_RECORD_LEN]) -> Option<(LengthChange, [u8; 32])> {
        if record.iter().all(|&b| b == 0) || record[16..LENGTH_MAC_AT].iter().any(|&b| b != 0) {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(record[i..i + 8].try_into().expect("8 bytes"));
        let change = LengthChange {
            from: u64_at(0),
            to: u64_at(8),
        };
        Some((
            change,
            record[LENGTH_MAC_AT..].try_into().expect("32 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_record_round_trips_and_zeros_mean_none() {
        let change = LengthChange {
            from: 5,
            to: 1 << 40,
        };
        let rec = change.encode(&[7u8; 32]);
        assert_eq!(LengthChange::decode(&rec), Some((change, [7u8; 32])));
        assert_eq!(LengthChange::decode(&[0u8; LENGTH_RECORD_LEN]), None);
        let mut bad = rec;
        bad[20] = 1;
        assert_eq!(LengthChange::decode(&bad), None);
    }

    #[test]
    fn the_parts_of_an_entry_do_not_overlap_and_fill_it() {
        let (n0, t0) = slot_at(0);
        let (n1, t1) = slot_at(1);
        assert_eq!((n0, t0, n1, t1, STATE_AT), (0, 12, 28, 40, 56));
        assert!(t1 + TAG_LEN <= STATE_AT && STATE_AT < ENTRY_LEN);
        assert_eq!(current(CURRENT | SETTLED), 1);
        assert!(settled(SETTLED) && !settled(CURRENT));
        let mut e = [0u8; ENTRY_LEN];
        e[STATE_AT] = CURRENT | SETTLED;
        assert!(reserved_zero(&e));
        e[63] = 1;
        assert!(!reserved_zero(&e));
    }
}
