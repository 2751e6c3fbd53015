//! `kmsfs fsck` (and `fsck --repair`), `rewrap`, `decrypt` and `export`: offline operations
//! on a volume, with progress on stderr and `--json` on stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kmsfs::ops::{export, fsck, repair, rewrap, walk};
use kmsfs::volume::{default_audit_log, Volume, VolumeConfig, VolumeLock, VolumeOptions};

use super::progress::Progress;

/// fsck exit statuses (as fsck(8)): clean, damage found, could not check.
const FSCK_CLEAN: u8 = 0;
const FSCK_DAMAGED: u8 = 4;
const FSCK_UNCHECKED: u8 = 8;

#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    cipherdir: PathBuf,
    /// Print the report as one JSON object (documented in docs/cli.md).
    #[arg(long)]
    json: bool,
    /// First mend what a crash can leave (kmsfs's temporary files, files of 0 bytes,
    /// long-name files without their entry, torn directory records, slack a cut
    /// truncation left, a file's failing last blocks, cut off), saying each action; then
    /// check. Only on an unmounted volume; nothing that can still be read is removed.
    #[arg(long)]
    repair: bool,
}

#[derive(Debug, clap::Args)]
pub struct RewrapArgs {
    cipherdir: PathBuf,
    /// The KMS key to move every file's data key under (ARN; ids and aliases are
    /// resolved with DescribeKey).
    #[arg(long, value_name = "KEY")]
    to_key: String,
    /// Count what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    /// A file inside a volume's ciphertext directory.
    cipherfile: PathBuf,
    /// Write here instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: Option<PathBuf>,
    /// Write a file even if some blocks fail authentication (those blocks become zeros).
    #[arg(long)]
    force_partial: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    cipherdir: PathBuf,
    /// Empty or new directory to write the plaintext tree into.
    destdir: PathBuf,
    /// Write damaged files too, with their failing blocks as zeros.
    #[arg(long)]
    force_partial: bool,
    /// Give entries their owner and group from the volume (needs root). Without it,
    /// everything belongs to whoever runs export.
    #[arg(long)]
    owners: bool,
    /// Give entries their exact permission bits from the volume, sticky bit included, not
    /// masked by the umask (set-user-ID and set-group-ID bits only with --special).
    #[arg(long)]
    modes: bool,
    /// Restore everything: owners and exact modes (as --owners --modes), set-user-ID and
    /// set-group-ID bits, and make device nodes, FIFOs and sockets. Only for a ciphertext
    /// directory no one else could write: these are not authenticated.
    #[arg(long)]
    special: bool,
    #[arg(long)]
    json: bool,
}

/// Opens a volume for an offline job: its own KMS, the default audit log, no key pool.
fn open_volume(cipherdir: &std::path::Path) -> anyhow::Result<Volume> {
    let cipherdir = std::path::absolute(cipherdir)?;
    let config = VolumeConfig::load(&cipherdir)?;
    let mut opts = VolumeOptions::new(default_audit_log(&config.volume_id));
    opts.pool_target = 0;
    Ok(Volume::open(&cipherdir, opts)?)
}

/// The volume's lock for a tool that changes it: refused while it is mounted (the
/// daemon holds the lock) or another such tool runs.
fn lock_volume(cipherdir: &std::path::Path, tool: &str) -> anyhow::Result<VolumeLock> {
    Ok(VolumeLock::acquire(cipherdir, &format!("kmsfs {tool}"))?)
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialises"));
}

pub fn fsck(args: FsckArgs) -> anyhow::Result<ExitCode> {
    let cannot = |e: anyhow::Error| {
        eprintln!(
            "kmsfs: fsck: could not check {}: {}",
            args.cipherdir.display(),
            super::describe(&e)
        );
        if let Some(hint) = super::hint_for(&e) {
            eprintln!("hint: {hint}");
        }
        Ok(ExitCode::from(FSCK_UNCHECKED))
    };
    // Before the volume is opened, so that a mounted one is refused whatever else fails:
    // by its daemon's lock, or (a daemon that died) by the mount left behind.
    let _lock = match args
        .repair
        .then(|| lock_volume(&args.cipherdir, "fsck --repair"))
    {
        Some(Err(e)) => return cannot(e),
        held => held,
    };
    if args.repair {
        if let Err(e) = repair::refuse_if_mounted(&args.cipherdir) {
            return cannot(e.into());
        }
    }
    let volume = match open_volume(&args.cipherdir) {
        Ok(v) => v,
        Err(e) => return cannot(e),
    };
    let mut progress = Progress::new("fsck");
    let mut update = |d, t| progress.update(d, t);
    let report = if args.repair {
        let report = match repair::repair(&volume, &mut update) {
            Ok(r) => r,
            Err(e) => return cannot(e.into()),
        };
        progress.finish();
        if args.json {
            print_json(&report);
        } else {
            print_repairs(&report);
            print_fsck(&report.check);
        }
        report.check
    } else {
        let report = fsck::fsck(&volume, &mut update);
        progress.finish();
        if args.json {
            print_json(&report);
        } else {
            print_fsck(&report);
        }
        report
    };
    Ok(ExitCode::from(if !report.damaged.is_empty() {
        FSCK_DAMAGED
    } else if !report.unchecked.is_empty() {
        FSCK_UNCHECKED
    } else {
        FSCK_CLEAN
    }))
}

