//! What one worker's part of the tree must hold after a crash. Each worker owns one
//! top-level directory and runs its operations one after another, so its model is exact:
//! per file, the content as answered, whether it was fsynced since its last write began
//! (`clean`), and the content an unanswered write would leave; per directory, its names as
//! answered, its names as of its last fsync (`durable`) and the names changed since
//! (`touched`). Every operation is begun (marking what it may change) before its system
//! call and committed after the call succeeds, so an operation cut by a crash stays begun:
//! its names are `unsure` and its file keeps its `pending` content.

use std::collections::{BTreeMap, BTreeSet};

pub type FileId = usize;
pub type DirId = usize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File(FileId),
    Dir(DirId),
    Link(String),
}

#[derive(Default)]
pub struct FileState {
    /// The content as of the last answered write.
    pub data: Vec<u8>,
    /// fsynced (or fdatasynced) since its last write began: after a power cut it reads
    /// `data` exactly, wherever it has a durable name.
    pub clean: bool,
    /// The content a write that was not answered would have left (set from begin to
    /// commit): a crash may leave any mix of `data` and this, block by block.
    pub pending: Option<Vec<u8>>,
    /// `user.*` attributes as answered.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// A setxattr was not answered: the attributes are `xattrs` or one more.
    pub xattrs_unsure: bool,
    /// Bytes the file had at its last fsync (0 before one), and how many of them no write
    /// has changed since: after a power cut those read back.
    pub synced_len: usize,
    pub kept: usize,
    /// Since that fsync, a write rewrote in place a block written before it, not as an
    /// append: a power cut may leave that block unreadable (`docs/posix.md`, "After a
    /// power cut"; not yet closed).
    pub rewrote_in_place: bool,
}

#[derive(Default)]
pub struct DirState {
    /// Its name in its parent (none for the worker's top directory).
    pub parent: Option<(DirId, String)>,
    pub entries: BTreeMap<String, Node>,
    /// The entries as of the last fsync of this directory.
    pub durable: BTreeMap<String, Node>,
    /// Names changed (or whose change began) since that fsync.
    pub touched: BTreeSet<String>,
}

pub struct Model {
    /// The worker's top directory, relative to the mount.
    pub top: String,
    pub files: Vec<FileState>,
    pub dirs: Vec<DirState>,
    /// Names an unanswered operation may have changed: present or not, whatever they are.
    pub unsure: BTreeSet<(DirId, String)>,
    /// Every file each name was ever given (a power cut can leave any of them there).
    pub named: BTreeMap<String, BTreeSet<FileId>>,
}

impl Model {
    /// A worker's model: its top directory exists, empty and durable.
    pub fn new(top: &str) -> Model {
        Model {
            top: top.to_owned(),
            files: Vec::new(),
            dirs: vec![DirState::default()],
            unsure: BTreeSet::new(),
            named: BTreeMap::new(),
        }
    }

    /// The path of directory `d`, relative to the mount.
    pub fn dir_path(&self, d: DirId) -> String {
        let mut parts = Vec::new();
        let mut at = d;
        while let Some((p, name)) = &self.dirs[at].parent {
            parts.push(name.as_str());
            at = *p;
        }
        parts.push(&self.top);
        parts.reverse();
        parts.join("/")
    }

    pub fn path(&self, d: DirId, name: &str) -> String {
        format!("{}/{name}", self.dir_path(d))
    }

    /// How deep directory `d` is below the top.
    pub fn depth(&self, d: DirId) -> usize {
        let mut n = 0;
        let mut at = d;
        while let Some((p, _)) = &self.dirs[at].parent {
            n += 1;
            at = *p;
        }
        n
    }

    /// Whether `d` is `ancestor` or below it.
    pub fn is_within(&self, mut d: DirId, ancestor: DirId) -> bool {
        loop {
            if d == ancestor {
                return true;
            }
            match &self.dirs[d].parent {
                Some((p, _)) => d = *p,
                None => return false,
            }
        }
    }

    /// Every (directory, name, node) there is now.
    pub fn entries(&self) -> Vec<(DirId, String, Node)> {
        let mut out = Vec::new();
        for (d, dir) in self.dirs.iter().enumerate() {
            for (name, node) in &dir.entries {
                out.push((d, name.clone(), node.clone()));
            }
        }
        out
    }

