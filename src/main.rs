//! The `kmsfs` command line: parses arguments, runs one subcommand, and turns its error
//! into a message, a hint and an exit code.

use std::process::ExitCode;

use clap::Parser;

mod cli {
    pub mod kms;
}

#[derive(Debug, Parser)]
#[command(name = "kmsfs", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The local KMS server and KMS conveniences.
    #[command(subcommand)]
    Kms(cli::kms::KmsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Kms(cmd) => cli::kms::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kmsfs: error: {e:#}");
            let hint = cli::kms::hint(&e).unwrap_or("run `kmsfs --help` for usage");
            eprintln!("hint: {hint}");
            ExitCode::FAILURE
        }
    }
}
