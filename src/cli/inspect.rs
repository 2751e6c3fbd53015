//! `kmsfs inspect CIPHERFILE [--json]`: the header of one ciphertext file, without a KMS.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
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
    let (cipher_len, buf) = read_start(path)?;
    let header = match Header::decode(&buf) {
        Ok((header, _)) => header,
        Err(err) if args.json => {
            print_json(&json!({
                "path": path,
                "error": err.kind(),
                "message": err.to_string(),
            }));
            return Ok(ExitCode::from(super::EXIT_FAILURE));
        }
        Err(err) => return Err(anyhow::Error::new(err).context(format!("{}", path.display()))),
    };
    let plain_len = Layout::of(&header).plain_len(cipher_len);
    let summary = Summary {
        path,
        header,
        cipher_len,
        plain_len,
    };
    if args.json {
        print_json(&summary.to_json());
    } else {
        summary.print_text();
    }
    match summary.plain_len {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(err @ FormatError::InvalidCipherLen { .. }) if !args.json => {
            Err(anyhow::Error::new(err).context(format!("{}", path.display())))
        }
        Err(_) => Ok(ExitCode::from(super::EXIT_FAILURE)),
    }
}

/// The length of the regular file at `path` and its first bytes, as many as a header
/// can take.
fn read_start(path: &Path) -> anyhow::Result<(u64, Vec<u8>)> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    let mut buf = Vec::with_capacity(MAX_HEADER_LEN as usize);
    file.by_ref()
        .take(u64::from(MAX_HEADER_LEN))
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok((meta.len(), buf))
}

/// What `inspect` reports about a file whose header could be read.
struct Summary<'a> {
    path: &'a Path,
    header: Header,
    cipher_len: u64,
    /// `Err` when the ciphertext length fits no plaintext length (a cut or padded file).
    plain_len: Result<u64, FormatError>,
}

impl Summary<'_> {
    /// Data blocks of the plaintext, when its length is known.
    fn blocks(&self) -> Option<u64> {
        self.plain_len
            .as_ref()
            .ok()
            .map(|&p| Layout::of(&self.header).block_count(p))
    }

    /// The JSON object `--json` prints (fields documented in docs/cli.md).
    fn to_json(&self) -> serde_json::Value {
        let header = &self.header;
        let mut v = json!({
            "path": self.path,
            "format_version": header.version,
            "algorithm": ALGORITHM,
            "algorithm_name": algorithm_name(header.version),
            "flags": header.flags,
            "file_id": header.file_id.to_hex(),
            "key_id": header.key_id,
            "wrapped_key_len": header.wrapped_key.len(),
            "header_len": header.header_len,
            "cipher_size": self.cipher_len,
            "plaintext_size": self.plain_len.as_ref().ok(),
            "blocks": self.blocks(),
        });
        if let Some(bucket) = header.bucket_id {
            v["bucket_id"] = json!(bucket.to_hex());
        }
        if let Some((dir, encrypted)) = volume_of(self.path) {
            v["volume_dir"] = json!(dir);
            v["names"] = json!(if encrypted { "encrypted" } else { "plaintext" });
        }
        if let Err(err) = &self.plain_len {
            v["error"] = json!(err.kind());
            v["message"] = json!(err.to_string());
        }
        v
    }

    /// The report for people, one field a line.
    fn print_text(&self) {
        let (path, header) = (self.path, &self.header);
        println!("file:            {}", path.display());
        println!(
            "format version:  {} ({})",
            header.version,
            match header.version {
                1 => "blocks packed",
                4 => "each block sealed on a page of its own",
                _ => "block data page-aligned",
            }
        );
        println!(
            "algorithm:       {ALGORITHM} ({})",
            algorithm_name(header.version)
        );
        println!("flags:           {}", flag_names(header.flags));
        println!("file id:         {}", header.file_id);
        println!("KMS key:         {}", header.key_id);
        println!("wrapped key:     {} bytes", header.wrapped_key.len());
        if let Some(bucket) = header.bucket_id {
            println!("bucket id:       {bucket} (the wrapped key is the bucket's key)");
        }
        println!("header length:   {} bytes", header.header_len);
        println!("ciphertext size: {} bytes", self.cipher_len);
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
        match (&self.plain_len, self.blocks()) {
            (Ok(p), Some(b)) => println!("plaintext size:  {p} bytes ({b} blocks)"),
            (Err(err), _) => println!("plaintext size:  unknown: {err}"),
            _ => {}
        }
    }
}

/// The volume a ciphertext file belongs to (the nearest directory above it holding a
/// volume configuration), and whether its directories hold records.
fn volume_of(path: &Path) -> Option<(PathBuf, bool)> {
    let abs = std::path::absolute(path).ok()?;
    for dir in abs.ancestors().skip(1).take(256) {
        if let Ok(cfg) = kmsfs::volume::VolumeConfig::load(dir) {
            return Some((dir.to_path_buf(), cfg.has_dir_records()));
        }
    }
    None
}

/// The algorithm's name in words, for the report, with the block length of `version`.
fn algorithm_name(version: u16) -> String {
    let block = kmsfs::format::Layout::new(version, kmsfs::format::MIN_HEADER_LEN).block_len();
    format!("AES-256-GCM-SIV, {block}-byte blocks, HKDF-SHA256, HMAC-SHA256 key commitment")
}

/// Prints `v` as indented JSON on stdout.
fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialise")
    );
}

/// The header's feature bits in words.
fn flag_names(flags: u32) -> String {
    let names: Vec<&str> = [
        (kmsfs::format::binding::FLAG_BOUND_NAMES, "names bound"),
        (kmsfs::format::FLAG_BUCKET_KEY, "bucket key"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| *name)
    .collect();
    match names.is_empty() {
        true => "none".into(),
        false => format!("{flags} ({})", names.join(", ")),
    }
}
