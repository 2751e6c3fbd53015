//! `kmsfs kms backup` and `kmsfs kms restore`: the built-in KMS's state file, which holds
//! the master key of every volume made on it, copied out and merged back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use kmsfs::kms::engine::backup::snapshot;
use kmsfs::kms::engine::state::{write_atomic, write_new};
use kmsfs::kms::engine::Engine;
use kmsfs::volume::default_local_kms_state;
use zeroize::Zeroizing;

pub fn backup(state: Option<PathBuf>, out: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let state = state.unwrap_or_else(default_local_kms_state);
    if !state.exists() {
        bail!(
            "the built-in KMS has no state file at {}; give --state PATH",
            state.display()
        );
    }
    let (bytes, keys) = snapshot(&state)?;
    let written = if force {
        write_atomic(out, &bytes)
    } else {
        write_new(out, &bytes)
    };
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists; choose another name, or give --force to replace it",
            out.display()
        ),
        r => r.with_context(|| format!("cannot write the backup {}", out.display()))?,
    }
    println!(
        "backed up {keys} key(s) of {} to {}",
        state.display(),
        out.display()
    );
    println!(
        "the backup holds every master key in the clear: keep it as safe as the volumes' data"
    );
    Ok(ExitCode::SUCCESS)
}

pub fn restore(state: Option<PathBuf>, backup: &Path) -> anyhow::Result<ExitCode> {
    let state = state.unwrap_or_else(default_local_kms_state);
    let bytes = Zeroizing::new(
        std::fs::read(backup)
            .with_context(|| format!("cannot read the backup {}", backup.display()))?,
    );
    if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let engine = Engine::open(&state)?;
    let r = engine.restore(&bytes).with_context(|| {
        format!(
            "cannot restore {} into {}",
            backup.display(),
            state.display()
        )
    })?;
    println!("restored {} into {}:", backup.display(), state.display());
    let list = |ids: &[String]| {
        if ids.is_empty() {
            String::new()
        } else {
            format!(" ({})", ids.join(", "))
        }
    };
    println!(
        "  keys added:           {}{}",
        r.keys_added.len(),
        list(&r.keys_added)
    );
    for (id, n) in &r.versions_added {
        println!("  versions added:       {n} to key {id}");
    }
    println!("  keys already there:   {}", r.keys_unchanged);
    if !r.deletion_cancelled.is_empty() {
        println!(
            "  past their deletion date, restored disabled: {} (enable them with EnableKey, e.g. `aws kms enable-key` against `kmsfs kms serve`)",
            r.deletion_cancelled.join(", ")
        );
    }
    println!(
        "  aliases added:        {}{}",
        r.aliases_added.len(),
        list(&r.aliases_added)
    );
    if !r.aliases_kept.is_empty() {
        println!(
            "  aliases left pointing at another key than in the backup: {}",
            r.aliases_kept.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
