//! `kmsfs trust CIPHERDIR`: accept a volume's configuration as it now is, after a change
//! made on purpose (a rewrap on another machine, a new endpoint): record its key and KMS
//! as known on this machine, and sign it under its names key.

use std::path::PathBuf;
use std::process::ExitCode;

use kmsfs::volume::{signing_key, trust, KmsConnection, VolumeConfig};

#[derive(Debug, clap::Args)]
pub struct TrustArgs {
    /// The volume's ciphertext directory.
    cipherdir: PathBuf,
}

pub fn run(args: TrustArgs) -> anyhow::Result<ExitCode> {
    let cipherdir = std::path::absolute(&args.cipherdir)?;
    let mut config = VolumeConfig::load(&cipherdir)?;
    let conn = KmsConnection::open(&config.kms)?;
    if let Some(key) = signing_key(&cipherdir, &config, conn.kms().as_ref(), false)? {
        if !config.signature_checks(&key) {
            config.sign(&key);
            config.save(&cipherdir)?;
            println!(
                "signed {} under the volume's names key",
                VolumeConfig::path_in(&cipherdir).display()
            );
        }
    }
    let changed = trust::record(&config, &cipherdir)?;
    for c in &changed {
        println!("accepted: {c}");
    }
    println!(
        "volume {} at {} is known on this machine with key {} ({})",
        config.volume_id,
        cipherdir.display(),
        config.key_arn,
        trust::pins_path().display()
    );
    Ok(ExitCode::SUCCESS)
}
