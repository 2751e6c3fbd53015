//! The `kmsfs` command line: parses arguments, runs one subcommand, and turns its error
//! into a message, a hint and an exit code (see `kmsfs --help` and the README).

#![deny(unsafe_code)]

mod cli;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use tracing::level_filters::LevelFilter;

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
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

/// Daemon and command logs go to stderr, at the level `KMSFS_LOG` names. Then, before
/// anything can hold a key (the mount, `kms serve` and the offline tools all do), the
/// process is kept out of core dumps and debuggers, saying so if that fails.
fn init_logging() {
    tracing_subscriber::fmt()
        .with_max_level(log_level(std::env::var_os("KMSFS_LOG")))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    kmsfs::secret::protect_process();
}

/// The level a `KMSFS_LOG` value names (error, warn, info, debug, trace or off, in any
/// case; info when unset or empty). A value naming no level is reported on stderr and read
/// as info, so that a misspelt `debug` does not go unnoticed.
fn log_level(value: Option<OsString>) -> LevelFilter {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return LevelFilter::INFO;
    };
    match value.to_str().and_then(|v| v.trim().parse().ok()) {
        Some(level) => level,
        None => {
            eprintln!(
                "kmsfs: warning: KMSFS_LOG={value:?} is not a log level (error, warn, info, debug, trace or off); logging at info"
            );
            LevelFilter::INFO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_from_the_environment() {
        let level = |v: &str| log_level(Some(v.into()));
        assert_eq!(log_level(None), LevelFilter::INFO);
        assert_eq!(level(""), LevelFilter::INFO);
        assert_eq!(level("debug"), LevelFilter::DEBUG);
        assert_eq!(level("WARN"), LevelFilter::WARN);
        assert_eq!(level("off"), LevelFilter::OFF);
        assert_eq!(level("verbose"), LevelFilter::INFO);
    }
}
