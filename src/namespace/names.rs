//! The names ciphers: plaintext names <-> on-disk names for one directory, symlink
//! targets and xattr values, for a volume with encrypted or plaintext names
//! (`docs/format.md`, "Names"). Pure: no IO; the rest of `namespace` does the IO.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::crypto::{
    BindingKey, NameCipher, RecordKey, ValueCipher, LABEL_SYMLINK_KEY, LABEL_XATTR_KEY,
};
use crate::format::names::{
    decode_name, encode_name, is_long_name, long_name_for, pad_name, symlink_plain_len, unpad_name,
    DIR_ID_NAME, DIR_ID_NAME_PREFIX, LONG_NAME_PREFIX, LONG_NAME_SUFFIX, MAX_PLAIN_NAME,
    MAX_SHORT_ENCODED,
};
use crate::secret::DataKey;

/// File name of the volume configuration at the top of a ciphertext directory.
pub const CONFIG_NAME: &str = "kmsfs.conf";

/// Longest symlink target accepted with encrypted names: its sealed, encoded form must stay
/// within the 4095 bytes Linux stores for a symlink.
pub const MAX_SYMLINK_TARGET: usize = 4095 * 3 / 4 - 28;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name too long")]
    TooLong,
    #[error("the encrypted name does not decrypt (tampered, or not made by this volume)")]
    Undecryptable,
    #[error("a name kmsfs keeps for itself")]
    Reserved,
}

enum Mode {
    Plaintext,
    Encrypted {
        key: DataKey,
        symlinks: Box<ValueCipher>,
        xattrs: Box<ValueCipher>,
    },
}

pub struct Names {
    mode: Mode,
    /// Where names are bound to files: the key of their tags.
    binding: Option<BindingKey>,
    /// Where the volume has a names key: the key that authenticates kmsfs's own records
    /// in the ciphertext directory (rekey's journal).
    records: Option<RecordKey>,
}

/// One directory's name cipher (none with plaintext names). The mount caches it per
/// directory inode; it never changes, because the directory id moves with the directory.
pub struct DirNames {
    cipher: Option<NameCipher>,
    dir_id: Option<[u8; 16]>,
    /// The volume's top directory, where the configuration lives.
    at_root: bool,
}

impl DirNames {
    pub fn dir_id(&self) -> Option<&[u8; 16]> {
        self.dir_id.as_ref()
    }

    pub fn at_root(&self) -> bool {
        self.at_root
    }
}

/// Where a plaintext name lives on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CipherName {
    /// The entry's name in the ciphertext directory.
    pub on_disk: OsString,
    /// For a long name: the full encoded name, kept in its long-name file.
    pub long: Option<String>,
}

impl CipherName {
    /// The name of its long-name file, for a long name.
    pub fn long_name_file(&self) -> Option<OsString> {
        self.long.as_ref().map(|_| long_name_file_of(&self.on_disk))
    }
}

/// The long-name file (`on_disk` + ".name") holding a long name's full encoded form.
pub fn long_name_file_of(on_disk: &OsStr) -> OsString {
    let mut s = on_disk.to_owned();
    s.push(LONG_NAME_SUFFIX);
    s
}

impl Names {
    pub fn plaintext() -> Self {
        Self {
            mode: Mode::Plaintext,
            binding: None,
            records: None,
        }
    }

    pub fn encrypted(key: DataKey) -> Self {
        let symlinks = Box::new(ValueCipher::new(&key, LABEL_SYMLINK_KEY));
        let xattrs = Box::new(ValueCipher::new(&key, LABEL_XATTR_KEY));
        Self {
            mode: Mode::Encrypted {
                key,
                symlinks,
                xattrs,
            },
            binding: None,
            records: None,
        }
    }

    /// The same ciphers, with kmsfs's own records authenticated under `records`.
    pub fn with_record_key(mut self, records: Option<RecordKey>) -> Self {
        self.records = records;
        self
    }

    /// The MAC of one of kmsfs's own records, where the volume has a names key.
    pub fn record_mac(&self, record: &[u8]) -> Option<[u8; 32]> {
        self.records.as_ref().map(|k| k.mac(record))
    }

