//! The length record of versions 3 and 4, file side (`docs/format.md`, "The length record"): written
//! around every change of a file's length, and, when open finds one that a crash left, the
//! length the cut change left, which reads take at once and the mount then finishes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::encrypted::{EncryptedFile, NO_BLOCK};
use super::slots::{open_sealed, open_with_slots};
use super::write::{fresh_nonce, seal_into, Seal};
use super::FileError;
use crate::crypto::FileCipher;
use crate::format::slots::{LengthChange, ENTRY_LEN, LENGTH_RECORD_LEN};
use crate::format::{Layout, NONCE_LEN, TAG_LEN};

/// Reads bytes at an offset of a file, exactly.
pub(super) type Read<'a> = dyn Fn(&mut [u8], u64) -> std::io::Result<()> + 'a;

/// The slack a whole-file check reads in a file of `plain_len` bytes (`Layout::slack`),
/// less, while a cut change of length is not finished, what is not slack until it is: the
/// length record, and (version 3) the entries the cut write gave blocks past the end.
pub(super) fn slack_to_check(layout: &Layout, plain_len: u64, cut_open: bool) -> Vec<(u64, u64)> {
    let mut slack = layout.slack(plain_len);
    if cut_open {
        if layout.is_split() {
            slack.pop();
        }
        let record = layout.length_record_at().unwrap_or(u64::MAX);
        slack.iter_mut().for_each(|r| r.1 = r.1.min(record));
        slack.retain(|(a, z)| a < z);
    }
    slack
}

/// What open found of a change of length that a crash cut.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Cut {
    /// The length the file is taken to have.
    pub len: u64,
    /// Whether the last block at that length is sealed as not final.
    pub last_not_final: bool,
}

/// The change of length that `file` (of `size` bytes) records, if its mac checks: the
/// length it left.
pub(super) fn find_cut(
    file: &File,
    layout: &Layout,
    cipher: &FileCipher,
    size: u64,
) -> Result<Option<Cut>, FileError> {
    find_cut_with(&|buf, at| file.read_exact_at(buf, at), layout, cipher, size)
}

/// [`find_cut`] in a file of `size` bytes that `read` reads (exactly, or `UnexpectedEof`).
pub(super) fn find_cut_with(
    read: &Read<'_>,
    layout: &Layout,
    cipher: &FileCipher,
    size: u64,
) -> Result<Option<Cut>, FileError> {
    let Some(at) = layout.length_record_at() else {
        return Ok(None);
    };
    let mut record = [0u8; LENGTH_RECORD_LEN];
    if size < at + LENGTH_RECORD_LEN as u64 {
        return Ok(None);
    }
    read(&mut record, at)?;
    let Some((change, mac)) = LengthChange::decode(&record) else {
        return Ok(None);
    };
    if !cipher.length_mac_checks(&change, &mac) {
        return Ok(None); // not kmsfs's: whole-file checks report it as slack
    }
    let to = change.to;
    let shrunk = to < change.from
        && layout.cipher_len(to)? <= size
        && last_block_opens(read, layout, cipher, to, true)?;
    if shrunk {
        // The truncate's new last block reached the file: finish the truncate.
        return Ok(Some(Cut {
            len: to,
            last_not_final: false,
        }));
    }
    let from = change.from;
    // Version 3 leaves an empty file out: its empty block's old slot opens whatever the
    // data. Version 4's one seal opens only the block it sealed.
    let old_tail_kept = to > from
        && (from > 0 || !layout.has_slots())
        && layout.cipher_len(from)? <= size
        && last_block_opens(read, layout, cipher, from, true)?;
    if old_tail_kept {
        // The growing write's rewrite of the old last block did not reach the disk, its
        // old data did (an ordered change cut by a power cut): the old length.
        return Ok(Some(Cut {
            len: from,
            last_not_final: false,
        }));
    }
    let len = layout.longest_plain_len(size)?;
    let last_not_final = !last_block_opens(read, layout, cipher, len, true)?
        && last_block_opens(read, layout, cipher, len, false)?;
    Ok(Some(Cut {
        len,
        last_not_final,
    }))
}

