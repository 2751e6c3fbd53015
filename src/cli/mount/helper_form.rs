//! The `mount(8)` helper form of `kmsfs mount`: `mount -t fuse.kmsfs CIPHERDIR MOUNTPOINT
//! -o OPTS` (and fstab lines) run `mount.fuse3`, which runs `kmsfs CIPHERDIR MOUNTPOINT -o
//! OPTS`; a `mount.fuse.kmsfs` symlink to kmsfs is called the same way. This module only
//! turns that form into [`MountArgs`] and hands them to [`super::run`].

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

use super::{parse_duration, run, MountArgs};

/// The `mount(8)` helper form: `mount -t fuse.kmsfs CIPHERDIR MOUNTPOINT -o OPTS` runs
/// `mount.fuse3`, which runs `kmsfs CIPHERDIR MOUNTPOINT -o OPTS`; a `mount.fuse.kmsfs`
/// symlink to kmsfs is called the same way. Returns `None` when `argv` is not that form.
pub fn helper(argv: &[OsString]) -> Option<anyhow::Result<ExitCode>> {
    let prog = Path::new(argv.first()?)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    let by_name = prog.starts_with("mount.kmsfs") || prog.starts_with("mount.fuse.kmsfs");
    let first = argv.get(1)?.to_string_lossy().into_owned();
    let by_shape = argv.len() >= 3
        && !first.starts_with('-')
        && !super::super::is_subcommand(&first)
        && Path::new(&first).is_dir();
    if !by_name && !by_shape {
        return None;
    }
    Some(run_helper(&argv[1..]))
}

/// Mounts as the helper form asks; with `-f` (mount(8)'s "fake") only checks the
/// arguments.
fn run_helper(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let helper = HelperArgs::parse(args)?;
    let mount_args = helper.mount_args()?;
    if helper.fake {
        return Ok(ExitCode::SUCCESS);
    }
    run(mount_args)
}

/// The helper form's arguments as mount(8) passes them.
struct HelperArgs {
    cipherdir: PathBuf,
    mountpoint: PathBuf,
    /// Every `-o` option, in order, split at commas.
    options: Vec<String>,
    /// `-f`: check, do not mount.
    fake: bool,
}

impl HelperArgs {
    /// Splits `CIPHERDIR MOUNTPOINT [-o OPTS]... [-f] [-n] [-s] [-v]`.
    fn parse(args: &[OsString]) -> anyhow::Result<Self> {
        let mut positional = Vec::new();
        let mut options: Vec<String> = Vec::new();
        let mut fake = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.to_str() {
                Some("-o") => {
                    let o = it.next().context("-o needs options")?;
                    options.extend(o.to_string_lossy().split(',').map(str::to_owned));
                }
                Some("-f") => fake = true,
                Some("-n" | "-s" | "-v") => {}
                Some(s) if s.starts_with("-o") => {
                    options.extend(s[2..].split(',').map(str::to_owned))
                }
                _ => positional.push(PathBuf::from(a)),
            }
        }
        let [cipherdir, mountpoint] = <[PathBuf; 2]>::try_from(positional).map_err(|_| {
            anyhow::anyhow!("usage: mount.fuse.kmsfs CIPHERDIR MOUNTPOINT [-o OPTIONS]")
        })?;
        Ok(HelperArgs {
            cipherdir,
            mountpoint,
            options,
            fake,
        })
    }

    /// The `kmsfs mount` arguments that the options ask for, the rest at their defaults.
    fn mount_args(&self) -> anyhow::Result<MountArgs> {
        let mut m = mount_defaults(&self.cipherdir, &self.mountpoint)?;
        for o in self
            .options
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
        {
            apply_option(&mut m, o)?;
        }
        Ok(m)
    }
}

/// `kmsfs mount CIPHERDIR MOUNTPOINT` with every option at its default, read from the
/// same clap definitions so that the two forms cannot drift apart.
fn mount_defaults(cipherdir: &Path, mountpoint: &Path) -> anyhow::Result<MountArgs> {
    #[derive(Parser)]
    struct Mount {
        #[command(flatten)]
        args: MountArgs,
    }
    let argv = [
        OsStr::new("mount"),
        OsStr::new("--"),
        cipherdir.as_os_str(),
        mountpoint.as_os_str(),
    ];
    Ok(Mount::try_parse_from(argv)?.args)
}

