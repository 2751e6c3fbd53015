//! Mounting a volume: checks that say what to do when something is missing, the FUSE
//! session with its worker threads, and hardening of the daemon process. The command line
//! (`kmsfs mount`) adds daemonizing and signals on top.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption};

use crate::fs::KmsFs;
use crate::volume::{LockError, Volume, VolumeError, VolumeLock, VolumeOptions};

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    /// `-o default_permissions`: have the kernel check permission bits even where
    /// [`MountOptions::kernel_checks_permissions`] finds no need.
    pub default_permissions: bool,
    /// FUSE worker threads (requests served in parallel).
    pub threads: usize,
    /// How long the kernel may cache names and attributes.
    pub cache_ttl: std::time::Duration,
    pub volume: VolumeOptions,
}

impl MountOptions {
    /// Whether the kernel checks permission bits (`default_permissions`). It must whenever
    /// anyone but root can reach the mount: with `allow_other` or `allow_root`, or when the
    /// daemon is not root. A private mount of a root daemon is different: the kernel lets
    /// through only processes whose every user and group id is 0, and the bits allow root
    /// everything but running a file with no x bit, which the kernel checks either way
    /// (and `access` answers the same, see `KmsFs::access`). Leaving the check out saves a
    /// GETATTR of the directory after every create, unlink and rename, which the check
    /// would need because those change the directory. What it gives up: a root process
    /// stripped of `CAP_DAC_OVERRIDE` is not held to the bits (`-o default_permissions`
    /// keeps the check).
    pub fn kernel_checks_permissions(&self) -> bool {
        self.default_permissions
            || self.allow_other
            || self.allow_root
            || !rustix::process::geteuid().is_root()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mountpoint {0} does not exist; create it with mkdir")]
    NoMountpoint(PathBuf),
    #[error("mountpoint {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("mountpoint {0} is not empty; pick an empty directory")]
    NotEmpty(PathBuf),
    #[error("mountpoint {0} is busy: something is already mounted there (unmount it with `kmsfs unmount {0}`)")]
    Busy(PathBuf),
    #[error("FUSE is not available: /dev/fuse is missing (load the fuse kernel module)")]
    NoFuseDevice,
    #[error("fusermount3 not found: install fuse3 (apt-get install fuse3)")]
    NoFusermount,
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot mount on {path}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A live mount. Dropping it unmounts.
pub struct Mounted {
    session: BackgroundSession,
    volume: Arc<Volume>,
    activity: Arc<crate::control::Activity>,
    /// Held until the daemon ends: no second mount or changing tool meanwhile.
    lock: Option<VolumeLock>,
}

impl Mounted {
    /// Whether the session has ended (unmounted from outside, e.g. `fusermount3 -u`).
    pub fn is_finished(&self) -> bool {
        self.session.guard.is_finished()
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    pub fn activity(&self) -> &Arc<crate::control::Activity> {
        &self.activity
    }

    /// Unmounts, waits for the session to end, and wipes every key.
    pub fn unmount(self) -> std::io::Result<()> {
        let result = if self.is_finished() {
            // Unmounted from outside: the session is over. Dropping it would try to
            // unmount the path again, which could hit a new mount already made there.
            std::mem::forget(self.session);
            Ok(())
        } else {
            self.session.umount_and_join()
        };
        self.volume.wipe_keys();
        result
    }
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Checks the mountpoint and the FUSE setup, with errors that say what to do. A kmsfs
/// mount left there by a daemon that died is detached first (with a log line), so that
/// mounting again after a crash just works.
pub fn preflight(mountpoint: &Path) -> Result<(), MountError> {
    if is_dead_mount(mountpoint) {
        tracing::warn!(
            "{}: a kmsfs mount whose daemon is gone (crashed or killed); detaching it",
            mountpoint.display()
        );
        detach(mountpoint).map_err(|source| MountError::Mount {
            path: mountpoint.into(),
            source,
        })?;
    }
    let meta = match std::fs::metadata(mountpoint) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MountError::NoMountpoint(mountpoint.into()))
        }
        Err(e) if is_disconnected(&e) => return Err(MountError::Busy(mountpoint.into())),
        Err(source) => {
            return Err(MountError::Mount {
                path: mountpoint.into(),
                source,
            })
        }
    };
    if !meta.is_dir() {
        return Err(MountError::NotADirectory(mountpoint.into()));
    }
    if is_mountpoint(mountpoint) {
        return Err(MountError::Busy(mountpoint.into()));
    }
    if std::fs::read_dir(mountpoint)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        return Err(MountError::NotEmpty(mountpoint.into()));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuseDevice);
    }
    if !rustix::process::geteuid().is_root() && !on_path("fusermount3") {
        return Err(MountError::NoFusermount);
    }
    Ok(())
}

