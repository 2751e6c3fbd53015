//! `kmsfs generate man DIR` and `kmsfs generate completions SHELL`: man pages and shell
//! completions made from the same clap definitions as `--help`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

#[derive(Debug, clap::Subcommand)]
pub enum GenerateCommand {
    /// Write man pages (kmsfs.1, kmsfs-mount.1, ...) into DIR.
    Man { dir: PathBuf },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

pub fn run(cmd: GenerateCommand) -> anyhow::Result<ExitCode> {
    let mut command = super::Cli::command();
    match cmd {
        GenerateCommand::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
        }
        GenerateCommand::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "kmsfs", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => {}
                // A closed pipe (`| head`) is not an error worth a message.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(anyhow::Error::new(e).context("cannot write to stdout")),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
