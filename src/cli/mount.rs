//! `kmsfs mount` (and the daemon it starts), `kmsfs unmount` and `kmsfs status`; the
//! `mount(8)` helper form is in [`helper_form`].
//!
//! Without `--foreground`, `mount` starts itself again in the background with
//! `--foreground` and waits until that daemon says the mount is ready (or why it failed),
//! the way gocryptfs does; the daemon's log goes to a file. SIGINT, SIGTERM and SIGHUP
//! unmount cleanly and wipe every key.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use kmsfs::mount::{is_mountpoint, MountOptions, Mounted};
use kmsfs::volume::{default_audit_log, VolumeConfig, VolumeOptions};

mod helper_form;
mod status;
pub use helper_form::helper;
pub use status::{status, StatusArgs};

/// Set in the daemon's environment: print `READY` or `ERROR ...` on stdout.
const NOTIFY_ENV: &str = "KMSFS_NOTIFY_READY";

#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// The ciphertext directory (made with `kmsfs init`).
    cipherdir: PathBuf,
    /// An empty directory to show the plaintext in.
    mountpoint: PathBuf,
    /// Stay in the foreground (logs to stderr) instead of returning once mounted.
    #[arg(long, short = 'f')]
    foreground: bool,
    /// Mount options, comma separated: ro, allow_other, allow_root, default_permissions
    /// (the kernel checks permission bits even on a private mount by root).
    #[arg(short = 'o', value_delimiter = ',', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Audit log (JSON lines, hash-chained). Default: the XDG state directory,
    /// kmsfs/audit/VOLUME_ID.jsonl.
    #[arg(long, value_name = "PATH")]
    audit_log: Option<PathBuf>,
    /// How long an unwrapped key may be served from the cache (e.g. 300s, 5m, 1h; 0 turns
    /// caching off).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    key_ttl: Duration,
    /// How long a data key made ahead for a new file may wait for one before it is
    /// dropped (0 turns the pool of such keys off). An idle mount makes no KMS calls once
    /// its pooled keys have expired.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pool_key_lifetime: Duration,
    /// Longest a request (an open, a create) waits for a remote KMS, retries included;
    /// meanwhile other requests are served. Then it fails with EIO.
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    kms_timeout: Duration,
    /// Most Decrypt calls under way at once to unwrap the keys of the files a process is
    /// about to open as it reads a directory's files in order (`tar`, `cp -r`, `rsync`),
    /// so it does not wait on the KMS file by file (their headers are read ahead too).
    /// 0 turns it off; a lower value keeps under an account's KMS request quota.
    #[arg(long, default_value_t = 256, value_name = "N")]
    kms_prefetch: usize,
    /// Most keys held in the cache at once.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    key_cache_size: usize,
    /// How long the kernel may trust names and attributes it has seen (e.g. 5s, 1s, 0).
    /// Changes made through the mount always show at once; changes made to the
    /// ciphertext directory behind its back (a sync tool, another mount) show within this.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    cache_ttl: Duration,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 16, value_name = "N")]
    threads: usize,
    /// Where the background daemon logs. Default: next to the audit log, VOLUME_ID.log.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Unmount by itself after this long with no open files and no activity (e.g. 30m).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    idle: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    mountpoint: PathBuf,
}

/// Parses a duration the way humantime writes them (`300s`, `5m`, `1h 30m`, `250ms`); a
/// bare number such as `300` is seconds, as these options have always read it.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|e| format!("{s:?} is not a number of seconds: {e}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 300s, 5m or 1h: {e}"))
}

/// The mount's options from the command line and the volume's configuration.
fn mount_options(args: &MountArgs, config: &VolumeConfig) -> anyhow::Result<MountOptions> {
    let mut opts = MountOptions {
        read_only: false,
        allow_other: false,
        allow_root: false,
        default_permissions: false,
        threads: args.threads,
        cache_ttl: args.cache_ttl,
        volume: VolumeOptions::new(match &args.audit_log {
            Some(p) => std::path::absolute(p)?,
            None => default_audit_log(&config.volume_id),
        }),
    };
    opts.volume.key_ttl = args.key_ttl;
    opts.volume.pool_key_lifetime = args.pool_key_lifetime;
    opts.volume.kms_timeout = args.kms_timeout;
    opts.volume.prefetch_calls = args.kms_prefetch;
    opts.volume.key_cache_size = args.key_cache_size;
    for o in args
        .options
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
    {
        match o {
            "ro" => opts.read_only = true,
            "rw" => opts.read_only = false,
            "allow_other" => opts.allow_other = true,
            "allow_root" => opts.allow_root = true,
            "default_permissions" => opts.default_permissions = true,
            other => {
                bail!("unknown mount option {other:?} (known: ro, rw, allow_other, allow_root, default_permissions)")
            }
        }
    }
    opts.volume.read_only = opts.read_only;
    Ok(opts)
}

