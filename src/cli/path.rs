//! `kmsfs path encrypt|decrypt CIPHERDIR PATH`: map between plaintext and ciphertext
//! paths of a volume, for operators (needs the KMS for encrypted names).

use std::path::PathBuf;
use std::process::ExitCode;

use kmsfs::volume::{default_audit_log, Volume, VolumeConfig, VolumeOptions};

#[derive(Debug, clap::Subcommand)]
pub enum PathCommand {
    /// Print where a plaintext path (relative to the mount) lives in the ciphertext
    /// directory.
    Encrypt {
        cipherdir: PathBuf,
        /// Path as seen in the mount, relative to its root.
        plain_path: PathBuf,
    },
    /// Print the plaintext path (relative to the mount) of a ciphertext path.
    Decrypt {
        cipherdir: PathBuf,
        /// A path inside the ciphertext directory (absolute, or relative to it).
        cipher_path: PathBuf,
    },
}

fn open(cipherdir: &std::path::Path) -> anyhow::Result<Volume> {
    let cipherdir = std::path::absolute(cipherdir)?;
    let config = VolumeConfig::load(&cipherdir)?;
    let mut opts = VolumeOptions::new(default_audit_log(&config.volume_id));
    opts.pool_target = 0; // no data keys are needed
    Ok(Volume::open(&cipherdir, opts)?)
}

pub fn run(cmd: PathCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PathCommand::Encrypt {
            cipherdir,
            plain_path,
        } => {
            let v = open(&cipherdir)?;
            let rel = v.encrypt_path(&plain_path)?;
            println!("{}", v.cipherdir().join(rel).display());
        }
        PathCommand::Decrypt {
            cipherdir,
            cipher_path,
        } => {
            let v = open(&cipherdir)?;
            let cipher_path = if cipher_path.is_absolute() {
                cipher_path
            } else if cipher_path.starts_with(&cipherdir) {
                std::path::absolute(&cipher_path)?
            } else {
                cipher_path
            };
            println!("{}", v.decrypt_path(&cipher_path)?.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
