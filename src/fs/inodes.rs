//! The inode table: one `O_PATH` descriptor per inode the kernel knows, keyed by the
//! backing inode number (so `stat` and `readdir` agree), with its lookup count and the
//! last name it was seen under (for logs, the audit log and the names binding).
//! Descriptors rather than paths keep operations correct across renames and unlinks.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::fs::{FileType as RxType, Stat};

use super::errno::FsError;
use crate::namespace::DirNames;

pub const ROOT: u64 = 1;

pub struct Inode {
    pub ino: u64,
    fd: OwnedFd,
    /// The entry's type (in the ciphertext directory, as in the mount).
    pub kind: RxType,
    state: Mutex<InodeState>,
    /// A directory's name cipher, loaded on first use (it never changes).
    pub dir_names: OnceLock<Arc<DirNames>>,
    /// Open handles whose reads go through the kernel's page cache (`file_ops.rs`).
    cached_handles: AtomicUsize,
}

struct InodeState {
    nlookup: u64,
    parent: u64,
    name: OsString,
}

impl Inode {
    fn new(ino: u64, fd: OwnedFd, kind: RxType, parent: u64, name: &OsStr) -> Arc<Self> {
        Arc::new(Self {
            ino,
            fd,
            kind,
            state: Mutex::new(InodeState {
                nlookup: 1,
                parent,
                name: name.to_owned(),
            }),
            dir_names: OnceLock::new(),
            cached_handles: AtomicUsize::new(0),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn parent_and_name(&self) -> (u64, OsString) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.parent, s.name.clone())
    }

    /// Counts a handle whose reads the kernel caches, opened (`true`) or released.
    pub fn count_cached_handle(&self, opened: bool) {
        if opened {
            self.cached_handles.fetch_add(1, Ordering::Relaxed);
        } else {
            self.cached_handles.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a handle that reads through the kernel's page cache is open.
    pub fn has_cached_handles(&self) -> bool {
        self.cached_handles.load(Ordering::Relaxed) > 0
    }
}

#[derive(Default)]
pub struct Inodes {
    by_ino: Mutex<HashMap<u64, Arc<Inode>>>,
    root_backing_ino: u64,
}

impl Inodes {
    pub fn new(root_fd: OwnedFd, root_stat: &Stat) -> Self {
        let root = Inode::new(ROOT, root_fd, RxType::Directory, ROOT, OsStr::new(""));
        Self {
            by_ino: Mutex::new(HashMap::from([(ROOT, root)])),
            root_backing_ino: root_stat.st_ino,
        }
    }

    /// The FUSE inode number for a backing inode number.
    pub fn fuse_ino(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_backing_ino {
            ROOT
        } else {
            backing_ino
        }
    }

    pub fn get(&self, ino: u64) -> Result<Arc<Inode>, FsError> {
        let map = self.by_ino.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ino).cloned().ok_or(FsError::Stale)
    }

    /// Records a lookup of `name` in `parent`, given an `O_PATH` descriptor for it and its
    /// stat: the existing inode (one more lookup) or a new one.
    pub fn remember(&self, parent: u64, name: &OsStr, fd: OwnedFd, st: &Stat) -> Arc<Inode> {
        let ino = self.fuse_ino(st.st_ino);
        let mut map = self.by_ino.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = map.get(&ino) {
            let mut s = existing.state.lock().unwrap_or_else(|p| p.into_inner());
            s.nlookup += 1;
            if ino != ROOT {
                s.parent = parent;
                s.name = name.to_owned();
            }
            drop(s);
            return existing.clone();
        }
        let inode = Inode::new(ino, fd, RxType::from_raw_mode(st.st_mode), parent, name);
        map.insert(ino, inode.clone());
        inode
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut map = self.by_ino.lock().unwrap_or_else(|p| p.into_inner());
        let gone = match map.get(&ino) {
            Some(inode) => {
                let mut s = inode.state.lock().unwrap_or_else(|p| p.into_inner());
                s.nlookup = s.nlookup.saturating_sub(n);
                s.nlookup == 0
            }
            None => false,
        };
        if gone {
            map.remove(&ino);
        }
    }

    /// An entry moved: remember its new name.
    pub fn renamed(&self, backing_ino: u64, new_parent: u64, new_name: &OsStr) {
        if let Ok(inode) = self.get(self.fuse_ino(backing_ino)) {
            let mut s = inode.state.lock().unwrap_or_else(|p| p.into_inner());
            s.parent = new_parent;
            s.name = new_name.to_owned();
        }
    }

    /// The path of `ino` relative to the mount, from the names last seen ("" for the root).
    pub fn path_of(&self, ino: u64) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        for _ in 0..4096 {
            if cur == ROOT {
                break;
            }
            let Ok(inode) = self.get(cur) else {
                parts.push("?".to_owned());
                break;
            };
            let (parent, name) = inode.parent_and_name();
            parts.push(name.to_string_lossy().into_owned());
            cur = parent;
        }
        parts.reverse();
        parts.join("/")
    }
}