    /// The same ciphers, with names bound to files under `binding` where it is given.
    pub fn with_binding(mut self, binding: Option<BindingKey>) -> Self {
        self.binding = binding;
        self
    }

    /// The key binding names to files, on a volume whose names are bound.
    pub fn binding(&self) -> Option<&BindingKey> {
        self.binding.as_ref()
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self.mode, Mode::Encrypted { .. })
    }

    /// Whether every directory holds a record with its id (`docs/format.md`, "The
    /// per-directory record"): with encrypted names, and where names are bound.
    pub fn has_records(&self) -> bool {
        self.is_encrypted() || self.binding.is_some()
    }

    /// The name cipher of the directory with this id (`None` with plaintext names);
    /// `at_root` for the volume's top directory.
    pub fn for_dir(&self, dir_id: Option<[u8; 16]>, at_root: bool) -> DirNames {
        let cipher = match (&self.mode, &dir_id) {
            (Mode::Encrypted { key, .. }, Some(id)) => Some(NameCipher::new(key, id)),
            _ => None,
        };
        DirNames {
            cipher,
            dir_id,
            at_root,
        }
    }

    /// Whether an on-disk entry belongs to kmsfs itself and never shows in the mount.
    pub fn is_internal(&self, on_disk: &OsStr, at_root: bool) -> bool {
        is_internal(on_disk, at_root, self.has_records())
    }

    /// The on-disk name for `plain` in `dir`.
    pub fn encrypt(&self, dir: &DirNames, plain: &OsStr) -> Result<CipherName, NameError> {
        let bytes = plain.as_bytes();
        if bytes.len() > MAX_PLAIN_NAME {
            return Err(NameError::TooLong);
        }
        let Some(cipher) = &dir.cipher else {
            return Ok(CipherName {
                on_disk: plain.to_owned(),
                long: None,
            });
        };
        let encoded = encode_name(&cipher.seal(&pad_name(bytes)));
        if encoded.len() <= MAX_SHORT_ENCODED {
            return Ok(CipherName {
                on_disk: encoded.into(),
                long: None,
            });
        }
        Ok(CipherName {
            on_disk: long_name_for(&encoded).into(),
            long: Some(encoded),
        })
    }

    /// Whether an on-disk name is a long-name stand-in whose full form is in its
    /// long-name file.
    pub fn needs_long_name_file(&self, on_disk: &OsStr) -> bool {
        self.is_encrypted() && on_disk.to_str().is_some_and(is_long_name)
    }

    /// The plaintext name of an on-disk entry; `long_name` is the content of its long-name
    /// file when [`needs_long_name_file`](Self::needs_long_name_file) said so.
    pub fn decrypt(
        &self,
        dir: &DirNames,
        on_disk: &OsStr,
        long_name: Option<&[u8]>,
    ) -> Result<OsString, NameError> {
        let Some(cipher) = &dir.cipher else {
            return Ok(on_disk.to_owned());
        };
        let encoded = match long_name {
            Some(full) => {
                let full = std::str::from_utf8(full).map_err(|_| NameError::Undecryptable)?;
                // The stand-in must be the hash of what the long-name file says.
                if long_name_for(full).as_bytes() != on_disk.as_bytes() {
                    return Err(NameError::Undecryptable);
                }
                full.to_owned()
            }
            None => on_disk.to_str().ok_or(NameError::Undecryptable)?.to_owned(),
        };
        let sealed = decode_name(&encoded).ok_or(NameError::Undecryptable)?;
        let padded = cipher.open(&sealed).map_err(|_| NameError::Undecryptable)?;
        let name = unpad_name(&padded).ok_or(NameError::Undecryptable)?;
        if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
            return Err(NameError::Undecryptable);
        }
        Ok(OsString::from_vec(name.to_vec()))
    }

    /// What to store as a symlink's target.
    pub fn seal_symlink(&self, target: &[u8]) -> Result<Vec<u8>, NameError> {
        match &self.mode {
            Mode::Plaintext => Ok(target.to_vec()),
            Mode::Encrypted { symlinks, .. } => {
                if target.len() > MAX_SYMLINK_TARGET {
                    return Err(NameError::TooLong);
                }
                let sealed = symlinks
                    .seal(b"", target)
                    .map_err(|_| NameError::Undecryptable)?;
                Ok(encode_name(&sealed).into_bytes())
            }
        }
    }

    pub fn open_symlink(&self, stored: &[u8]) -> Result<Vec<u8>, NameError> {
        match &self.mode {
            Mode::Plaintext => Ok(stored.to_vec()),
            Mode::Encrypted { symlinks, .. } => {
                let s = std::str::from_utf8(stored).map_err(|_| NameError::Undecryptable)?;
                let sealed = decode_name(s).ok_or(NameError::Undecryptable)?;
                symlinks
                    .open(b"", &sealed)
                    .map_err(|_| NameError::Undecryptable)
            }
        }
    }

    /// A symlink's plaintext target length from its stored length (for `stat`).
    pub fn symlink_len(&self, stored_len: u64) -> u64 {
        match self.mode {
            Mode::Plaintext => stored_len,
            Mode::Encrypted { .. } => symlink_plain_len(stored_len),
        }
    }

    /// Whether this xattr's value is encrypted: `user.` and `trusted.` are; `system.`
    /// (ACLs) and `security.` (labels) must stay readable by the kernel.
    pub fn xattr_encrypted(&self, name: &OsStr) -> bool {
        self.is_encrypted()
            && (name.as_bytes().starts_with(b"user.") || name.as_bytes().starts_with(b"trusted."))
    }

    fn xattr_aad(binding: &[u8], name: &OsStr) -> Vec<u8> {
        let mut aad = (binding.len() as u32).to_be_bytes().to_vec();
        aad.extend_from_slice(binding);
        aad.extend_from_slice(name.as_bytes());
        aad
    }

    /// What to store as an xattr's value. `binding` names the file it belongs to (its
    /// file id, or a directory's id), so a value copied to another file does not open.
    pub fn seal_xattr(
        &self,
        binding: &[u8],
        name: &OsStr,
        value: &[u8],
    ) -> Result<Vec<u8>, NameError> {
        match &self.mode {
            Mode::Encrypted { xattrs, .. } if self.xattr_encrypted(name) => xattrs
                .seal(&Self::xattr_aad(binding, name), value)
                .map_err(|_| NameError::Undecryptable),
            _ => Ok(value.to_vec()),
        }
    }

    pub fn open_xattr(
        &self,
        binding: &[u8],
        name: &OsStr,
        stored: &[u8],
    ) -> Result<Vec<u8>, NameError> {
        match &self.mode {
            Mode::Encrypted { xattrs, .. } if self.xattr_encrypted(name) => xattrs
                .open(&Self::xattr_aad(binding, name), stored)
                .map_err(|_| NameError::Undecryptable),
            _ => Ok(stored.to_vec()),
        }
    }

    /// Bytes an xattr value grows by when stored.
    pub fn xattr_overhead(&self, name: &OsStr) -> usize {
        if self.xattr_encrypted(name) {
            28
        } else {
            0
        }
    }
}

