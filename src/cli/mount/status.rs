//! `kmsfs status`: asks a mount's daemon on its control socket and prints the answer.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kmsfs::mount::is_mountpoint;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    mountpoint: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// `kmsfs status`: asks the mount's daemon on its control socket and prints the answer.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mp = std::path::absolute(&args.mountpoint)?;
    if !is_mountpoint(&mp) {
        bail!("{} is not mounted", mp.display());
    }
    let v = kmsfs::control::query(&mp).with_context(|| {
        format!(
            "cannot reach the kmsfs daemon of {} (not a kmsfs mount, or mounted by another user)",
            mp.display()
        )
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let kms = &v["kms"];
    let ms = |k: &str| {
        kms[k]
            .as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    println!("mountpoint:     {}", mp.display());
    println!("ciphertext:     {}", v["cipherdir"].as_str().unwrap_or("?"));
    println!("volume:         {}", v["volume_id"].as_str().unwrap_or("?"));
    println!(
        "daemon pid:     {}   uptime: {}s   idle: {}s",
        v["pid"], v["uptime_s"], v["idle_s"]
    );
    println!("open files:     {}", v["open_files"]);
    println!(
        "key cache:      {} keys, {} hits, {} misses;  data keys ready: {}",
        v["key_cache"]["entries"],
        v["key_cache"]["hits"],
        v["key_cache"]["misses"],
        v["key_pool_ready"]
    );
    let c = &v["key_cache"];
    println!(
        "keys ahead:     {} unwrapped before their open: {} used, {} dropped unused",
        c["prefetched"], c["prefetched_used"], c["prefetched_unused"]
    );
    let b = &v["bucket_key"];
    if let Some(period) = b["period_s"].as_u64() {
        match (b["current"].as_str(), b["age_s"].as_u64()) {
            (Some(id), Some(age)) => {
                println!("bucket key:     {id}, made {age}s ago, a new one every {period}s")
            }
            _ => println!("bucket key:     none yet (made at the first create), period {period}s"),
        }
    }
    println!(
        "KMS calls:      {} GenerateDataKey, {} Decrypt, {} errors",
        kms["generate_data_key"], kms["decrypt"], kms["errors"]
    );
    println!(
        "KMS health:     {} ({} calls waiting{})",
        kms["health"].as_str().unwrap_or("?"),
        kms["in_flight"],
        match (kms["last_error"].as_str(), kms["last_error_s_ago"].as_u64()) {
            (Some(e), Some(ago)) => format!("; last error {ago}s ago: {e}"),
            _ => String::new(),
        }
    );
    println!(
        "KMS latency:    p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        ms("latency_ms_p50"),
        ms("latency_ms_p90"),
        ms("latency_ms_p99"),
        ms("latency_ms_max")
    );
    println!(
        "integrity failures: {}   keys not locked in RAM: {}",
        v["integrity_failures"], v["keys_not_locked_in_ram"]
    );
    Ok(ExitCode::SUCCESS)
}
