//! Whole ciphertext files held in memory: building one from plaintext and reading one
//! back. Used by the test vectors and small tools; [`super::EncryptedFile`] does the same
//! checks in the same order (header syntax, key commitment, length, each block) on files.

use super::slots::open_with_slots;
use super::{open_header, FileError};
use crate::crypto::FileCipher;
use crate::format::{slots, Header, Layout, NONCE_LEN, TAG_LEN};
use crate::secret::DataKey;

/// Encrypts a whole plaintext into a ciphertext file with random nonces.
pub fn encrypt_bytes(
    cipher: &FileCipher,
    header: &Header,
    plain: &[u8],
) -> Result<Vec<u8>, FileError> {
    let mut nonce_err = false;
    let out = encrypt_bytes_with_nonces(cipher, header, plain, &mut || {
        let mut n = [0u8; 12];
        nonce_err |= getrandom::fill(&mut n).is_err();
        n
    })?;
    if nonce_err {
        return Err(FileError::Random);
    }
    Ok(out)
}

/// [`encrypt_bytes`] with caller-chosen nonces. Only for reproducible test vectors.
#[doc(hidden)]
pub fn encrypt_bytes_with_nonces(
    cipher: &FileCipher,
    header: &Header,
    plain: &[u8],
    next_nonce: &mut dyn FnMut() -> [u8; 12],
) -> Result<Vec<u8>, FileError> {
    let layout = Layout::of(header);
    let plain_len = plain.len() as u64;
    let mut out = header.encode()?;
    out.resize(layout.cipher_len(plain_len)? as usize, 0);
    let blocks = layout.block_count(plain_len);
    for block_no in 0..blocks {
        let start = (block_no * layout.block_len()) as usize;
        let len = layout.block_plain_len(plain_len, block_no);
        let p = layout.place(block_no, len);
        let nonce = next_nonce();
        let tag = cipher
            .seal_parts(
                block_no,
                block_no + 1 == blocks,
                &plain[start..start + len],
                &nonce,
                &mut out[p.data as usize..p.data as usize + len],
            )
            .map_err(|_| FileError::Random)?;
        out[p.nonce as usize..p.nonce as usize + NONCE_LEN].copy_from_slice(&nonce);
        out[p.tag as usize..p.tag as usize + TAG_LEN].copy_from_slice(&tag);
        if layout.has_slots() {
            // Version 3: slot 0 current, settled (the nonce and tag above are slot 0's).
            out[p.nonce as usize + slots::STATE_AT] = slots::SETTLED;
        }
    }
    Ok(out)
}

/// Reads a whole ciphertext file back into plaintext, checking everything the format
/// authenticates. Returns nothing on any failure: never partial or unauthenticated bytes.
pub fn decrypt_bytes(data_key: &DataKey, file: &[u8]) -> Result<Vec<u8>, FileError> {
    let (header, _) = Header::decode(file)?;
    let cipher = open_header(data_key, &header)?;
    let layout = Layout::of(&header);
    let read = |buf: &mut [u8], at: u64| match file.get(at as usize..at as usize + buf.len()) {
        Some(bytes) => {
            buf.copy_from_slice(bytes);
            Ok(())
        }
        None => Err(std::io::ErrorKind::UnexpectedEof.into()),
    };
    // A change of length a crash cut (version 3's length record): `length.rs`.
    let cut = super::length::find_cut_with(&read, &layout, &cipher, file.len() as u64)?;
    let plain_len = match cut {
        Some(c) => c.len,
        None => layout.plain_len_after_crash(file.len() as u64)?,
    };
    let lenient = cut
        .filter(|c| c.last_not_final)
        .map(|c| layout.block_count(c.len) - 1);
    let mut plain = vec![0u8; plain_len as usize];
    let blocks = layout.block_count(plain_len);
    for block_no in 0..blocks {
        let len = layout.block_plain_len(plain_len, block_no);
        let p = layout.place(block_no, len);
        let start = (block_no * layout.block_len()) as usize;
        let (n, d, t) = (p.nonce as usize, p.data as usize, p.tag as usize);
        let is_final = block_no + 1 == blocks;
        if layout.has_slots() {
            let entry = &file[n..n + slots::ENTRY_LEN];
            let out = &mut plain[start..start + len];
            open_with_slots(
                &cipher,
                (block_no, is_final, lenient == Some(block_no)),
                entry,
                &file[d..d + len],
                out,
            )?;
            continue;
        }
        super::slots::open_sealed(
            &cipher,
            (block_no, is_final, lenient == Some(block_no)),
            file[n..n + NONCE_LEN].try_into().expect("12 bytes"),
            &file[d..d + len],
            file[t..t + TAG_LEN].try_into().expect("16 bytes"),
            &mut plain[start..start + len],
        )?;
    }
    // Last, so that a cut file is reported by its blocks rather than by the table
    // entries it left behind.
    for (start, end) in super::length::slack_to_check(&layout, plain_len, cut.is_some()) {
        if file[start as usize..end as usize].iter().any(|&b| b != 0) {
            return Err(crate::format::FormatError::NonZeroSlack { start, end }.into());
        }
    }
    check_entries(&layout, blocks, &mut |a, z| {
        Ok(file[a as usize..z as usize].to_vec())
    })?;
    Ok(plain)
}

/// Version 3: checks that the reserved parts of the entries of a file's `blocks` blocks
/// are zero, reading the entries of each group with `read(start, end)`.
pub(super) fn check_entries(
    layout: &Layout,
    blocks: u64,
    read: &mut dyn FnMut(u64, u64) -> Result<Vec<u8>, FileError>,
) -> Result<(), FileError> {
    if !layout.has_slots() {
        return Ok(());
    }
    let k = layout.group_blocks();
    for g in 0..blocks.div_ceil(k) {
        let used = (blocks - g * k).min(k);
        let start = layout.place(g * k, 0).nonce;
        let entries = read(start, start + used * slots::ENTRY_LEN as u64)?;
        for (i, entry) in entries.chunks(slots::ENTRY_LEN).enumerate() {
            if !slots::reserved_zero(entry) {
                let at = start + (i * slots::ENTRY_LEN + slots::STATE_AT) as u64;
                let end = at + (slots::ENTRY_LEN - slots::STATE_AT) as u64;
                return Err(crate::format::FormatError::NonZeroSlack { start: at, end }.into());
            }
        }
    }
    Ok(())
}