/// Whether an on-disk entry belongs to kmsfs itself (on a volume whose directories hold
/// `records`, or not) and never shows in the mount; needs no names key.
pub fn is_internal(on_disk: &OsStr, at_root: bool, records: bool) -> bool {
    let b = on_disk.as_bytes();
    // Work files of kmsfs's own tools (`.kmsfs-tmp-*.tmp`, journals), in any directory.
    if b.starts_with(b".kmsfs-") {
        return true;
    }
    let config = at_root
        && (b == CONFIG_NAME.as_bytes()
            || (b.starts_with(b".")
                && b.ends_with(b".tmp")
                && b[1..].starts_with(CONFIG_NAME.as_bytes())));
    config
        || (records
            && (b == DIR_ID_NAME.as_bytes()
                || b.starts_with(DIR_ID_NAME_PREFIX.as_bytes())
                || (b.starts_with(LONG_NAME_PREFIX.as_bytes())
                    && b.ends_with(LONG_NAME_SUFFIX.as_bytes()))))
}

/// A fresh random directory id.
pub fn new_dir_id() -> Result<[u8; 16], getrandom::Error> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::encrypted(DataKey::from_slice(&[9; 32]).unwrap())
    }

    #[test]
    fn short_and_long_names_round_trip() {
        let n = names();
        let dir = n.for_dir(Some([1; 16]), false);
        for len in [1usize, 100, 175, 176, 200, 255] {
            let plain = OsString::from("é".repeat(len / 2) + &"x".repeat(len % 2));
            let c = n.encrypt(&dir, &plain).unwrap();
            assert!(c.on_disk.len() <= 255, "{len}");
            let long_name = c.long.as_ref().map(|l| l.as_bytes().to_vec());
            assert_eq!(c.long.is_some(), n.needs_long_name_file(&c.on_disk));
            assert_eq!(
                n.decrypt(&dir, &c.on_disk, long_name.as_deref()).unwrap(),
                plain
            );
        }
        assert_eq!(
            n.encrypt(&dir, OsStr::new(&"x".repeat(256))),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn tampered_foreign_and_moved_names_do_not_decrypt() {
        let n = names();
        let (d1, d2) = (
            n.for_dir(Some([1; 16]), false),
            n.for_dir(Some([2; 16]), false),
        );
        let c = n.encrypt(&d1, OsStr::new("secret.txt")).unwrap();
        assert_ne!(c, n.encrypt(&d2, OsStr::new("secret.txt")).unwrap());
        assert!(n.decrypt(&d2, &c.on_disk, None).is_err());
        assert!(n
            .decrypt(&d1, OsStr::new("dropped-in-by-someone"), None)
            .is_err());
        let mut t = c.on_disk.clone().into_vec();
        t[5] = if t[5] == b'A' { b'B' } else { b'A' };
        assert!(n.decrypt(&d1, &OsString::from_vec(t), None).is_err());
        // A long name whose long-name file was swapped for another name's.
        let long1 = n.encrypt(&d1, OsStr::new(&"a".repeat(250))).unwrap();
        let long2 = n.encrypt(&d1, OsStr::new(&"b".repeat(250))).unwrap();
        assert!(n
            .decrypt(
                &d1,
                &long1.on_disk,
                long2.long.as_deref().map(str::as_bytes)
            )
            .is_err());
    }

    #[test]
    fn internal_names_and_plaintext_mode() {
        let n = names();
        assert!(n.is_internal(OsStr::new("kmsfs.dirid"), false));
        assert!(n.is_internal(OsStr::new("kmsfs.conf"), true));
        assert!(!n.is_internal(OsStr::new("kmsfs.conf"), false));
        assert!(n.is_internal(OsStr::new("kmsfs.long.abc.name"), false));
        let p = Names::plaintext();
        assert!(!p.is_internal(OsStr::new("kmsfs.dirid"), false));
        let d = p.for_dir(None, true);
        let c = p.encrypt(&d, OsStr::new("plain.txt")).unwrap();
        assert_eq!(c.on_disk, "plain.txt");
        assert_eq!(p.seal_symlink(b"target").unwrap(), b"target");
    }

    #[test]
    fn symlinks_and_xattrs() {
        let n = names();
        let stored = n.seal_symlink(b"../some/where").unwrap();
        assert!(!stored.windows(4).any(|w| w == b"some"));
        assert_eq!(n.open_symlink(&stored).unwrap(), b"../some/where");
        assert_eq!(n.symlink_len(stored.len() as u64), 13);
        assert!(n.seal_symlink(&vec![b'a'; MAX_SYMLINK_TARGET + 1]).is_err());
        let v = n
            .seal_xattr(b"file-1", OsStr::new("user.color"), b"blue")
            .unwrap();
        assert_eq!(v.len(), 4 + n.xattr_overhead(OsStr::new("user.color")));
        assert_eq!(
            n.open_xattr(b"file-1", OsStr::new("user.color"), &v)
                .unwrap(),
            b"blue"
        );
        assert!(n
            .open_xattr(b"file-2", OsStr::new("user.color"), &v)
            .is_err());
        assert!(n
            .open_xattr(b"file-1", OsStr::new("user.other"), &v)
            .is_err());
        assert_eq!(
            n.seal_xattr(b"f", OsStr::new("system.posix_acl_access"), b"acl")
                .unwrap(),
            b"acl"
        );
    }
}
