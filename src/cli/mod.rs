//! Argument parsing (clap) and dispatch. Each subcommand lives in its own file and only
//! turns library results into output; no format, crypto or KMS logic lives here.

mod audit;
mod generate;
mod init;
mod inspect;
mod kms;
mod mount;
mod ops;
mod path;
mod progress;
mod trust;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for a command that ran but failed (bad input, damaged file, KMS error).
pub const EXIT_FAILURE: u8 = 1;
// Status 2 is clap's, for a usage error.

/// kmsfs: a FUSE filesystem that encrypts each file with its own data key from a KMS.
#[derive(Debug, Parser)]
#[command(name = "kmsfs", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the header of a kmsfs ciphertext file (no KMS needed).
    ///
    /// Prints the format version, file id, KMS key ARN, wrapped key length and plaintext
    /// size. Exits 0 for a well-formed header and length, 1 if the file is not a kmsfs
    /// file or is damaged.
    Inspect(inspect::InspectArgs),
    /// Create a volume: an empty ciphertext directory with its configuration and KMS key.
    Init(init::InitArgs),
    /// Mount a volume's plaintext view; returns once it is ready (unless --foreground).
    Mount(mount::MountArgs),
    /// Unmount a kmsfs mount (the daemon wipes its keys and exits).
    Unmount(mount::UnmountArgs),
    /// Ask a running mount for its key cache, KMS calls and latency, errors, open files.
    Status(mount::StatusArgs),
    /// Check every name, header and block of a volume, read only; with --repair, first
    /// clean up what a crash can leave (on an unmounted volume). Exit 0 clean, 4 damaged,
    /// 8 could not check.
    Fsck(ops::FsckArgs),
    /// Move every file's data key under another KMS key (ReEncrypt; content untouched).
    Rewrap(ops::RewrapArgs),
    /// Decrypt one ciphertext file without mounting.
    Decrypt(ops::DecryptArgs),
    /// Decrypt a whole volume into a directory without mounting.
    Export(ops::ExportArgs),
    /// Encrypt a plaintext directory tree into a volume without mounting.
    Import(ops::ImportArgs),
    /// Give every file a fresh data key and re-encrypt its content (crash-safe, resumable).
    Rekey(ops::RekeyArgs),
    /// Man pages and shell completions, from these same definitions.
    #[command(subcommand)]
    Generate(generate::GenerateCommand),
    /// Accept a volume's configuration as it now is, after a change made on purpose (a
    /// rewrap on another machine, a new KMS endpoint): record it as known on this machine.
    Trust(trust::TrustArgs),
    /// Map between plaintext and ciphertext paths of a volume (needs the KMS).
    #[command(subcommand)]
    Path(path::PathCommand),
    /// Check or read a mount's audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The local KMS server, and conveniences for any KMS endpoint.
    #[command(subcommand)]
    Kms(kms::KmsCommand),
}

/// Whether `name` is one of kmsfs's subcommands (for telling the mount(8) helper form
/// `kmsfs CIPHERDIR MOUNTPOINT -o ...` apart).
pub fn is_subcommand(name: &str) -> bool {
    use clap::CommandFactory;
    Cli::command()
        .get_subcommands()
        .any(|c| c.get_name() == name)
        || name == "help"
}

/// Runs the mount(8) helper form if `argv` is that.
pub fn mount_helper(argv: &[std::ffi::OsString]) -> Option<anyhow::Result<ExitCode>> {
    mount::helper(argv)
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Init(args) => init::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Unmount(args) => mount::unmount(args),
        Command::Status(args) => mount::status(args),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Path(cmd) => path::run(cmd),
        Command::Generate(cmd) => generate::run(cmd),
        Command::Fsck(args) => ops::fsck(args),
        Command::Rewrap(args) => ops::rewrap(args),
        Command::Decrypt(args) => ops::decrypt(args),
        Command::Export(args) => ops::export(args),
        Command::Import(args) => ops::import(args),
        Command::Rekey(args) => ops::rekey(args),
        Command::Kms(cmd) => kms::run(cmd),
        Command::Trust(args) => trust::run(args),
    }
}

/// The error and its causes on one line: each of our error types either prints its cause
/// or exposes it as its source, never both, so every link says something new.
pub fn describe(err: &anyhow::Error) -> String {
    let texts: Vec<String> = err.chain().map(ToString::to_string).collect();
    texts.join(": ")
}

/// One line of what to do next, for errors where we know.
pub fn hint_for(err: &anyhow::Error) -> Option<&'static str> {
    use kmsfs::format::FormatError;
    if let Some(hint) = kms::hint(err) {
        return Some(hint);
    }
    let format_err = err.chain().find_map(|e| e.downcast_ref::<FormatError>())?;
    Some(match format_err {
        FormatError::NotKmsfs => "point kmsfs at a file inside a kmsfs ciphertext directory, not the mounted plaintext view",
        FormatError::UnsupportedVersion(_)
        | FormatError::UnsupportedAlgorithm(_)
        | FormatError::UnsupportedFlags(_) => "this file was written by a newer kmsfs; install that version to read it",
        _ => "the file is damaged; restore it from a backup (kmsfs never guesses at damaged data)",
    })
}