/// `kmsfs mount`: in the foreground, or through a background daemon.
pub fn run(args: MountArgs) -> anyhow::Result<ExitCode> {
    let cipherdir = std::path::absolute(&args.cipherdir)?;
    let mountpoint = std::path::absolute(&args.mountpoint)?;
    let config = VolumeConfig::load(&cipherdir)?;
    // Here as well as in the daemon, so that a changed configuration is told at once.
    kmsfs::volume::trust::check(&config, &cipherdir)?;
    let opts = mount_options(&args, &config)?;
    if args.foreground {
        return foreground(&cipherdir, &mountpoint, opts, args.idle);
    }
    kmsfs::mount::preflight(&mountpoint)?;
    let log = match &args.log_file {
        Some(p) => std::path::absolute(p)?,
        None => opts
            .volume
            .audit_log
            .with_file_name(format!("{}.log", config.volume_id)),
    };
    background(&args, &cipherdir, &mountpoint, &log)
}

/// Mounts in this process and serves until a signal, the kernel's unmount or `--idle`
/// ends it; then unmounts, which wipes every key.
fn foreground(
    cipherdir: &Path,
    mountpoint: &Path,
    opts: MountOptions,
    idle: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let notify = std::env::var_os(NOTIFY_ENV).is_some();
    let term = termination_flag()?;
    kmsfs::mount::raise_fd_limit();
    let mounted = match kmsfs::mount::mount(cipherdir, mountpoint, opts) {
        Ok(m) => m,
        Err(e) => {
            let e = anyhow::Error::new(e);
            if notify {
                tell_parent_why(&e);
            }
            return Err(e);
        }
    };
    tracing::info!(
        "mounted {} at {}",
        cipherdir.display(),
        mountpoint.display()
    );
    let socket = serve_status(&mounted, mountpoint);
    if notify {
        println!("READY");
    }
    wait_until_done(&mounted, &term, idle);
    if let Some(p) = socket {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("unmounting {}", mountpoint.display());
    mounted.unmount().context("unmount failed")?;
    tracing::info!("unmounted; keys wiped");
    Ok(ExitCode::SUCCESS)
}

/// A flag that SIGINT, SIGTERM and SIGHUP set.
fn termination_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let term = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, term.clone()).context("cannot install signal handlers")?;
    }
    Ok(term)
}

/// Tells the waiting parent why the mount failed: a `HINT` line if there is one, then
/// the `ERROR` line (the parent prints them in that order).
fn tell_parent_why(e: &anyhow::Error) {
    if let Some(hint) = super::hint_for(e) {
        println!("HINT {hint}");
    }
    println!("ERROR {}", super::describe(e));
}

/// Answers `kmsfs status` on the mount's control socket; returns the socket's path, or
/// `None` (with a warning) when it could not be made.
fn serve_status(mounted: &Mounted, mountpoint: &Path) -> Option<PathBuf> {
    let (volume, activity) = (mounted.volume().clone(), mounted.activity().clone());
    let mp = mountpoint.to_path_buf();
    let socket = kmsfs::control::serve(mountpoint, move || {
        let mut v = volume.stats();
        v["mountpoint"] = serde_json::json!(mp);
        v["open_files"] = serde_json::json!(activity.open_handles());
        v["idle_s"] = serde_json::json!(activity.idle_for().as_secs());
        v["pid"] = serde_json::json!(std::process::id());
        v
    });
    match socket {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("no control socket (kmsfs status will not work): {e}");
            None
        }
    }
}

