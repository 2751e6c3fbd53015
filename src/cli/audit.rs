//! `kmsfs audit verify LOG [--head HEAD] [--allow-pruned]` and `kmsfs audit show LOG [--follow]`.

use std::io::{BufRead, BufReader, Seek};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kmsfs::audit::set::{verify_set, HeadCheck, SetReport};
use serde_json::Value;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of an audit log, through the rotated files it continues (found
    /// beside it by the names its records give), and against its head (`LOG.head`): names
    /// the first bad record, a missing file, or records cut off the end. Reports torn lines
    /// the writer set aside. Exits 0 if the whole log is intact, 1 otherwise.
    Verify {
        /// The log's current file (the one the writer appends to).
        log: PathBuf,
        /// The head to check the log's end against, if kept elsewhere than `LOG.head`.
        #[arg(long)]
        head: Option<PathBuf>,
        /// Accept that the oldest rotated files were deleted on purpose: verify from the
        /// oldest one left.
        #[arg(long)]
        allow_pruned: bool,
    },
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
        AuditCommand::Verify {
            log,
            head,
            allow_pruned,
        } => match verify_set(&log, head.as_deref(), allow_pruned) {
            Ok(report) => {
                print_report(&report);
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("kmsfs: {e}");
                Ok(ExitCode::from(super::EXIT_FAILURE))
            }
        },
        AuditCommand::Show { log, follow } => show(&log, follow),
    }
}

/// One line per file (oldest first), per repair record, and for the head.
fn print_report(report: &SetReport) {
    if let Some(name) = &report.pruned {
        println!("{name}: deleted (--allow-pruned): the chain is verified from the next file on");
    }
    for f in &report.files {
        let (path, s) = (f.path.display(), &f.summary);
        match &s.previous_file {
            Some(p) => println!("{path}: {} records, chain intact, continues {p}", s.records),
            None => println!("{path}: {} records, chain intact", s.records),
        }
        for r in &s.repairs {
            println!(
                "{path}: line {}: repaired at {}: a torn last line of {} bytes was set aside in {}",
                r.line, r.time, r.torn_bytes, r.set_aside_in
            );
        }
        if s.torn_bytes > 0 {
            println!(
                "{path}: ends in a torn line of {} bytes (a write cut short, not a record); the next writer to open the log sets it aside",
                s.torn_bytes
            );
        }
    }
    match &report.head {
        HeadCheck::Absent(p) => println!(
            "no head at {}: records cut off the end would go unnoticed",
            p.display()
        ),
        HeadCheck::Found {
            path,
            file,
            line,
            since,
        } => println!(
            "head {}: names record {line} of {}, present ({since} records written since)",
            path.display(),
            file.display()
        ),
    }
}

fn line_for(v: &Value) -> String {
    if v.get("eventName").is_some() {
        return kms_line_for(v);
    }
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

/// A record of `kmsfs kms serve`'s log (CloudTrail-shaped): who called what on which key.
fn kms_line_for(v: &Value) -> String {
    let s = |x: Option<&Value>| x.and_then(Value::as_str).unwrap_or("-").to_owned();
    let who = v.get("userIdentity");
    let who = who
        .and_then(|u| u.get("arn"))
        .or_else(|| who.and_then(|u| u.get("accessKeyId")));
    let key = v
        .pointer("/resources/0/ARN")
        .or_else(|| v.pointer("/requestParameters/keyId"));
    let mut out = format!(
        "{} {:<20} {:<7} {} {}",
        s(v.get("eventTime")),
        s(v.get("eventName")),
        s(v.get("outcome")),
        s(who),
        s(key),
    );
    if let Some(e) = v.get("errorCode").and_then(Value::as_str) {
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
