//! [`EncryptedFile`]: positional reads and writes on one open ciphertext file, following
//! the writing rules of `docs/format.md` (fresh nonce per block write, final-block flag,
//! sealed zeros instead of holes).
//!
//! One `EncryptedFile` serves every handle on a file (the mount keeps one per inode), so
//! that handles see each other's writes; a read-write lock orders writers against readers.
//!
//! This file holds the open file itself (creating, opening, length, sync); the read path
//! is in `read.rs` and the write path in `write.rs`.
//!
//! Speed (why each choice, with its figure: `docs/performance.md`): the ciphertext of one
//! request is read or written with as few positional calls as the layout allows, through a
//! buffer that is reused (`buffers.rs`); the mount's large reads take it from the disk
//! directly (`direct.rs`); and whole blocks are sealed straight from the caller's data. A
//! large write is sealed on two cores (`sealer.rs`): the writer waits for the reply, so its
//! core would otherwise be idle. Reads are not split: readahead keeps several read requests
//! in flight, which keeps both cores busy already.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use super::direct::DirectFile;
use super::write::{fresh_nonce, seal_into, Seal};
use super::{open_header, BufferPool, FileError};
use crate::crypto::FileCipher;
use crate::format::{Header, Layout, BLOCK_PLAIN_LEN, MAX_HEADER_LEN};
use crate::secret::DataKey;

/// The most plaintext a block of any version holds: the size of a buffer for one block.
pub(super) const MAX_BS: usize = BLOCK_PLAIN_LEN as usize;
/// No block (of [`EncryptedFile::lenient`]).
pub(super) const NO_BLOCK: u64 = u64::MAX;

/// The ciphertext of the requests in flight (`buffers.rs`).
pub(super) static CIPHER_BUFFERS: BufferPool = BufferPool::new();

/// Whether `file` was opened for writing.
fn writable(file: &File) -> bool {
    rustix::fs::fcntl_getfl(file).is_ok_and(|f| {
        f.contains(rustix::fs::OFlags::RDWR) || f.contains(rustix::fs::OFlags::WRONLY)
    })
}

/// Reads and decodes the header at the start of `file`, without any key.
pub fn read_header(file: &File) -> Result<Header, FileError> {
    let mut buf = vec![0u8; 4096];
    let n = read_up_to(file, &mut buf, 0)?;
    match Header::decode(&buf[..n]) {
        Ok((header, _)) => Ok(header),
        Err(crate::format::FormatError::TruncatedHeader { needed, .. })
            if n == buf.len() && needed <= MAX_HEADER_LEN as usize =>
        {
            buf.resize(needed, 0);
            let n = read_up_to(file, &mut buf, 0)?;
            Ok(Header::decode(&buf[..n])?.0)
        }
        Err(e) => Err(e.into()),
    }
}

