//! The seeded workload: several workers at once, each in a top directory of its own (so
//! that each one's model is exact while many operations are in flight), making files of
//! sizes around block and group boundaries, appending, overwriting (a few bytes or 1 MiB),
//! truncating up and down, making directories, renaming within and across directories,
//! using long names, hard links, symlinks and `user.*` xattrs, and fsyncing files
//! (`fsync` and `fdatasync`) and directories. Each operation is begun in the model before
//! its system calls and committed after they were answered (`model.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::model::{DirId, FileId, Model, Node};
use super::rng::Rng;

const B: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Sizes around the block (4096) and group (64 and 109 blocks, by format version)
/// boundaries.
const SIZES: [u64; 10] = [
    0,
    1,
    B - 1,
    B,
    B + 1,
    64 * B - 1,
    64 * B + 1,
    109 * B - 1,
    109 * B + 1,
    MIB + 3,
];

/// What the workers share with the round that runs them.
#[derive(Default)]
pub struct Shared {
    /// Set by the round before it crashes anything: an error after this is the crash.
    pub crashed: AtomicBool,
    /// Set to make the workers stop after their current operation.
    pub stop: AtomicBool,
    /// Operations answered so far, by all workers.
    pub ops: AtomicUsize,
}

/// What a worker hands back: its model and, if an operation failed before the crash, why.
pub struct Outcome {
    pub model: Model,
    pub failure: Option<String>,
    pub ops: usize,
    /// The worker's system calls in order (`ctx`), relative to the mount.
    pub trace: Vec<String>,
}

/// Which operations a worker draws from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mix {
    /// All of them, by weight.
    All,
    /// Only creates (each with its content), to crash in the middle of many.
    Creates,
}

pub struct Worker {
    mnt: PathBuf,
    pub model: Model,
    rng: Rng,
    names: u64,
    mix: Mix,
    /// The round's flags, while running: a sync answered after the crash began is not
    /// counted as durable.
    shared: Option<Arc<Shared>>,
}

type Step = Result<(), String>;