    // --- names --------------------------------------------------------------------

    /// Before an operation that may change `name` in `d`.
    pub fn begin_name(&mut self, d: DirId, name: &str) {
        self.dirs[d].touched.insert(name.to_owned());
        self.unsure.insert((d, name.to_owned()));
    }

    /// After it: `name` in `d` is now `node` (or gone).
    pub fn set_name(&mut self, d: DirId, name: &str, node: Option<Node>) {
        if let Some(Node::File(id)) = node {
            self.named.entry(name.to_owned()).or_default().insert(id);
        }
        match node {
            Some(n) => self.dirs[d].entries.insert(name.to_owned(), n),
            None => self.dirs[d].entries.remove(name),
        };
        self.unsure.remove(&(d, name.to_owned()));
    }

    pub fn new_file(&mut self) -> FileId {
        self.files.push(FileState::default());
        self.files.len() - 1
    }

    pub fn new_dir(&mut self, parent: DirId, name: &str) -> DirId {
        self.dirs.push(DirState {
            parent: Some((parent, name.to_owned())),
            ..Default::default()
        });
        self.dirs.len() - 1
    }

    /// After a directory's fsync: what it names now is durable.
    pub fn dir_synced(&mut self, d: DirId) {
        let dir = &mut self.dirs[d];
        dir.durable = dir.entries.clone();
        dir.touched.clear();
    }

    /// Whether `name` in `d` must survive a power cut: durable and not touched since.
    pub fn durable_name(&self, d: DirId, name: &str) -> Option<&Node> {
        let dir = &self.dirs[d];
        if dir.touched.contains(name) {
            return None;
        }
        dir.durable.get(name)
    }

    // --- content ------------------------------------------------------------------

    /// Before a write, truncation or append that leaves `after`.
    pub fn begin_write(&mut self, f: FileId, after: Vec<u8>) {
        const B: usize = 4096;
        let file = &mut self.files[f];
        let old = &file.data;
        let same = old.iter().zip(&after).take_while(|(a, b)| a == b).count();
        file.kept = file.kept.min(same).min(after.len());
        // Which blocks kmsfs rewrites in place without ordering (`src/file/ordered.rs`):
        // a growing write's blocks before the old last one, a write within the length
        // from its first changed block on; a truncate is ordered.
        let unordered = match after.len().cmp(&old.len()) {
            std::cmp::Ordering::Greater => same / B < old.len().saturating_sub(1) / B,
            std::cmp::Ordering::Equal => same < old.len(),
            std::cmp::Ordering::Less => false,
        };
        // Also blocks not fsynced: one the kernel wrote back is torn the same way.
        file.rewrote_in_place |= unordered && same < old.len();
        file.clean = false;
        file.pending = Some(after);
    }

    /// After it was answered.
    pub fn commit_write(&mut self, f: FileId) {
        let file = &mut self.files[f];
        file.data = file.pending.take().expect("a begun write");
    }

    /// After an answered fsync or fdatasync of the file.
    pub fn file_synced(&mut self, f: FileId) {
        let file = &mut self.files[f];
        if file.pending.is_none() {
            file.clean = true;
            file.synced_len = file.data.len();
            file.kept = file.data.len();
            file.rewrote_in_place = false;
        }
    }

    /// Whether a power cut may leave file `f` with a block that does not read even after
    /// `fsck --repair` (the gap `docs/posix.md` names).
    pub fn may_fail_after_power_cut(&self, f: FileId) -> bool {
        self.files[f].rewrote_in_place
    }

    /// The files ever named `leaf` anywhere in this worker's tree (a power cut can leave
    /// any of them under it), or `None` if an unanswered operation may have given the
    /// name to yet another.
    pub fn files_named(&self, leaf: &str) -> Option<Vec<FileId>> {
        if self.unsure.iter().any(|(_, n)| n == leaf) {
            return None;
        }
        Some(
            self.named
                .get(leaf)
                .into_iter()
                .flatten()
                .copied()
                .collect(),
        )
    }
}