/// Whether `path` is listed as a mount point in /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> bool {
    mount_source(path).is_some()
}

/// The filesystem type (`fuse`, `ext4`, ...) and source (for kmsfs, the ciphertext
/// directory) of the mount at `path`, from /proc/self/mountinfo; `None` if nothing is
/// mounted there. Works on a mount whose daemon is gone, which `stat` cannot look at.
pub fn mount_source(path: &Path) -> Option<(String, String)> {
    // The last component is not resolved: on a dead FUSE mount that fails.
    let abs = std::path::absolute(path).ok()?;
    let canon = match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).ok()?.join(name),
        _ => abs,
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = canon.to_string_lossy().replace(' ', "\\040");
    // The last line for a mount point is the mount on top.
    info.lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .find_map(|l| {
            let mut after = l.split(" - ").nth(1)?.split(' ');
            let fstype = after.next()?.to_owned();
            let source = after.next()?.replace("\\040", " ");
            Some((fstype, source))
        })
}

/// Whether a kmsfs mount at `path` has lost its daemon ("transport endpoint is not
/// connected", or "software caused connection abort").
pub fn is_dead_mount(path: &Path) -> bool {
    let Some((fstype, source)) = mount_source(path) else {
        return false;
    };
    // A FUSE mount whose source is a kmsfs volume.
    (fstype == "fuse" || fstype == "fuse.kmsfs")
        && crate::volume::VolumeConfig::path_in(Path::new(&source)).is_file()
        && std::fs::metadata(path).is_err_and(|e| is_disconnected(&e))
}

/// Whether an error says the FUSE daemon behind a mount is gone: ENOTCONN once its device
/// is closed, ECONNABORTED while the kernel aborts its requests.
fn is_disconnected(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, NotConnected};
    matches!(e.kind(), NotConnected | ConnectionAborted)
}

/// Detaches the mount at `path` at once (`fusermount3 -u -z`, or as root a lazy
/// `umount2`): what is left of a mount whose daemon is gone.
pub fn detach(path: &Path) -> std::io::Result<()> {
    let lazy = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status();
    if lazy.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)?;
    Ok(())
}

/// Gives the daemon enough file descriptors for one per known inode (every command is
/// already non-dumpable: [`crate::secret::protect_process`]).
pub fn raise_fd_limit() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    // Root may raise the hard limit too, up to the kernel's nr_open: every inode the kernel
    // holds costs a descriptor, so a hard limit such as the 20,000 some machines set would
    // stop a mount at that many files created.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    for max in [nr_open, lim.maximum].into_iter().flatten() {
        let raised = rustix::process::Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        if rustix::process::setrlimit(rustix::process::Resource::Nofile, raised).is_ok() {
            break;
        }
    }
}

