//! The only home of plaintext key bytes.
//!
//! Every data key that the KMS hands back, and every secret derived from one before it
//! becomes a cipher, lives in a [`DataKey`] or a [`SecretBytes`]. Both keep their bytes in
//! a page of their own that is locked into RAM (best effort: `mlock` may fail under a low
//! `RLIMIT_MEMLOCK`, see [`memory_lock_failures`]), excluded from core dumps
//! (`MADV_DONTDUMP`), and overwritten with zeros before it is unlocked and freed.
//! Neither type derives `Clone`, `Copy` or `Debug`; their `Debug` prints `[REDACTED]`.
//!
//! What is *not* protected, so that nobody relies on it:
//! - Bytes copied out through [`DataKey::expose_secret`]: callers must keep such copies
//!   short-lived (the `crypto` module turns them into a cipher at once).
//! - Expanded AES round keys inside cipher objects in `crypto`, and transient copies the
//!   compiler or the HTTP stack may leave in registers, stack frames or socket buffers.
//! - A root attacker on the running machine, who can read process memory regardless.
//! - Swap when `mlock` failed; hibernation images.
//!
//! [`protect_process`] keeps the whole process out of core dumps and away from ptrace by
//! its own user; every kmsfs command calls it first.

#[allow(unsafe_code)]
mod locked;

use std::fmt;

use subtle::ConstantTimeEq;

use locked::LockedPage;
pub use locked::{key_page_budget, memory_lock_failures};

/// Makes this process non-dumpable (no core file, no ptrace or /proc/PID/mem by the same
/// user, only by root) and sets its core-file limit to zero, before any key is held.
/// Failures are logged, not fatal: the keys are still locked and wiped.
pub fn protect_process() {
    use rustix::process::{setrlimit, Resource, Rlimit};
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!("cannot mark the process non-dumpable (its memory may reach a core dump or a debugger): {e}");
    }
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, none) {
        tracing::warn!("cannot turn off core dumps: {e}");
    }
}

/// Length in bytes of a data key (AES-256, the `AES_256` key spec of AWS KMS).
pub const DATA_KEY_LEN: usize = 32;

/// Largest secret a [`SecretBytes`] can hold: one page (AWS KMS `Encrypt` accepts at
/// most 4096 bytes of plaintext).
pub const SECRET_MAX_LEN: usize = locked::PAGE_LEN;

/// Errors building a secret from bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a data key must be {expected} bytes, got {got}")]
    BadKeyLength { expected: usize, got: usize },
    #[error("a secret may be at most {max} bytes, got {got}")]
    TooLong { max: usize, got: usize },
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// A 256-bit plaintext data key.
pub struct DataKey {
    page: LockedPage,
}

impl DataKey {
    /// Copies `bytes` into locked memory. The caller should zeroize its own copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() != DATA_KEY_LEN {
            return Err(SecretError::BadKeyLength {
                expected: DATA_KEY_LEN,
                got: bytes.len(),
            });
        }
        let mut page = LockedPage::new();
        page.bytes_mut()[..DATA_KEY_LEN].copy_from_slice(bytes);
        Ok(Self { page })
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<Self, SecretError> {
        let mut page = LockedPage::new();
        getrandom::fill(&mut page.bytes_mut()[..DATA_KEY_LEN])
            .map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(Self { page })
    }

    /// The key bytes. Only `crypto` and the KMS backends call this.
    pub fn expose_secret(&self) -> &[u8; DATA_KEY_LEN] {
        self.page.bytes()[..DATA_KEY_LEN]
            .try_into()
            .expect("page holds a whole key")
    }

    /// Whether two keys are the same, compared in constant time (`subtle`), so that how
    /// long the answer takes says nothing about where two keys first differ.
    pub fn same_as(&self, other: &DataKey) -> bool {
        let (a, b) = (self.expose_secret(), other.expose_secret());
        a[..].ct_eq(&b[..]).into()
    }

    /// A second locked copy, for the rare places that must hand a key on while keeping it.
    pub fn duplicate(&self) -> Self {
        Self::from_slice(self.expose_secret()).expect("length is right")
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

/// A short secret of up to [`SECRET_MAX_LEN`] bytes (for KMS `Encrypt` plaintexts and
/// data keys of other lengths).
pub struct SecretBytes {
    page: LockedPage,
    len: usize,
}

impl SecretBytes {
    /// Copies `bytes` into locked memory. The caller should zeroize its own copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() > SECRET_MAX_LEN {
            return Err(SecretError::TooLong {
                max: SECRET_MAX_LEN,
                got: bytes.len(),
            });
        }
        let mut page = LockedPage::new();
        page.bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            page,
            len: bytes.len(),
        })
    }

    /// `len` fresh random bytes.
    pub fn generate(len: usize) -> Result<Self, SecretError> {
        if len > SECRET_MAX_LEN {
            return Err(SecretError::TooLong {
                max: SECRET_MAX_LEN,
                got: len,
            });
        }
        let mut page = LockedPage::new();
        getrandom::fill(&mut page.bytes_mut()[..len])
            .map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(Self { page, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The secret bytes. Only `crypto` and the KMS backends call this.
    pub fn expose_secret(&self) -> &[u8] {
        &self.page.bytes()[..self.len]
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED], {} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let key = DataKey::from_slice(&[0x41; 32]).unwrap();
        let shown = format!("{key:?} {:?}", SecretBytes::from_slice(b"hunter2").unwrap());
        assert!(shown.contains("[REDACTED]"), "{shown}");
        assert!(!shown.contains("41"), "{shown}");
        assert!(!shown.contains("65"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn wrong_key_length_is_refused() {
        assert_eq!(
            DataKey::from_slice(&[1; 16]).unwrap_err(),
            SecretError::BadKeyLength {
                expected: 32,
                got: 16
            }
        );
        assert!(SecretBytes::from_slice(&vec![0; SECRET_MAX_LEN + 1]).is_err());
    }

    #[test]
    fn generated_keys_differ_and_round_trip() {
        let a = DataKey::generate().unwrap();
        let b = DataKey::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        let c = a.duplicate();
        assert_eq!(a.expose_secret(), c.expose_secret());
        assert!(a.same_as(&c) && !a.same_as(&b));
        let mut last_differs = *a.expose_secret();
        last_differs[DATA_KEY_LEN - 1] ^= 1;
        assert!(!a.same_as(&DataKey::from_slice(&last_differs).unwrap()));
        let s = SecretBytes::from_slice(b"abc").unwrap();
        assert_eq!(s.expose_secret(), b"abc");
        assert_eq!(SecretBytes::generate(100).unwrap().len(), 100);
    }
}
