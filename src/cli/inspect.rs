//! `kmsfs inspect CIPHERFILE [--json]`: the header of one ciphertext file, without a KMS.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kmsfs::format::{FormatError, Header, Layout, ALGORITHM, MAX_HEADER_LEN};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A file in a kmsfs ciphertext directory.
    cipherfile: PathBuf,
    /// Print one JSON object instead of text (fields documented in docs/cli.md).
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let path = &args.cipherfile;
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    let cipher_len = meta.len();
    let mut buf = Vec::with_capacity(MAX_HEADER_LEN as usize);
    file.by_ref()
        .take(u64::from(MAX_HEADER_LEN))
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;

    let header = match Header::decode(&buf) {
        Ok((header, _)) => header,
        Err(err) => {
            if args.json {
                print_json(&json!({
                    "path": path,
                    "error": err.kind(),
                    "message": err.to_string(),
                }));
                return Ok(ExitCode::from(super::EXIT_FAILURE));
            }
            return Err(anyhow::Error::new(err).context(format!("{}", path.display())));
        }
    };
    let layout = Layout::of(&header);
    let size = layout.plain_len(cipher_len);
    let blocks = size.as_ref().ok().map(|&p| Layout::block_count(p));

    if args.json {
        let mut v = json!({
            "path": path,
            "format_version": header.version,
            "algorithm": ALGORITHM,
            "algorithm_name": algorithm_name(),
            "flags": 0,
            "file_id": header.file_id.to_hex(),
            "key_id": header.key_id,
            "wrapped_key_len": header.wrapped_key.len(),
            "header_len": header.header_len,
            "cipher_size": cipher_len,
            "plaintext_size": size.as_ref().ok(),
            "blocks": blocks,
        });
        if let Some((dir, encrypted)) = volume_of(path) {
            v["volume_dir"] = json!(dir);
            v["names"] = json!(if encrypted { "encrypted" } else { "plaintext" });
        }
        if let Err(err) = &size {
            v["error"] = json!(err.kind());
            v["message"] = json!(err.to_string());
        }
        print_json(&v);
    } else {
        println!("file:            {}", path.display());
        println!(
            "format version:  {} ({})",
            header.version,
            if header.version == 1 {
                "blocks packed"
            } else {
                "block data page-aligned"
            }
        );
        println!("algorithm:       {ALGORITHM} ({})", algorithm_name());
        println!("flags:           none");
        println!("file id:         {}", header.file_id);
        println!("KMS key:         {}", header.key_id);
        println!("wrapped key:     {} bytes", header.wrapped_key.len());
        println!("header length:   {} bytes", header.header_len);
        println!("ciphertext size: {cipher_len} bytes");
        if let Some((dir, encrypted)) = volume_of(path) {
            let names = if encrypted {
                format!(
                    "names encrypted; `kmsfs path decrypt {} {}` gives its name",
                    dir.display(),
                    path.display()
                )
            } else {
                "names in plaintext".into()
            };
            println!("volume:          {} ({names})", dir.display());
        }
        match (&size, blocks) {
            (Ok(p), Some(b)) => println!("plaintext size:  {p} bytes ({b} blocks)"),
            (Err(err), _) => println!("plaintext size:  unknown: {err}"),
            _ => {}
        }
    }
    match size {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(err @ FormatError::InvalidCipherLen { .. }) if !args.json => {
            Err(anyhow::Error::new(err).context(format!("{}", path.display())))
        }
        Err(_) => Ok(ExitCode::from(super::EXIT_FAILURE)),
    }
}

/// The volume a ciphertext file belongs to (the nearest directory above it holding a
/// volume configuration), and whether its names are encrypted.
fn volume_of(path: &std::path::Path) -> Option<(std::path::PathBuf, bool)> {
    let abs = std::path::absolute(path).ok()?;
    for dir in abs.ancestors().skip(1).take(256) {
        if let Ok(cfg) = kmsfs::volume::VolumeConfig::load(dir) {
            let encrypted = matches!(cfg.names, kmsfs::volume::NamesConfig::Encrypted { .. });
            return Some((dir.to_path_buf(), encrypted));
        }
    }
    None
}

fn algorithm_name() -> &'static str {
    "AES-256-GCM-SIV, 4096-byte blocks, HKDF-SHA256, HMAC-SHA256 key commitment"
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialise")
    );
}