/// Applies one `-o` option (`name` or `name=value`) to `m`; the generic options of
/// mount(8), fstab and systemd are accepted and ignored.
fn apply_option(m: &mut MountArgs, option: &str) -> anyhow::Result<()> {
    let (k, v) = option
        .split_once('=')
        .map(|(k, v)| (k, Some(v)))
        .unwrap_or((option, None));
    let need = || v.with_context(|| format!("mount option {k} needs a value ({k}=...)"));
    let duration = || parse_duration(need()?).map_err(anyhow::Error::msg);
    match k {
        "ro" | "rw" | "allow_other" | "allow_root" | "default_permissions" => {
            m.options.push(k.to_owned())
        }
        "audit_log" => m.audit_log = Some(PathBuf::from(need()?)),
        "log_file" => m.log_file = Some(PathBuf::from(need()?)),
        "key_ttl" => m.key_ttl = duration()?,
        "pool_key_lifetime" => m.pool_key_lifetime = duration()?,
        "kms_timeout" => m.kms_timeout = duration()?,
        "kms_prefetch" => m.kms_prefetch = need()?.parse().context("kms_prefetch")?,
        "idle" => m.idle = Some(duration()?),
        "key_cache_size" => m.key_cache_size = need()?.parse().context("key_cache_size")?,
        "cache_ttl" => m.cache_ttl = duration()?,
        "threads" => m.threads = need()?.parse().context("threads")?,
        "foreground" => m.foreground = true,
        "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "nofail" | "_netdev"
        | "exec" | "noexec" | "suid" | "nosuid" | "dev" | "nodev" | "atime" | "noatime"
        | "relatime" | "strictatime" | "nodiratime" | "async" | "sync" | "dirsync" => {}
        _ if k.starts_with("x-") || k.starts_with("comment") => {}
        other => bail!(
            "unknown mount option {other:?} (kmsfs takes ro, rw, allow_other, allow_root, default_permissions, audit_log=, log_file=, key_ttl=, pool_key_lifetime=, kms_timeout=, kms_prefetch=, key_cache_size=, cache_ttl=, threads=, idle=)"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(args: &[&str]) -> anyhow::Result<HelperArgs> {
        HelperArgs::parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn options_become_mount_arguments() {
        let opts = "ro,key_ttl=10m,noauto,x-systemd.automount,,allow_other";
        let h = parse(&["/c", "/m", "-o", opts, "-oidle=30m", "-f", "-n"]).unwrap();
        assert!(h.fake);
        let m = h.mount_args().unwrap();
        assert_eq!(
            (m.cipherdir.to_str(), m.mountpoint.to_str()),
            (Some("/c"), Some("/m"))
        );
        assert_eq!(m.options, ["ro", "allow_other"]);
        assert_eq!(m.key_ttl, Duration::from_secs(600));
        assert_eq!(m.idle, Some(Duration::from_secs(1800)));
        assert!(!m.foreground);
    }

    #[test]
    fn unset_options_keep_the_mount_defaults() {
        let m = parse(&["/c", "/m"]).unwrap().mount_args().unwrap();
        assert_eq!(m.key_ttl, Duration::from_secs(300));
        assert_eq!(m.cache_ttl, Duration::from_secs(5));
        assert_eq!((m.key_cache_size, m.threads), (1024, 16));
        assert!(m.options.is_empty() && m.audit_log.is_none() && m.idle.is_none());
    }

    #[test]
    fn bad_forms_are_refused() {
        assert!(parse(&["/c"]).is_err());
        assert!(parse(&["/c", "/m", "/x"]).is_err());
        assert!(parse(&["/c", "/m", "-o"]).is_err());
        for bad in ["frobnicate", "key_ttl", "key_ttl=soon", "threads=many"] {
            let h = parse(&["/c", "/m", "-o", bad]).unwrap();
            assert!(h.mount_args().is_err(), "{bad}");
        }
    }
}