thread_local! {
    /// The system calls this thread's worker made, answered or not, to say on a failure.
    static TRACE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn ctx<T>(what: &str, path: &Path, r: std::io::Result<T>) -> Result<T, String> {
    let line = match &r {
        Ok(_) => format!("{what} {}", path.display()),
        Err(e) => format!("{what} {}: {e}", path.display()),
    };
    TRACE.with(|t| t.borrow_mut().push(line));
    r.map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl Worker {
    /// A worker for top directory `top` (already made and durable) under `mnt`.
    pub fn new(mnt: &Path, top: &str, rng: Rng, mix: Mix) -> Worker {
        Worker {
            mnt: mnt.to_path_buf(),
            model: Model::new(top),
            rng,
            names: 0,
            mix,
            shared: None,
        }
    }

    /// Runs until told to stop or an operation fails.
    pub fn run(mut self, shared: Arc<Shared>, max_ops: usize) -> Outcome {
        let mut ops = 0;
        let mut failure = None;
        self.shared = Some(shared.clone());
        while !shared.stop.load(Ordering::SeqCst) && ops < max_ops {
            let r = self.step();
            if let Err(e) = r {
                if !shared.crashed.load(Ordering::SeqCst) {
                    failure = Some(format!("{} before the crash: {e}", self.model.top));
                }
                break;
            }
            ops += 1;
            shared.ops.fetch_add(1, Ordering::SeqCst);
        }
        let mnt = format!("{}/", self.mnt.display());
        let trace = TRACE.with(|t| std::mem::take(&mut *t.borrow_mut()));
        Outcome {
            model: self.model,
            failure,
            ops,
            trace: trace.iter().map(|l| l.replace(&mnt, "")).collect(),
        }
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// A fresh name: short, or long (200 characters and more) one time in six.
    fn new_name(&mut self, prefix: &str) -> String {
        self.names += 1;
        let base = format!("{prefix}{}", self.names);
        if self.rng.chance(16) {
            let len = self.rng.range(200, 250) as usize;
            let pad: String = (base.len()..len)
                .map(|_| (b'a' + self.rng.below(26) as u8) as char)
                .collect();
            base + &pad
        } else {
            base
        }
    }

    fn any_dir(&mut self) -> DirId {
        self.rng.below(self.model.dirs.len() as u64) as usize
    }

    fn any_file(&mut self) -> Option<(DirId, String, FileId)> {
        let files: Vec<_> = self
            .model
            .entries()
            .into_iter()
            .filter_map(|(d, n, node)| match node {
                Node::File(f) => Some((d, n, f)),
                _ => None,
            })
            .collect();
        (!files.is_empty()).then(|| self.rng.pick(&files).clone())
    }

    /// One operation, chosen by weight.
    fn step(&mut self) -> Step {
        if self.mix == Mix::Creates {
            return self.create();
        }
        match self.rng.below(100) {
            0..=19 => self.create(),
            20..=27 => self.append(),
            28..=35 => self.overwrite(false),
            36..=38 => self.overwrite(true),
            39..=44 => self.truncate(),
            45..=49 => self.mkdir(),
            50..=57 => self.rename_file(),
            58..=60 => self.rename_dir(),
            61..=64 => self.link(),
            65..=68 => self.symlink(),
            69..=72 => self.unlink(),
            73..=76 => self.setxattr(),
            77..=88 => self.fsync_file(),
            _ => self.fsync_dir(),
        }
    }

    fn create(&mut self) -> Step {
        let d = self.any_dir();
        let name = self.new_name("f");
        let size = if self.rng.chance(70) {
            *self.rng.pick(&SIZES[..9])
        } else if self.rng.chance(30) {
            SIZES[9]
        } else {
            self.rng.below(3 * B)
        };
        let content = self.rng.bytes(size as usize);
        let path = self.abs(&self.model.path(d, &name));
        self.model.begin_name(d, &name);
        // Write-only handles bypass the page cache (FOPEN_DIRECT_IO); use both kinds.
        let read = self.rng.chance(50);
        let mut f = ctx(
            "create",
            &path,
            OpenOptions::new()
                .read(read)
                .write(true)
                .create_new(true)
                .open(&path),
        )?;
        let id = self.model.new_file();
        self.model.set_name(d, &name, Some(Node::File(id)));
        if size > 0 {
            self.model.begin_write(id, content.clone());
            ctx(&format!("write 0+{size}"), &path, f.write_all(&content))?;
            self.model.commit_write(id);
        }
        if self.rng.chance(30) {
            ctx("fsync", &path, f.sync_all())?;
            if !self.crash_began() {
                self.model.file_synced(id);
            }
        }
        Ok(())
    }

    fn append(&mut self) -> Step {
        let Some((d, name, id)) = self.any_file() else {
            return self.create();
        };
        let len = if self.rng.chance(20) {
            self.rng.range(B, 40 * B)
        } else {
            self.rng.range(1, 2 * B)
        };
        let extra = self.rng.bytes(len as usize);
        let mut after = self.model.files[id].data.clone();
        after.extend_from_slice(&extra);
        let path = self.abs(&self.model.path(d, &name));
        let mut f = ctx("open", &path, OpenOptions::new().append(true).open(&path))?;
        self.model.begin_write(id, after);
        ctx(&format!("append +{len}"), &path, f.write_all(&extra))?;
        self.model.commit_write(id);
        Ok(())
    }

    /// A few bytes (often across a block boundary) or 1 MiB, at or past the end too.
    fn overwrite(&mut self, big: bool) -> Step {
        let Some((d, name, id)) = self.any_file() else {
            return self.create();
        };
        let old_len = self.model.files[id].data.len() as u64;
        let len = if big { MIB } else { self.rng.range(1, 64) };
        let off = if !big && old_len > B && self.rng.chance(50) {
            // Straddle a block boundary.
            let block = self.rng.range(1, old_len / B);
            (block * B).saturating_sub(self.rng.below(len))
        } else {
            self.rng.below(old_len + 1)
        };
        let bytes = self.rng.bytes(len as usize);
        let mut after = self.model.files[id].data.clone();
        let end = (off + len) as usize;
        if after.len() < end {
            after.resize(end, 0);
        }
        after[off as usize..end].copy_from_slice(&bytes);
        let path = self.abs(&self.model.path(d, &name));
        let f = ctx(
            "open",
            &path,
            OpenOptions::new()
                .write(true)
                .read(self.rng.chance(50))
                .open(&path),
        )?;
        self.model.begin_write(id, after);
        ctx(
            &format!("pwrite {off}+{len}"),
            &path,
            f.write_all_at(&bytes, off),
        )?;
        self.model.commit_write(id);
        Ok(())
    }

    fn truncate(&mut self) -> Step {
        let Some((d, name, id)) = self.any_file() else {
            return self.create();
        };
        let old_len = self.model.files[id].data.len() as u64;
        let new_len = match self.rng.below(4) {
            0 => old_len / 2,
            1 => self.rng.below(old_len + 1),
            2 => old_len + self.rng.range(1, 3 * B),
            _ => *self.rng.pick(&SIZES[..9]),
        };
        let mut after = self.model.files[id].data.clone();
        after.resize(new_len as usize, 0);
        let path = self.abs(&self.model.path(d, &name));
        let f = ctx("open", &path, OpenOptions::new().write(true).open(&path))?;
        self.model.begin_write(id, after);
        ctx(
            &format!("truncate {old_len}->{new_len}"),
            &path,
            f.set_len(new_len),
        )?;
        self.model.commit_write(id);
        Ok(())
    }

    fn mkdir(&mut self) -> Step {
        let d = self.any_dir();
        if self.model.depth(d) >= 3 {
            return self.fsync_dir();
        }
        let name = self.new_name("d");
        let path = self.abs(&self.model.path(d, &name));
        self.model.begin_name(d, &name);
        ctx("mkdir", &path, fs::create_dir(&path))?;
        let new = self.model.new_dir(d, &name);
        self.model.set_name(d, &name, Some(Node::Dir(new)));
        Ok(())
    }

    /// Within its directory or into another, to a new name or over another file.
    fn rename_file(&mut self) -> Step {
        let Some((d1, n1, id)) = self.any_file() else {
            return self.create();
        };
        let d2 = if self.rng.chance(50) {
            d1
        } else {
            self.any_dir()
        };
        let victims: Vec<String> = self.model.dirs[d2]
            .entries
            .iter()
            .filter(|(n, node)| **n != n1 && matches!(node, Node::File(f) if *f != id))
            .map(|(n, _)| n.clone())
            .collect();
        let n2 = if !victims.is_empty() && self.rng.chance(25) {
            self.rng.pick(&victims).clone()
        } else {
            self.new_name("r")
        };
        let (from, to) = (self.model.path(d1, &n1), self.model.path(d2, &n2));
        self.model.begin_name(d1, &n1);
        self.model.begin_name(d2, &n2);
        ctx(
            "rename",
            &self.abs(&from),
            fs::rename(self.abs(&from), self.abs(&to)),
        )?;
        self.model.set_name(d1, &n1, None);
        self.model.set_name(d2, &n2, Some(Node::File(id)));
        Ok(())
    }

    /// A directory without subdirectories, into another directory not below it.
    fn rename_dir(&mut self) -> Step {
        let leaves: Vec<DirId> = (1..self.model.dirs.len())
            .filter(|&d| {
                self.model.dirs[d]
                    .entries
                    .values()
                    .all(|n| !matches!(n, Node::Dir(_)))
            })
            .collect();
        if leaves.is_empty() {
            return self.mkdir();
        }
        let moved = *self.rng.pick(&leaves);
        let dest = self.any_dir();
        if self.model.is_within(dest, moved) || self.model.depth(dest) >= 3 {
            return self.fsync_dir();
        }
        let (d1, n1) = self.model.dirs[moved].parent.clone().unwrap();
        let n2 = self.new_name("m");
        let (from, to) = (self.model.path(d1, &n1), self.model.path(dest, &n2));
        self.model.begin_name(d1, &n1);
        self.model.begin_name(dest, &n2);
        ctx(
            "rename",
            &self.abs(&from),
            fs::rename(self.abs(&from), self.abs(&to)),
        )?;
        self.model.set_name(d1, &n1, None);
        self.model.set_name(dest, &n2, Some(Node::Dir(moved)));
        self.model.dirs[moved].parent = Some((dest, n2));
        Ok(())
    }

    fn link(&mut self) -> Step {
        let Some((d1, n1, id)) = self.any_file() else {
            return self.create();
        };
        let d2 = self.any_dir();
        let n2 = self.new_name("h");
        let (from, to) = (self.model.path(d1, &n1), self.model.path(d2, &n2));
        self.model.begin_name(d2, &n2);
        ctx(
            "link",
            &self.abs(&to),
            fs::hard_link(self.abs(&from), self.abs(&to)),
        )?;
        self.model.set_name(d2, &n2, Some(Node::File(id)));
        Ok(())
    }

    fn symlink(&mut self) -> Step {
        let d = self.any_dir();
        let name = self.new_name("s");
        let len = self.rng.range(1, 120) as usize;
        let target: String = (0..len)
            .map(|_| *self.rng.pick(b"abcdefghij/._-0123456789") as char)
            .collect();
        let path = self.abs(&self.model.path(d, &name));
        self.model.begin_name(d, &name);
        ctx("symlink", &path, std::os::unix::fs::symlink(&target, &path))?;
        self.model.set_name(d, &name, Some(Node::Link(target)));
        Ok(())
    }

    fn unlink(&mut self) -> Step {
        let all: Vec<_> = self
            .model
            .entries()
            .into_iter()
            .filter(|(_, _, n)| !matches!(n, Node::Dir(_)))
            .collect();
        if all.is_empty() {
            return self.create();
        }
        let (d, name, _) = self.rng.pick(&all).clone();
        let path = self.abs(&self.model.path(d, &name));
        self.model.begin_name(d, &name);
        ctx("unlink", &path, fs::remove_file(&path))?;
        self.model.set_name(d, &name, None);
        Ok(())
    }

    fn setxattr(&mut self) -> Step {
        let Some((d, name, id)) = self.any_file() else {
            return self.create();
        };
        let key = format!("user.k{}", self.rng.below(3));
        let len = self.rng.below(200) as usize;
        let value = self.rng.bytes(len);
        let path = self.abs(&self.model.path(d, &name));
        self.model.files[id].xattrs_unsure = true;
        let r = rustix::fs::setxattr(&path, &key, &value, rustix::fs::XattrFlags::empty());
        ctx("setxattr", &path, r.map_err(std::io::Error::from))?;
        let file = &mut self.model.files[id];
        file.xattrs.insert(key, value);
        file.xattrs_unsure = false;
        Ok(())
    }

    /// `fsync` or `fdatasync` of a file, through a handle of its own.
    fn fsync_file(&mut self) -> Step {
        let Some((d, name, id)) = self.any_file() else {
            return self.fsync_dir();
        };
        let path = self.abs(&self.model.path(d, &name));
        let f = ctx("open", &path, File::open(&path))?;
        if self.rng.chance(50) {
            ctx("fsync", &path, f.sync_all())?;
        } else {
            ctx("fdatasync", &path, f.sync_data())?;
        }
        if !self.crash_began() {
            self.model.file_synced(id);
        }
        Ok(())
    }

    /// `fsync` of a directory (opened, then `sync_all`).
    fn fsync_dir(&mut self) -> Step {
        let d = self.any_dir();
        let path = self.abs(&self.model.dir_path(d));
        let f = ctx("open", &path, File::open(&path))?;
        ctx("fsync", &path, f.sync_all())?;
        if !self.crash_began() {
            self.model.dir_synced(d);
        }
        Ok(())
    }

    /// Whether the round has begun its crash: a sync answered since may have raced it (a
    /// shut-down ext4 can answer an `fsync` under way without making its data durable).
    fn crash_began(&self) -> bool {
        let shared = self.shared.as_ref();
        shared.is_some_and(|s| s.crashed.load(Ordering::SeqCst))
    }
}
