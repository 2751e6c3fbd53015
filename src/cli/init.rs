//! `kmsfs init CIPHERDIR [--kms-endpoint URL|aws] [--key KEY] [--bucket-key]`.

use std::path::PathBuf;
use std::process::ExitCode;

use kmsfs::volume::{default_local_kms_state, init_volume, BucketKeyConfig, KmsSettings};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The directory that will hold the ciphertext (created if missing; must be empty).
    cipherdir: PathBuf,
    /// KMS endpoint URL, `aws` for AWS KMS's regional endpoint from the AWS configuration,
    /// or `openbao+https://HOST:PORT` for OpenBao's or Vault's Transit engine (with
    /// --key MOUNT/NAME; the token from BAO_TOKEN, see docs/kms.md). Default: AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL if set, else the
    /// built-in local KMS (no setup needed).
    #[arg(long, value_name = "URL|aws")]
    kms_endpoint: Option<String>,
    /// KMS key for the volume's data keys: key id, ARN, alias name or alias ARN; on
    /// OpenBao, MOUNT/NAME (made with derived=true if it does not exist).
    /// Default for the built-in local KMS: a new key made for this volume.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Keep file and directory names readable in the ciphertext directory (contents are
    /// still encrypted). Default: names, symlink targets and xattr values are encrypted.
    #[arg(long)]
    plaintext_names: bool,
    /// On-disk format of the volume's files: 4 (the default: each block sealed whole on a
    /// page of its own, so that a block being rewritten when the daemon is killed or the
    /// power cut reads as its old or new content), 3 (block data on pages of its own, two
    /// nonce-and-tag slots per block: old or new through a killed daemon only), 2 (one
    /// slot) or 1 (blocks packed, as volumes made before version 2 existed; random 4 KiB
    /// writes are slower). See docs/format.md and docs/performance.md.
    #[arg(long, value_name = "1|2|3|4", default_value_t = kmsfs::format::VERSION,
          value_parser = clap::value_parser!(u16).range(1..=4))]
    format_version: u16,
    /// Bucket keys, as S3 Bucket Keys: new files' data keys are derived from a key the KMS
    /// makes once per mount and period, so creating and reading files costs about one KMS
    /// call per bucket rather than one per file. What this trades: docs/threat-model.md.
    #[arg(long)]
    bucket_key: bool,
    /// How long files are made under one bucket key before a new one is made (with
    /// --bucket-key; default 24h).
    #[arg(long, value_name = "DURATION", value_parser = super::mount::parse_duration,
          requires = "bucket_key")]
    bucket_key_period: Option<std::time::Duration>,
    /// Where the built-in local KMS keeps its keys (default: the XDG data directory).
    #[arg(long, value_name = "PATH")]
    local_kms_state: Option<PathBuf>,
}

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let settings = match args.kms_endpoint.as_deref() {
        Some("aws") => KmsSettings::Http { endpoint: None },
        Some(url) if kmsfs::kms::transit::server_addr(url).is_some() => KmsSettings::Transit {
            endpoint: url.to_owned(),
        },
        Some(url) => KmsSettings::Http {
            endpoint: Some(url.to_owned()),
        },
        None => match env("AWS_ENDPOINT_URL_KMS").or_else(|| env("AWS_ENDPOINT_URL")) {
            Some(url) => KmsSettings::Http {
                endpoint: Some(url),
            },
            None => {
                let state = args.local_kms_state.unwrap_or_else(default_local_kms_state);
                let state = std::path::absolute(&state).unwrap_or(state);
                KmsSettings::Local { state }
            }
        },
    };
    let cipherdir = std::path::absolute(&args.cipherdir).unwrap_or(args.cipherdir);
    let config = init_volume(
        &cipherdir,
        settings,
        args.key.as_deref(),
        args.plaintext_names,
        args.format_version,
        args.bucket_key.then(|| BucketKeyConfig {
            period_s: args
                .bucket_key_period
                .map_or(BucketKeyConfig::DEFAULT_PERIOD_S, |d| d.as_secs().max(1)),
        }),
    )?;
    println!("created kmsfs volume {}", config.volume_id);
    println!("  ciphertext directory: {}", cipherdir.display());
    match &config.kms {
        KmsSettings::Local { state } => {
            println!(
                "  KMS:                  built-in local KMS (keys in {})",
                state.display()
            )
        }
        KmsSettings::Transit { endpoint } => println!(
            "  KMS:                  OpenBao/Vault Transit at {}",
            kmsfs::kms::transit::server_addr(endpoint).unwrap_or(endpoint)
        ),
        KmsSettings::Http { endpoint } => println!(
            "  KMS:                  {}",
            endpoint
                .as_deref()
                .unwrap_or("AWS KMS (from the AWS configuration)")
        ),
    }
    println!("  KMS key:              {}", config.key_arn);
    println!(
        "  names:                {}",
        if args.plaintext_names {
            "plaintext (contents encrypted)"
        } else {
            "encrypted"
        }
    );
    if let Some(b) = &config.bucket_key {
        println!(
            "  keys:                 bucket keys, a new one every {} (docs/threat-model.md says what this trades)",
            humantime::format_duration(std::time::Duration::from_secs(b.period_s))
        );
    }
    println!(
        "mount it with: kmsfs mount {} MOUNTPOINT",
        cipherdir.display()
    );
    if let KmsSettings::Local { state } = &config.kms {
        println!(
            "the volume's master key is in {} (the built-in KMS's state file, with the keys of every volume made on it): losing that file loses every such volume's data.",
            state.display()
        );
        println!(
            "back it up now and after each init: kmsfs kms backup --state {} BACKUP-FILE",
            state.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
