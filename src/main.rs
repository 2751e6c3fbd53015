//! The `kmsfs` command line: parses arguments, runs one subcommand, and turns its error
//! into a message, a hint and an exit code (see `kmsfs --help` and the README).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = match cli::mount_helper(&argv) {
        Some(r) => {
            init_logging();
            r
        }
        None => {
            let args = cli::Cli::parse();
            init_logging();
            cli::run(args)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kmsfs: error: {}", cli::describe(&err));
            if let Some(hint) = cli::hint_for(&err) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}

/// Daemon and command logs go to stderr; `KMSFS_LOG=debug` (or warn, error) sets the level.
fn init_logging() {
    let level = match std::env::var("KMSFS_LOG").as_deref() {
        Ok("trace") => tracing::Level::TRACE,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