/// Whether the last block of `file` taken as `plain_len` bytes long opens (with either
/// slot, in version 3), sealed as final or not.
fn last_block_opens(
    read: &Read<'_>,
    layout: &Layout,
    cipher: &FileCipher,
    plain_len: u64,
    is_final: bool,
) -> Result<bool, FileError> {
    let b = layout.block_count(plain_len) - 1;
    let blen = layout.block_plain_len(plain_len, b);
    let p = layout.place(b, blen);
    // Version 3: the entry and the data; version 4: nonce, ciphertext and tag in one.
    let (entry_at, entry_len) = if layout.has_slots() {
        (p.nonce, ENTRY_LEN)
    } else {
        (p.nonce, NONCE_LEN + blen + TAG_LEN)
    };
    let mut entry = vec![0u8; entry_len];
    let mut data = vec![0u8; blen];
    let mut reads = vec![(&mut entry[..], entry_at)];
    if layout.has_slots() {
        reads.push((&mut data[..], p.data));
    }
    for (buf, at) in reads {
        match read(buf, at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    let mut out = vec![0u8; blen];
    let finality = (b, is_final, false);
    if layout.has_slots() {
        return Ok(open_with_slots(cipher, finality, &entry, &data, &mut out).is_ok());
    }
    let (nonce, rest) = entry.split_at(NONCE_LEN);
    let (data, tag) = rest.split_at(blen);
    let (nonce, tag) = (nonce.try_into().expect("12"), tag.try_into().expect("16"));
    Ok(open_sealed(cipher, finality, nonce, data, tag, &mut out).is_ok())
}

impl EncryptedFile {
    /// Versions 3 and 4, before a write or truncate that changes the length from `from` to `to`:
    /// the length record naming the change.
    /// With `durable`, the record is on disk when this returns (an ordered change,
    /// `ordered.rs`).
    pub(super) fn begin_length_change(
        &self,
        from: u64,
        to: u64,
        durable: bool,
    ) -> Result<(), FileError> {
        let Some(at) = self.layout.length_record_at().filter(|_| from != to) else {
            return Ok(());
        };
        let change = LengthChange { from, to };
        let record = change.encode(&self.cipher.length_mac(&change));
        if durable {
            return Ok(super::ordered::write_durably(&self.file, &record, at)?);
        }
        Ok(self.file.write_all_at(&record, at)?)
    }

    /// Versions 3 and 4, once the file has its new length and its entries are settled: no change
    /// under way.
    pub(super) fn end_length_change(&self) -> Result<(), FileError> {
        self.lenient.store(NO_BLOCK, Ordering::Relaxed);
        let Some(at) = self.layout.length_record_at() else {
            return Ok(());
        };
        Ok(self.file.write_all_at(&[0u8; LENGTH_RECORD_LEN], at)?)
    }

    /// Whether block `b` may open sealed as final or not: the last block of a file whose
    /// change of length was cut, until the change is finished.
    pub(super) fn may_open_either(&self, b: u64) -> bool {
        self.lenient.load(Ordering::Relaxed) == b
    }

    /// Finishes a cut change of length (the file was `size` bytes at open): re-seals the
    /// last block as final if it is not, cuts the ciphertext to the length taken, zeroes
    /// the slack after the last block, settles it and clears the record. A crash part way
    /// leaves the record, and the next open finishes again.
    pub(super) fn finish_cut(&self, size: u64) -> Result<(), FileError> {
        let guard = self.lock_write();
        let len = *guard;
        let last = self.layout.block_count(len) - 1;
        // Sealed again as final, keeping exactly the slot that opened it: the cut may have
        // left it opening with its other slot (an ordered change whose rewrite of it did
        // not reach the disk), and settling a current slot that opens nothing would make
        // the next write of the block drop the one that does.
        let blen = self.layout.block_plain_len(len, last);
        let (plain, opened) = self.read_block(last, len)?;
        self.write_blocks(last, last, blen, |buf, start| {
            let seal = Seal {
                b: last,
                is_final: true,
                nonce: fresh_nonce()?,
                keep: opened,
            };
            seal_into(&self.cipher, &self.layout, &seal, &plain, buf, start)
        })?;
        let want = self.layout.cipher_len(len)?;
        if size != want {
            self.file.set_len(want)?;
        }
        // On disk before the record goes (zeroed with the slack, or last): without the
        // record, a size not yet cut would be read with the block sealed for the cut length.
        self.flush()?;
        // Version 3: the entries a cut write gave blocks past the end.
        if let Some(&(a, z)) = self
            .layout
            .slack(len)
            .last()
            .filter(|_| self.layout.is_split())
        {
            self.file.write_all_at(&vec![0u8; (z - a) as usize], a)?;
        }
        self.settle(last, last, len)?;
        self.end_length_change()?;
        self.cut_open.store(false, Ordering::Relaxed);
        drop(guard);
        Ok(())
    }
}
