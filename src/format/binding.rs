//! The names binding area (`docs/format.md`, "Names bound to files"): the last
//! [`BINDING_AREA_LEN`] bytes of the header region of a file whose header has
//! [`FLAG_BOUND_NAMES`], holding one tag per name the file has (a hard link has several).
//! A tag is a MAC, under a key only the volume's KMS key opens, of the file id, its
//! directory's id and its plaintext name: whoever can write the ciphertext directory
//! cannot make one, so a file moved or swapped there is refused.

/// Header flag: the file's header region ends with a binding area.
pub const FLAG_BOUND_NAMES: u32 = 1;
/// Every flag this code knows.
pub const KNOWN_FLAGS: u32 = FLAG_BOUND_NAMES | super::bucket::FLAG_BUCKET_KEY;
/// Bytes of the binding area.
pub const BINDING_AREA_LEN: usize = 512;
/// Bytes of one tag.
pub const TAG_LEN: usize = 16;
/// Names one file can be bound to at once (its links).
pub const SLOTS: usize = BINDING_AREA_LEN / TAG_LEN;

/// One name's tag. All zeros marks a free slot.
pub type Tag = [u8; TAG_LEN];

/// Where the binding area of a file with this header length starts.
pub fn area_offset(header_len: u32) -> u64 {
    u64::from(header_len) - BINDING_AREA_LEN as u64
}

/// A file's binding area, as read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingArea(pub [u8; BINDING_AREA_LEN]);

impl Default for BindingArea {
    fn default() -> Self {
        Self([0; BINDING_AREA_LEN])
    }
}

impl BindingArea {
    /// The area in `bytes` (exactly [`BINDING_AREA_LEN`] of them).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    fn slot(&self, i: usize) -> &[u8] {
        &self.0[i * TAG_LEN..(i + 1) * TAG_LEN]
    }

    /// The slot holding `tag`, if any.
    pub fn find(&self, tag: &Tag) -> Option<usize> {
        (0..SLOTS).find(|&i| self.slot(i) == tag.as_slice())
    }

    /// The first free slot, if any.
    pub fn free_slot(&self) -> Option<usize> {
        (0..SLOTS).find(|&i| self.slot(i).iter().all(|&b| b == 0))
    }

    /// How many names the file is bound to.
    pub fn count(&self) -> usize {
        SLOTS
            - (0..SLOTS)
                .filter(|&i| self.slot(i).iter().all(|&b| b == 0))
                .count()
    }

    /// Byte offset of slot `i` from the start of the area.
    pub fn slot_offset(i: usize) -> u64 {
        (i * TAG_LEN) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_found_freed_and_counted() {
        let mut a = BindingArea::default();
        assert_eq!((a.free_slot(), a.count()), (Some(0), 0));
        let tag = [7u8; TAG_LEN];
        a.0[TAG_LEN..2 * TAG_LEN].copy_from_slice(&tag);
        assert_eq!(a.find(&tag), Some(1));
        assert_eq!((a.free_slot(), a.count()), (Some(0), 1));
        assert_eq!(a.find(&[8u8; TAG_LEN]), None);
        let full = BindingArea([1; BINDING_AREA_LEN]);
        assert_eq!((full.free_slot(), full.count()), (None, SLOTS));
        assert_eq!(area_offset(1024), 512);
        assert!(BindingArea::from_bytes(&[0; 10]).is_none());
    }
}