/// Returns once `term` is set, the mount has ended, or it has been idle (no open files,
/// no activity) for `idle`.
fn wait_until_done(mounted: &Mounted, term: &AtomicBool, idle: Option<Duration>) {
    loop {
        if term.load(Ordering::Relaxed) || mounted.is_finished() {
            return;
        }
        if let Some(limit) = idle {
            let a = mounted.activity();
            if a.open_handles() == 0 && a.idle_for() >= limit {
                tracing::info!("idle for {}s with no open files", a.idle_for().as_secs());
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the daemon (this program again, with `--foreground`) in a process group of
/// its own, logging to `log`, and waits until it says the mount is ready or why not.
fn background(
    args: &MountArgs,
    cipherdir: &Path,
    mountpoint: &Path,
    log: &Path,
) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let log_file = open_daemon_log(log)?;
    let mut cmd = daemon_command(args, cipherdir, mountpoint, log)?;
    cmd.env(NOTIFY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .process_group(0)
        .current_dir("/");
    let child = cmd.spawn().context("cannot start the kmsfs daemon")?;
    wait_until_ready(child, cipherdir, mountpoint, log)
}

/// Opens the daemon's log for appending, making its directory if need be.
fn open_daemon_log(log: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // 0600, also for a log an older kmsfs made 0644: it names plaintext paths.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .with_context(|| format!("cannot open daemon log {}", log.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make daemon log {} private", log.display()))?;
    Ok(file)
}

/// `kmsfs mount --foreground` with every setting of `args`, for the daemon.
fn daemon_command(
    args: &MountArgs,
    cipherdir: &Path,
    mountpoint: &Path,
    log: &Path,
) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find the kmsfs executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg(cipherdir)
        .arg(mountpoint)
        .arg("--foreground")
        .arg("--key-ttl")
        .arg(format!("{}ms", args.key_ttl.as_millis()))
        .arg("--pool-key-lifetime")
        .arg(format!("{}ms", args.pool_key_lifetime.as_millis()))
        .arg("--kms-timeout")
        .arg(format!("{}ms", args.kms_timeout.as_millis()))
        .arg("--kms-prefetch")
        .arg(args.kms_prefetch.to_string())
        .arg("--key-cache-size")
        .arg(args.key_cache_size.to_string())
        .arg("--cache-ttl")
        .arg(format!("{}ms", args.cache_ttl.as_millis()))
        .arg("--threads")
        .arg(args.threads.to_string());
    if !args.options.is_empty() {
        cmd.arg("-o").arg(args.options.join(","));
    }
    if let Some(idle) = args.idle {
        cmd.arg("--idle").arg(format!("{}ms", idle.as_millis()));
    }
    if let Some(a) = &args.audit_log {
        cmd.arg("--audit-log").arg(std::path::absolute(a)?);
    }
    cmd.arg("--log-file").arg(log);
    Ok(cmd)
}

/// Reads the daemon's stdout until `READY` (success) or `ERROR` (its message, and the
/// `HINT` before it, become this command's error), or until the daemon exits.
fn wait_until_ready(
    mut child: Child,
    cipherdir: &Path,
    mountpoint: &Path,
    log: &Path,
) -> anyhow::Result<ExitCode> {
    let stdout = child.stdout.take().expect("piped");
    let mut pending_hint: Option<String> = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        if line == "READY" {
            println!(
                "mounted {} at {} (daemon pid {}, log {})",
                cipherdir.display(),
                mountpoint.display(),
                child.id(),
                log.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(hint) = line.strip_prefix("HINT ") {
            pending_hint = Some(hint.to_owned());
            continue;
        }
        if let Some(msg) = line.strip_prefix("ERROR ") {
            let _ = child.wait();
            if let Some(hint) = pending_hint {
                // main prints "error: ..." next; the hint belongs with it.
                return Err(anyhow::anyhow!("{msg}\nhint: {hint}"));
            }
            bail!("{msg}");
        }
    }
    let status = child.wait()?;
    bail!(
        "the kmsfs daemon exited ({status}) before the mount was ready; see {}",
        log.display()
    )
}

/// `kmsfs unmount`: fusermount3 (or umount(2) as root), then a short wait for the daemon.
pub fn unmount(args: UnmountArgs) -> anyhow::Result<ExitCode> {
    let mp = std::path::absolute(&args.mountpoint)?;
    if !is_mountpoint(&mp) {
        bail!("{} is not mounted", mp.display());
    }
    if kmsfs::mount::is_dead_mount(&mp) {
        // Its daemon is gone (crashed or killed): nothing to flush, detach what is left.
        kmsfs::mount::detach(&mp)
            .with_context(|| format!("cannot detach the dead mount at {}", mp.display()))?;
        println!("unmounted {} (its daemon had died)", mp.display());
        return Ok(ExitCode::SUCCESS);
    }
    let fusermount = Command::new("fusermount3").arg("-u").arg(&mp).status();
    match fusermount {
        Ok(s) if s.success() => {}
        _ if rustix::process::geteuid().is_root() => {
            rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::empty()).with_context(
                || {
                    format!(
                        "cannot unmount {} (busy? close files and cd out of it)",
                        mp.display()
                    )
                },
            )?;
        }
        Ok(_) => bail!(
            "fusermount3 could not unmount {} (busy? close files and cd out of it)",
            mp.display()
        ),
        Err(_) => bail!("fusermount3 not found: install fuse3 (apt-get install fuse3)"),
    }
    // The daemon notices and exits; wait briefly so that scripts can rely on it.
    for _ in 0..100 {
        if !is_mountpoint(&mp) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("unmounted {}", mp.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("300s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
    }
}
