//! `kmsfs audit verify LOG` and `kmsfs audit show LOG [--follow]`.

use std::io::{BufRead, BufReader, Seek};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of an audit log; names the first bad record. Exits 0 if the
    /// whole log is intact, 1 otherwise.
    Verify { log: PathBuf },
    /// Print an audit log for people: one line per key event.
    Show {
        log: PathBuf,
        /// Keep printing records as they are appended.
        #[arg(long)]
        follow: bool,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify { log } => {
            let f = std::fs::File::open(&log)
                .with_context(|| format!("cannot open audit log {}", log.display()))?;
            match kmsfs::audit::chain::verify(BufReader::new(f)) {
                Ok(n) => {
                    println!("{}: {n} records, chain intact", log.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(bad) => {
                    eprintln!("kmsfs: {}: {bad}", log.display());
                    Ok(ExitCode::from(super::EXIT_FAILURE))
                }
            }
        }
        AuditCommand::Show { log, follow } => show(&log, follow),
    }
}

fn line_for(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let mut out = format!(
        "{} {:<18} {:<7} uid={} pid={} ({}) {}",
        s("time"),
        s("event"),
        s("outcome"),
        v.get("uid").map(Value::to_string).unwrap_or_default(),
        v.get("pid").map(Value::to_string).unwrap_or_default(),
        s("process"),
        s("path"),
    );
    if let Some(c) = v.get("cache").and_then(Value::as_str) {
        out.push_str(&format!(" cache={c}"));
    }
    if let Some(ms) = v.get("kms_latency_ms") {
        out.push_str(&format!(" kms={ms}ms"));
    }
    if let Some(b) = v.get("block") {
        out.push_str(&format!(" block={b}"));
    }
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        out.push_str(&format!(" error={e}"));
    }
    out
}

fn show(log: &std::path::Path, follow: bool) -> anyhow::Result<ExitCode> {
    let f = std::fs::File::open(log)
        .with_context(|| format!("cannot open audit log {}", log.display()))?;
    let mut reader = BufReader::new(f);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            if !follow {
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(Duration::from_millis(250));
            let pos = reader.stream_position()?;
            reader.seek(std::io::SeekFrom::Start(pos))?;
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => println!("{}", line_for(&v)),
            Err(_) => println!("(unreadable record) {}", line.trim_end()),
        }
    }
}