/// What `--repair` did and left, for people: a line per action (with its ciphertext
/// path), then the count. The top directory's path is shown as `/`.
fn print_repairs(report: &repair::RepairReport) {
    let shown = |p: &str| {
        if p.is_empty() {
            "/".to_owned()
        } else {
            p.to_owned()
        }
    };
    for r in &report.repaired {
        println!(
            "REPAIRED {}: {}: {}\n        ciphertext: {}",
            shown(&r.path),
            r.action,
            r.detail,
            r.cipher_path
        );
    }
    for l in &report.left {
        println!(
            "LEFT {}: {}: {}\n        ciphertext: {}",
            shown(&l.path),
            l.problem,
            l.detail,
            l.cipher_path
        );
    }
    println!(
        "{} repaired, {} left as they are",
        report.repaired.len(),
        report.left.len()
    );
}

/// The fsck report for people: each problem, then the totals.
fn print_fsck(report: &fsck::FsckReport) {
    for d in &report.damaged {
        let blocks = if d.bad_blocks > 0 {
            format!(
                " (blocks {:?}{})",
                d.blocks,
                if d.bad_blocks as usize > d.blocks.len() {
                    ", ..."
                } else {
                    ""
                }
            )
        } else {
            String::new()
        };
        println!(
            "DAMAGED {}: {}: {}{blocks}\n        ciphertext: {}",
            d.path, d.problem, d.detail, d.cipher_path
        );
    }
    for u in &report.unchecked {
        println!("NOT CHECKED {}: {}", u.path, u.reason);
    }
    println!(
        "{} files ({} bytes), {} directories, {} symlinks checked: {} damaged, {} not checked",
        report.files,
        report.plaintext_bytes,
        report.directories,
        report.symlinks,
        report.damaged.len(),
        report.unchecked.len()
    );
}

pub fn rewrap(args: RewrapArgs) -> anyhow::Result<ExitCode> {
    let cipherdir = std::path::absolute(&args.cipherdir)?;
    let config = VolumeConfig::load(&cipherdir)?;
    kmsfs::volume::trust::check(&config, &cipherdir)?;
    let _lock = match args.dry_run {
        true => None,
        false => Some(lock_volume(&cipherdir, "rewrap")?),
    };
    let conn = kmsfs::volume::KmsConnection::open(&config.kms)?;
    let mut progress = Progress::new(if args.dry_run {
        "rewrap (dry run)"
    } else {
        "rewrap"
    });
    let report = rewrap::rewrap(
        &cipherdir,
        &conn,
        &args.to_key,
        args.dry_run,
        &mut |d, t| progress.update(d, t),
    )?;
    progress.finish();
    if args.json {
        print_json(&report);
    } else {
        for f in &report.failed {
            println!("FAILED {}: {}", f.cipher_path, f.reason);
        }
        let verb = if args.dry_run { "would move" } else { "moved" };
        println!(
            "{verb} {} files under {} ({} already there{}), {} failed",
            report.files_rewrapped,
            report.dest_key_arn,
            report.files_already_done,
            if report.names_key_rewrapped {
                ", names key too"
            } else {
                ""
            },
            report.failed.len()
        );
        if let Some(v) = &report.key_versions {
            println!(
                "{}: newest version {} (what every header now names), min_decryption_version {}",
                report.dest_key_arn, v.latest_version, v.min_decryption_version
            );
        }
        if !report.failed.is_empty() {
            println!("run the same command again to finish; files not yet moved still read under the old key");
        }
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILURE)
    })
}