/// Opens the volume and mounts it at `mountpoint`.
pub fn mount(
    cipherdir: &Path,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<Mounted, MountError> {
    preflight(mountpoint)?;
    let lock = lock_for_mount(cipherdir, mountpoint, opts.read_only)?;
    let volume = Arc::new(Volume::open(cipherdir, opts.volume.clone())?);
    volume.check_kms()?;
    let mut mounted = mount_volume(volume, mountpoint, &opts)?;
    mounted.lock = lock;
    Ok(mounted)
}

/// The volume's lock for a mount at `mountpoint`. A read-only mount of a ciphertext
/// directory nobody here can write (a read-only medium, another user's backup) goes
/// without: no one on this host can change the volume under it.
fn lock_for_mount(
    cipherdir: &Path,
    mountpoint: &Path,
    read_only: bool,
) -> Result<Option<VolumeLock>, MountError> {
    let what = format!("kmsfs mount at {}", mountpoint.display());
    match VolumeLock::acquire(cipherdir, &what) {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Io { source, .. })
            if read_only
                && matches!(
                    source.kind(),
                    std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
                ) =>
        {
            tracing::info!(
                "read-only mount of a ciphertext directory this user cannot write: no volume lock"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Format version 4 keeps a block through a power cut only where the filesystem below
/// writes a page whole (`docs/format.md`, "Layout, version 4"): says so when its block is
/// smaller than a page.
fn warn_if_pages_can_tear(volume: &Volume) {
    let page = crate::format::PAGE;
    if !volume.layout().is_paged() {
        return;
    }
    match rustix::fs::statvfs(volume.cipherdir()) {
        Ok(st) if st.f_bsize < page => tracing::warn!(
            "{}: the filesystem's blocks are {} bytes, smaller than a page: after a power cut a block being written may fail authentication; a filesystem with {page}-byte blocks keeps it (docs/format.md, \"Layout, version 4\")",
            volume.cipherdir().display(),
            st.f_bsize
        ),
        _ => {}
    }
}

/// Mounts an already opened volume.
pub fn mount_volume(
    volume: Arc<Volume>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<Mounted, MountError> {
    // The kernel applies each caller's umask before a create reaches us; ours must not
    // apply a second time.
    rustix::process::umask(rustix::fs::Mode::empty());
    warn_if_pages_can_tear(&volume);
    volume.start_prefetch();
    let fs = KmsFs::new(volume.clone(), opts.cache_ttl).map_err(|source| MountError::Mount {
        path: volume.cipherdir().into(),
        source,
    })?;
    let mut options = vec![
        MountOption::FSName(volume.cipherdir().to_string_lossy().into_owned()),
        MountOption::Subtype("kmsfs".into()),
    ];
    if opts.kernel_checks_permissions() {
        options.push(MountOption::DefaultPermissions);
    }
    if opts.read_only {
        options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = options;
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    } else if opts.allow_root {
        config.acl = fuser::SessionACL::RootAndOwner;
    }
    config.n_threads = Some(opts.threads.max(1));
    let activity = fs.activity();
    let notifier = fs.notifier_slot();
    config.clone_fd = true;
    let session =
        fuser::spawn_mount(fs, mountpoint, &config).map_err(|source| MountError::Mount {
            path: mountpoint.into(),
            source,
        })?;
    let _ = notifier.set(session.notifier());
    raise_readahead(mountpoint, crate::file::on_local_disk(volume.cipherdir()));
    Ok(Mounted {
        session,
        volume,
        activity,
        lock: None,
    })
}

/// Readahead asked of the kernel for the mount, in KiB, where the ciphertext is on a local
/// disk: sixteen requests of 1 MiB, so that while the reader copies one MiB the daemon is
/// already opening the next ones on the other core, and the disk has enough of them to
/// read at once: each takes its ciphertext from the disk directly (`file/direct.rs`),
/// without the readahead of the ciphertext file that the page cache would give. Smaller
/// windows measured slower and larger ones no faster (`docs/performance.md`, "16 MiB
/// readahead").
const READAHEAD_KB: u32 = 16384;
/// Elsewhere (reads through the page cache): four requests of 1 MiB, which measured faster
/// there than larger windows.
const READAHEAD_CACHED_KB: u32 = 4096;

/// Raises the mount's readahead window from the kernel's 128 KiB (which FUSE cannot raise
/// at init: the daemon may only lower it) by writing the mount's `read_ahead_kb` in sysfs.
/// Sequential reads then arrive as 1 MiB requests instead of 128 KiB ones, several at a
/// time: fewer round trips, one positional read of the ciphertext per MiB, both cores
/// busy. Only root may write it; for anyone else this does nothing (the mount works the
/// same, a little slower).
fn raise_readahead(mountpoint: &Path, direct_reads: bool) {
    let kb = if direct_reads {
        READAHEAD_KB
    } else {
        READAHEAD_CACHED_KB
    };
    let Ok(st) = rustix::fs::stat(mountpoint) else {
        return;
    };
    let dev = st.st_dev;
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => tracing::debug!("readahead of {} set to {kb} KiB", mountpoint.display()),
        Err(e) => tracing::debug!("cannot raise readahead ({path}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::MountOptions;
    use crate::volume::VolumeOptions;

    fn opts() -> MountOptions {
        MountOptions {
            read_only: false,
            allow_other: false,
            allow_root: false,
            default_permissions: false,
            threads: 1,
            cache_ttl: std::time::Duration::from_secs(1),
            volume: VolumeOptions::new("/nonexistent/audit.jsonl".into()),
        }
    }

    #[test]
    fn the_kernel_checks_permissions_unless_only_root_can_reach_the_mount() {
        let root = rustix::process::geteuid().is_root();
        assert_eq!(opts().kernel_checks_permissions(), !root);
        let mut o = opts();
        o.allow_other = true;
        assert!(o.kernel_checks_permissions());
        let mut o = opts();
        o.allow_root = true;
        assert!(o.kernel_checks_permissions());
        let mut o = opts();
        o.default_permissions = true;
        assert!(o.kernel_checks_permissions());
    }
}