fn read_up_to(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// One open ciphertext file, read and written by plaintext offset.
pub struct EncryptedFile {
    pub(super) file: File,
    pub(super) cipher: FileCipher,
    header: Header,
    pub(super) layout: Layout,
    /// Plaintext length; the lock also orders writers against readers.
    pub(super) plain_len: RwLock<u64>,
    /// The file opened with `O_DIRECT`, for the mount's large reads (`read.rs`).
    pub(super) direct: DirectFile,
    /// The block that may open sealed as final or not ([`NO_BLOCK`] for none): the last
    /// block of a file whose change of length a crash cut (`length.rs`).
    pub(super) lenient: AtomicU64,
    /// Whether open found a cut change of length, and whether it is not finished yet.
    cut_found: bool,
    pub(super) cut_open: AtomicBool,
    /// Plaintext bytes `[0, synced)` were on disk at open or at the last `sync`, and a
    /// block holding synced bytes was rewritten since the last flush (`ordered.rs`).
    pub(super) synced: AtomicU64,
    pub(super) rewritten: AtomicBool,
}

impl EncryptedFile {
    /// Starts a new file in `file` (which must be empty): its header and one empty final
    /// block.
    pub fn create(file: File, cipher: FileCipher, header: Header) -> Result<Self, FileError> {
        let layout = Layout::of(&header);
        let mut bytes = header.encode()?;
        bytes.resize(layout.cipher_len(0)? as usize, 0);
        let seal = Seal {
            b: 0,
            is_final: true,
            nonce: fresh_nonce()?,
            keep: None,
        };
        seal_into(&cipher, &layout, &seal, &[], &mut bytes, 0)?;
        if layout.has_slots() {
            // Nothing to keep in a new file: its one entry is settled from the start.
            let at = layout.place(0, 0).nonce as usize;
            bytes[at + crate::format::slots::STATE_AT] |= crate::format::slots::SETTLED;
        }
        // `file` is new (made with O_EXCL), so nothing lies past what is written here.
        file.write_all_at(&bytes, 0)?;
        Ok(Self {
            file,
            cipher,
            header,
            layout,
            plain_len: RwLock::new(0),
            direct: DirectFile::default(),
            lenient: AtomicU64::new(NO_BLOCK),
            cut_found: false,
            cut_open: AtomicBool::new(false),
            synced: AtomicU64::new(0),
            rewritten: AtomicBool::new(false),
        })
    }

    /// Opens an existing file whose header was read with [`read_header`] and whose data key
    /// was unwrapped through the KMS. Checks the key commitment and the file's length. A
    /// change of length that a crash cut (version 3's length record) is taken into account
    /// and, if `file` is open for writing, finished (`length.rs`).
    pub fn open(file: File, header: Header, data_key: &DataKey) -> Result<Self, FileError> {
        let cipher = open_header(data_key, &header)?;
        let layout = Layout::of(&header);
        let size = file.metadata()?.len();
        let cut = super::length::find_cut(&file, &layout, &cipher, size)?;
        let plain_len = match cut {
            Some(c) => c.len,
            None => layout.plain_len_after_crash(size)?,
        };
        let lenient = match cut {
            Some(c) if c.last_not_final => layout.block_count(c.len) - 1,
            _ => NO_BLOCK,
        };
        let opened = Self {
            file,
            cipher,
            header,
            layout,
            plain_len: RwLock::new(plain_len),
            direct: DirectFile::default(),
            lenient: AtomicU64::new(lenient),
            cut_found: cut.is_some(),
            cut_open: AtomicBool::new(cut.is_some()),
            // What is on disk may have been fsynced by whoever wrote it.
            synced: AtomicU64::new(plain_len),
            rewritten: AtomicBool::new(false),
        };
        if cut.is_some() && writable(&opened.file) {
            if let Err(e) = opened.finish_cut(size) {
                // Reads still take the cut into account; the next open tries again.
                tracing::warn!("finishing a change of length a crash cut: {e}");
            }
        }
        Ok(opened)
    }

    /// Whether open found a change of length that a crash cut (and finished it, if the
    /// file is open for writing): the file's size may differ from what its ciphertext
    /// length said before.
    pub fn was_cut(&self) -> bool {
        self.cut_found
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Plaintext bytes of a full block of this file's format version.
    pub fn block_len(&self) -> u64 {
        self.layout.block_len()
    }

    /// Blocks the file has at its current length (at least one).
    pub fn block_count(&self) -> u64 {
        self.layout.block_count(self.len())
    }

    /// The plaintext length.
    pub fn len(&self) -> u64 {
        *self.plain_len.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte ranges [`check_slack`](Self::check_slack) requires to be zero: the slack,
    /// less a length record (and what else a cut change owns) while the change is not
    /// finished.
    pub fn slack(&self) -> Vec<(u64, u64)> {
        let cut_open = self.cut_open.load(Ordering::Relaxed);
        super::length::slack_to_check(&self.layout, self.len(), cut_open)
    }

    /// Checks that the bytes no block owns, and version 3's reserved entry bytes, are zero
    /// (`docs/format.md`), as `fsck` does; reads do not need them.
    pub fn check_slack(&self) -> Result<(), FileError> {
        let guard = self.plain_len.read().unwrap_or_else(|p| p.into_inner());
        let mut read = |start: u64, end: u64| -> Result<Vec<u8>, FileError> {
            let mut buf = vec![0u8; (end - start) as usize];
            self.file.read_exact_at(&mut buf, start)?;
            Ok(buf)
        };
        let cut_open = self.cut_open.load(Ordering::Relaxed);
        for (start, end) in super::length::slack_to_check(&self.layout, *guard, cut_open) {
            if read(start, end)?.iter().any(|&b| b != 0) {
                return Err(crate::format::FormatError::NonZeroSlack { start, end }.into());
            }
        }
        super::codec::check_entries(&self.layout, self.layout.block_count(*guard), &mut read)
    }

    /// Flushes file data (and, with `metadata`, metadata) to stable storage.
    pub fn sync(&self, metadata: bool) -> Result<(), FileError> {
        // What was written before the call is what the flush covers.
        let len = self.len();
        if metadata {
            self.file.sync_all()?;
        } else {
            self.file.sync_data()?;
        }
        self.synced_up_to(len);
        Ok(())
    }
}
