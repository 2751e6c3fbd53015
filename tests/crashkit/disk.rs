//! A small ext4 filesystem of its own for one crash test: a sparse image file on a loop
//! device, mounted, that can lose power (`xfs_io -x -c shutdown` without `-f`: the journal
//! is not flushed, so what was not committed is gone, as after a power cut) and be
//! mounted again (the journal replays). Dropping it unmounts the ext4, detaches the loop
//! device and leaves the image to the temporary directory that holds it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The image's size: sparse, so it costs only what is written.
const IMAGE_BYTES: u64 = 512 << 20;

pub struct Disk {
    pub image: PathBuf,
    pub dev: String,
    /// Where the ext4 is mounted.
    pub mnt: PathBuf,
    mounted: bool,
}

/// Runs `cmd`, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Disk {
    /// A new ext4 in `dir/disk.img`, mounted at `dir/ext4`.
    pub fn new(dir: &Path) -> Disk {
        Self::with_blocks(dir, 4096)
    }

    /// [`Disk::new`] with filesystem blocks of `block` bytes.
    pub fn with_blocks(dir: &Path, block: u32) -> Disk {
        assert!(
            Path::new("/usr/sbin/xfs_io").exists() || which("xfs_io"),
            "crash tests need xfs_io (apt-get install xfsprogs; scripts/setup.sh does)"
        );
        let image = dir.join("disk.img");
        let mnt = dir.join("ext4");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(IMAGE_BYTES)
            .unwrap();
        // 4 KiB blocks (a page each) by default, stated rather than left to mke2fs, which
        // picks by size.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", &block.to_string()])
            .arg(&image));
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&image))
            .trim()
            .to_owned();
        // Writes then wait for a page on its way to the disk instead of changing it, as
        // format version 4 needs of a disk (`docs/format.md`, "Layout, version 4"); set
        // before the ext4 is mounted, which is when it counts.
        let dev_name = Path::new(&dev).file_name().unwrap().to_string_lossy();
        let stable = format!("/sys/block/{dev_name}/queue/stable_writes");
        if let Err(e) = std::fs::write(&stable, "1") {
            eprintln!("crash disk: cannot set {stable}: {e}");
        }
        let mut disk = Disk {
            image,
            dev,
            mnt,
            mounted: false,
        };
        disk.mount();
        disk
    }

    /// Mounts the ext4 (replaying its journal after a power cut).
    pub fn mount(&mut self) {
        assert!(!self.mounted);
        // KMSFS_CRASH_EXT4_OPTS: mount options to try (`nodioread_nolock`, `data=journal`).
        let opts = std::env::var("KMSFS_CRASH_EXT4_OPTS").unwrap_or_default();
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "ext4", &self.dev]).arg(&self.mnt);
        if !opts.is_empty() {
            cmd.args(["-o", &opts]);
        }
        run(&mut cmd);
        self.mounted = true;
    }

    /// The power cut: the ext4 stops at once, its journal not flushed. Everything on it
    /// then fails with EIO until it is unmounted and mounted again.
    pub fn shut_down(&self) {
        run(Command::new("xfs_io")
            .args(["-x", "-c", "shutdown"])
            .arg(&self.mnt));
    }

    /// Unmounts the ext4. Never lazily while it may be mounted again: a lazily detached
    /// superblock would be found again by the next mount of the same device, still shut
    /// down. Panics if it stays busy.
    pub fn unmount(&mut self) {
        assert!(self.mounted);
        let mut last = String::new();
        for _ in 0..100 {
            let out = Command::new("umount").arg(&self.mnt).output().unwrap();
            if out.status.success() {
                self.mounted = false;
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cannot unmount the ext4 at {}: {last}", self.mnt.display());
    }
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.mounted {
            let mut done = false;
            for _ in 0..50 {
                if Command::new("umount")
                    .arg(&self.mnt)
                    .output()
                    .is_ok_and(|o| o.status.success())
                {
                    done = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !done {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}