pub fn decrypt(args: DecryptArgs) -> anyhow::Result<ExitCode> {
    let Some(root) = walk::volume_root_of(&args.cipherfile) else {
        bail!(
            "{} is not inside a kmsfs ciphertext directory (no kmsfs.conf above it)",
            args.cipherfile.display()
        );
    };
    let volume = open_volume(&root)?;
    let abs = std::path::absolute(&args.cipherfile)?;
    let plain = volume
        .decrypt_path(&abs)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| abs.display().to_string());
    let file = open_cipherfile(&abs)?;
    let result = match &args.output {
        Some(out) => {
            let mode = std::os::unix::fs::PermissionsExt::mode(&file.metadata()?.permissions());
            let mode = export::copy_mode(mode);
            let force = args.force_partial;
            export::decrypt_file_to_path(&volume, file, &abs, &plain, out, mode, force)
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            let force = args.force_partial;
            let r = export::decrypt_to(&volume, file, &abs, &plain, &mut lock, force);
            lock.flush().context("cannot write to stdout")?;
            r
        }
    };
    let d = result?;
    if !d.zeroed_blocks.is_empty() {
        eprintln!(
            "kmsfs: warning: {plain}: blocks {:?} failed authentication and were written as zeros",
            d.zeroed_blocks
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the ciphertext file `path` for `decrypt`: refused, rather than followed or waited
/// on, if it is a symlink, a FIFO or a device, which whoever can write the ciphertext
/// directory could put there.
fn open_cipherfile(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let cannot = || format!("cannot open {}", path.display());
    let parent = path.parent().unwrap_or(std::path::Path::new("/"));
    let name = path.file_name().with_context(cannot)?;
    let dir = rustix::fs::open(parent, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(std::io::Error::from)
        .with_context(cannot)?;
    kmsfs::namespace::records::open_regular(std::os::fd::AsFd::as_fd(&dir), name, false)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open {}: {e}; give the path of a kmsfs file itself (a regular file in the ciphertext directory, not a link to one)",
                path.display()
            )
        })
}

pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let volume = open_volume(&args.cipherdir)?;
    let mut progress = Progress::new("export");
    let opts = export::ExportOptions {
        force_partial: args.force_partial,
        owners: args.owners,
        modes: args.modes,
        special: args.special,
    };
    let report = export::export(&volume, &args.destdir, &opts, &mut |d, t| {
        progress.update(d, t)
    })?;
    progress.finish();
    if args.json {
        print_json(&report);
    } else {
        for d in &report.damaged {
            println!("DAMAGED {d}");
        }
        for s in &report.skipped {
            println!("SKIPPED {s}");
        }
        println!(
            "exported {} files ({} bytes), {} directories, {} symlinks to {}",
            report.files,
            report.bytes,
            report.directories,
            report.symlinks,
            args.destdir.display()
        );
        if report.special_skipped > 0 {
            println!(
                "skipped {} device nodes, FIFOs and sockets (--special makes them)",
                report.special_skipped
            );
        }
    }
    Ok(if report.damaged.is_empty() && report.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILURE)
    })
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A plaintext directory tree to copy in.
    srcdir: PathBuf,
    /// The volume's ciphertext directory (entries go to its root; nothing is overwritten).
    cipherdir: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RekeyArgs {
    cipherdir: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let _lock = lock_volume(&args.cipherdir, "import")?;
    let volume = open_volume(&args.cipherdir)?;
    let mut progress = Progress::new("import");
    let report =
        kmsfs::ops::import::import(&volume, &args.srcdir, &mut |d, t| progress.update(d, t))
            .with_context(|| format!("import from {}", args.srcdir.display()))?;
    progress.finish();
    if args.json {
        print_json(&report);
    } else {
        for s in &report.skipped {
            println!("SKIPPED {s}");
        }
        println!(
            "imported {} files ({} bytes), {} directories, {} symlinks; {} already there",
            report.files, report.bytes, report.directories, report.symlinks, report.already_there
        );
    }
    Ok(if report.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILURE)
    })
}

pub fn rekey(args: RekeyArgs) -> anyhow::Result<ExitCode> {
    let _lock = lock_volume(&args.cipherdir, "rekey")?;
    let volume = open_volume(&args.cipherdir)?;
    let mut progress = Progress::new("rekey");
    let report = kmsfs::ops::rekey::rekey(&volume, &mut |d, t| progress.update(d, t))?;
    progress.finish();
    if args.json {
        print_json(&report);
    } else {
        if report.journal_refused {
            println!("the journal of an earlier run did not authenticate (edited, or left by an older kmsfs): every file was rekeyed");
        }
        for s in &report.skipped {
            println!("SKIPPED {s}");
        }
        for f in &report.failed {
            println!("FAILED {f}");
        }
        println!(
            "rekeyed {} files ({} already done), {} skipped, {} failed",
            report.rekeyed,
            report.already_done,
            report.skipped.len(),
            report.failed.len()
        );
        if !report.failed.is_empty() {
            println!("run the same command again to finish; every file is readable under its old or new key");
        }
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILURE)
    })
}
