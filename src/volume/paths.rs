//! Mapping whole paths between the plaintext view and the ciphertext directory, for
//! operators (`kmsfs path encrypt|decrypt`) and offline tools. Reads each directory's
//! record on the way down; needs the names key (so the KMS) for encrypted names.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use super::{sidecar_of, Volume, VolumeError};
use crate::format::names::{decode_dir_id, DIR_ID_NAME};

impl Volume {
    pub(crate) fn dir_names_at(&self, cipher_dir: &Path) -> Result<super::DirNames, VolumeError> {
        let names = self.names();
        if !names.is_encrypted() {
            return Ok(names.for_dir(None));
        }
        let record = cipher_dir.join(DIR_ID_NAME);
        let id = std::fs::read(&record)
            .map_err(|e| VolumeError::Path(format!("{}: {e}", record.display())))
            .and_then(|b| {
                decode_dir_id(&b)
                    .map_err(|e| VolumeError::Path(format!("{}: {e}", record.display())))
            })?;
        Ok(names.for_dir(Some(id)))
    }

    fn components(path: &Path) -> Result<Vec<&OsStr>, VolumeError> {
        path.components()
            .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(VolumeError::Path(format!(
                    "{}: use a path without `..` inside the volume",
                    path.display()
                ))),
            })
            .collect()
    }

    /// The ciphertext path (relative to the ciphertext directory) of a plaintext path
    /// (relative to the mount). The directories on the way must exist; the last
    /// component need not.
    pub fn encrypt_path(&self, plain: &Path) -> Result<PathBuf, VolumeError> {
        let mut cipher_rel = PathBuf::new();
        for comp in Self::components(plain)? {
            let dir = self.dir_names_at(&self.cipherdir().join(&cipher_rel))?;
            let c = self
                .names()
                .encrypt(&dir, comp)
                .map_err(|e| VolumeError::Path(format!("{comp:?}: {e}")))?;
            cipher_rel.push(c.on_disk);
        }
        Ok(cipher_rel)
    }

    /// The plaintext path (relative to the mount) of a path inside the ciphertext
    /// directory (absolute, or relative to it).
    pub fn decrypt_path(&self, cipher: &Path) -> Result<PathBuf, VolumeError> {
        let rel = match cipher.strip_prefix(self.cipherdir()) {
            Ok(r) => r.to_path_buf(),
            Err(_) if cipher.is_absolute() => {
                return Err(VolumeError::Path(format!(
                    "{} is not inside the ciphertext directory {}",
                    cipher.display(),
                    self.cipherdir().display()
                )))
            }
            Err(_) => cipher.to_path_buf(),
        };
        let mut plain = PathBuf::new();
        let mut cipher_dir = self.cipherdir().to_path_buf();
        for comp in Self::components(&rel)? {
            let dir = self.dir_names_at(&cipher_dir)?;
            if self
                .names()
                .is_internal(comp, cipher_dir == self.cipherdir())
            {
                return Err(VolumeError::Path(format!(
                    "{comp:?} is one of kmsfs's own files"
                )));
            }
            let sidecar = if self.names().needs_sidecar(comp) {
                let p = cipher_dir.join(sidecar_of(comp));
                Some(
                    std::fs::read(&p)
                        .map_err(|e| VolumeError::Path(format!("{}: {e}", p.display())))?,
                )
            } else {
                None
            };
            let name = self
                .names()
                .decrypt(&dir, comp, sidecar.as_deref())
                .map_err(|e| VolumeError::Path(format!("{comp:?}: {e}")))?;
            plain.push(name);
            cipher_dir.push(comp);
        }
        Ok(plain)
    }
}
