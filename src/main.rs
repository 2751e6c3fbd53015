//! The `kmsfs` command line: parses arguments, runs one subcommand, and turns its error
//! into a message, a hint and an exit code (see `kmsfs --help` and the README).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole chain on one line: "context: cause: cause".
            eprintln!("kmsfs: error: {err:#}");
            if let Some(hint) = cli::hint_for(&err) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}
