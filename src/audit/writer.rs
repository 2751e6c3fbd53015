//! [`ChainWriter`]: appends chained records to a log that several processes may share (a
//! mount and `kmsfs fsck`, say). Each append takes the file's exclusive `flock` and chains
//! onto whatever record is last in the file at that moment. Under that lock the writer
//! also sets aside a torn last line, cuts back a write that failed part way, and rotates
//! the log once it is large. A thread of its own syncs records to disk on a schedule
//! (group commit) and then writes the log's head. The promises: `docs/audit-log.md`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::chain::{
    hash_of, write_canonical_map, ChainError, CUT_FOUND, GENESIS, REPAIRED, ROTATED,
};
use super::head::{self, Head};
use super::tail;

/// Size past which a log is rotated, unless [`ChainOptions`] says otherwise.
pub const DEFAULT_ROTATE_BYTES: u64 = 64 << 20;

/// How long a written record may wait for its sync, unless [`ChainOptions`] says otherwise.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// How a [`ChainWriter`] treats its log.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    /// Once the log holds this many bytes, the next append starts a new file.
    pub rotate_bytes: u64,
    /// A record is synced at most this long after it is written; zero syncs each record
    /// before its append returns.
    pub sync_interval: Duration,
    /// Where the head is kept; `None`: beside the log ([`head::beside`]).
    pub head: Option<PathBuf>,
}

impl Default for ChainOptions {
    fn default() -> Self {
        Self {
            rotate_bytes: DEFAULT_ROTATE_BYTES,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            head: None,
        }
    }
}

/// Appends chained records to one log.
pub struct ChainWriter {
    shared: Arc<Shared>,
    syncer: Option<JoinHandle<()>>,
}

struct Shared {
    path: PathBuf,
    head: PathBuf,
    opts: ChainOptions,
    state: Mutex<State>,
    wake: Condvar,
    /// How many of the records this writer wrote are synced; held through a sync, so an
    /// explicit sync waits for the syncer's and the syncer never starts one that an
    /// explicit sync covered (the daemon exits right after it).
    synced: Mutex<u64>,
}

struct State {
    file: Arc<File>,
    id: (u64, u64),
    /// The length of the file up to the end of the last record this writer has seen.
    len: u64,
    /// Records in the file up to `len`, and the last one's hash.
    records: u64,
    last: String,
    /// Records were written since the last sync.
    unsynced: bool,
    /// Records this writer has written, so a sync knows whether a later one covered it.
    written: u64,
    /// Why the last sync failed, until a sync succeeds: appends refuse meanwhile.
    sync_failed: Option<String>,
    closing: bool,
}

/// An exclusive `flock` on a log file, released on drop.
struct Flock(Arc<File>);

impl Flock {
    fn take(file: &Arc<File>) -> std::io::Result<Self> {
        rustix::fs::flock(&**file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(Self(file.clone()))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&*self.0, rustix::fs::FlockOperation::Unlock);
    }
}

impl ChainWriter {
    /// Opens (creating, 0600) `path` with the default options and continues its chain.
    pub fn open(path: &Path) -> Result<Self, ChainError> {
        Self::open_with(path, ChainOptions::default())
    }

    /// Opens (creating, 0600) `path` and continues the chain from its last whole record;
    /// a torn line after it is set aside first, with a record that says so.
    pub fn open_with(path: &Path, opts: ChainOptions) -> Result<Self, ChainError> {
        let io = |source| ChainError::Io {
            path: path.into(),
            source,
        };
        let file = tail::open_log(path).map_err(io)?;
        let id = tail::identity(&file.metadata().map_err(io)?);
        let state = State {
            file: Arc::new(file),
            id,
            len: 0,
            records: 0,
            last: GENESIS.into(),
            unsynced: false,
            written: 0,
            sync_failed: None,
            closing: false,
        };
        let shared = Arc::new(Shared {
            path: path.into(),
            head: opts.head.clone().unwrap_or_else(|| head::beside(path)),
            opts,
            state: Mutex::new(state),
            wake: Condvar::new(),
            synced: Mutex::new(0),
        });
        {
            let mut st = shared.lock_state();
            let _lock = shared.lock_file(&mut st)?;
            shared.catch_up(&mut st)?;
        }
        let syncer = if shared.opts.sync_interval.is_zero() {
            None
        } else {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("audit-sync".into())
                .spawn(move || s.run_syncer());
            Some(spawned.map_err(io)?)
        };
        let writer = ChainWriter { shared, syncer };
        // A repair record is on disk before the log is used further.
        writer.sync()?;
        Ok(writer)
    }

    /// Adds `prev_hash` and `hash` to `record` and appends it; returns the new hash.
    pub fn append(&self, record: Map<String, Value>) -> Result<String, ChainError> {
        let sh = &*self.shared;
        let mut st = sh.lock_state();
        if let Some(why) = st.sync_failed.clone() {
            // Records already written may not be on disk: refuse until a sync succeeds.
            st.file.sync_data().map_err(|e| ChainError::Io {
                path: sh.path.clone(),
                source: std::io::Error::new(e.kind(), format!("{e}; before that: {why}")),
            })?;
            st.sync_failed = None;
        }
        // The syncer waits for a first unsynced record, then for its interval to pass:
        // waking it for every later record would cost a thread switch per key use.
        let first_unsynced = !st.unsynced;
        let hash = loop {
            let _lock = sh.lock_file(&mut st)?;
            sh.catch_up(&mut st)?;
            if st.len > 0 && st.len >= sh.opts.rotate_bytes {
                sh.rotate(&mut st)?;
                continue;
            }
            break sh.write(&mut st, record)?;
        };
        drop(st);
        if self.syncer.is_none() {
            self.sync()?;
        } else if first_unsynced {
            sh.wake.notify_one();
        }
        Ok(hash)
    }

    /// Syncs what is written and writes the head, in this thread, without waiting for
    /// the schedule (unmount).
    pub fn sync(&self) -> Result<(), ChainError> {
        let snapshot = {
            // Even with nothing unsynced: the syncer may be in the middle of a sync, which
            // `Shared::sync` waits for.
            let mut st = self.shared.lock_state();
            st.unsynced = false;
            Snapshot::of(&st)
        };
        self.shared
            .sync(&snapshot)
            .map_err(|source| ChainError::Io {
                path: self.shared.path.clone(),
                source,
            })
    }
}

impl Drop for ChainWriter {
    fn drop(&mut self) {
        self.shared.lock_state().closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
    }
}

/// What a sync covers: a file and its last record at the time.
struct Snapshot {
    file: Arc<File>,
    id: (u64, u64),
    records: u64,
    last: String,
    written: u64,
}

impl Snapshot {
    fn of(st: &State) -> Self {
        Self {
            file: st.file.clone(),
            id: st.id,
            records: st.records,
            last: st.last.clone(),
            written: st.written,
        }
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io(&self) -> impl Fn(std::io::Error) -> ChainError + '_ {
        move |source| ChainError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Locks the file now at the log's path, following a rotation by another process.
    fn lock_file(&self, st: &mut State) -> Result<Flock, ChainError> {
        loop {
            let lock = Flock::take(&st.file).map_err(self.io())?;
            match std::fs::metadata(&self.path) {
                Ok(m) if tail::identity(&m) == st.id => return Ok(lock),
                _ => {}
            }
            drop(lock);
            let file = tail::open_log(&self.path).map_err(self.io())?;
            st.id = tail::identity(&file.metadata().map_err(self.io())?);
            st.file = Arc::new(file);
            (st.len, st.records, st.last) = (0, 0, GENESIS.into());
        }
    }

    /// Brings `st` to the end of the file (another process may have appended), setting a
    /// torn last line aside. Under the file's lock.
    fn catch_up(&self, st: &mut State) -> Result<(), ChainError> {
        let len = st.file.metadata().map_err(self.io())?.len();
        // An empty file too is checked against the head: the log may have been replaced.
        if len == st.len && len > 0 {
            return Ok(());
        }
        if len < st.len {
            // Cut by someone else: count from the start again.
            (st.len, st.records) = (0, 0);
        }
        let from_start = st.len == 0;
        let (lines, cut) = tail::scan(&st.file, st.len, len).map_err(self.io())?;
        st.last = tail::last_hash(&st.file, cut, &self.path)?;
        (st.len, st.records) = (cut, st.records + lines);
        if from_start {
            self.check_head(st, cut)?;
        }
        if cut < len {
            let aside = tail::set_aside(&st.file, &self.path, cut, len)?;
            let mut record = Map::new();
            record.insert("event".into(), REPAIRED.into());
            record.insert("time".into(), tail::now_rfc3339().into());
            record.insert("torn_bytes".into(), (len - cut).into());
            record.insert("torn_at_byte".into(), cut.into());
            record.insert("set_aside_in".into(), tail::file_name(&aside).into());
            record.insert("pid".into(), std::process::id().into());
            self.write(st, record)?;
        }
        Ok(())
    }

    /// Records in the log that the head names a record the log no longer holds, before
    /// this writer's own head replaces it: the evidence of a cut stays in the chain.
    fn check_head(&self, st: &mut State, len: u64) -> Result<(), ChainError> {
        let Ok(Some(old)) = head::read(&self.head) else {
            return Ok(());
        };
        if !head::lost(&old, &self.path, &st.file, len).map_err(self.io())? {
            return Ok(());
        }
        let mut record = Map::new();
        record.insert("event".into(), CUT_FOUND.into());
        record.insert("time".into(), tail::now_rfc3339().into());
        record.insert("head_records".into(), old.records.into());
        record.insert("head_hash".into(), old.hash.into());
        record.insert("head_time".into(), old.time.into());
        record.insert("records_found".into(), st.records.into());
        record.insert("pid".into(), std::process::id().into());
        self.write(st, record).map(drop)
    }

    /// Writes one record at the end of the file. Under the file's lock, caught up.
    fn write(&self, st: &mut State, mut record: Map<String, Value>) -> Result<String, ChainError> {
        record.insert("prev_hash".into(), Value::String(st.last.clone()));
        let mut line = Vec::with_capacity(512);
        let hash = hash_of(&record, &mut line);
        record.insert("hash".into(), Value::String(hash.clone()));
        line.clear();
        write_canonical_map(&record, None, &mut line);
        line.push(b'\n');
        if let Err(e) = (&*st.file).write_all(&line) {
            // A write cut short (a full disk) must leave no part of a line behind. Should
            // the cut fail too, the next open sets the torn line aside.
            let _ = st.file.set_len(st.len);
            return Err(self.io()(e));
        }
        st.len += line.len() as u64;
        st.records += 1;
        st.last = hash.clone();
        st.unsynced = true;
        st.written += 1;
        Ok(hash)
    }

    /// Renames the full log aside and starts its successor with a record that chains onto
    /// its last one and names it. Under the old file's lock; the successor is complete and
    /// on disk before it takes the log's name, so no process ever finds it empty.
    fn rotate(&self, st: &mut State) -> Result<(), ChainError> {
        st.file.sync_data().map_err(self.io())?;
        let rotated = tail::link_aside(&self.path).map_err(self.io())?;
        let (tmp, file) = tail::successor(&self.path).map_err(self.io())?;
        let mut record = Map::new();
        record.insert("event".into(), ROTATED.into());
        record.insert("time".into(), tail::now_rfc3339().into());
        record.insert("previous_file".into(), tail::file_name(&rotated).into());
        record.insert("previous_records".into(), st.records.into());
        st.file = Arc::new(file);
        // Until the successor has the log's name, the file at the path is not ours.
        st.id = tail::identity(&st.file.metadata().map_err(self.io())?);
        (st.len, st.records) = (0, 0);
        self.write(st, record)?;
        st.file
            .sync_data()
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .and_then(|()| tail::sync_dir(&self.path))
            .map_err(self.io())?;
        // The head moves to the successor now, so it never names a file that is no longer
        // the log for longer than a crash at this point.
        if let Err(e) = self.write_head_locked(&Snapshot::of(st)) {
            tracing::warn!("cannot write audit head {}: {e}", self.head.display());
        }
        Ok(())
    }

    /// Syncs the snapshot's file, then records it as the head. A head that cannot be
    /// written is only logged: it guards against cuts, and the records are on disk.
    fn sync(&self, snap: &Snapshot) -> std::io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced >= snap.written {
            return Ok(());
        }
        snap.file.sync_data()?;
        *synced = snap.written;
        if let Err(e) = self.write_head(snap) {
            tracing::warn!("cannot write audit head {}: {e}", self.head.display());
        }
        Ok(())
    }

    /// Records the snapshot as the head, if its file is still the log (another process
    /// may have rotated it: the head names the log's current file).
    fn write_head(&self, snap: &Snapshot) -> std::io::Result<()> {
        let _st = self.lock_state();
        self.write_head_locked(snap)
    }

    /// [`Self::write_head`], with the state already locked.
    fn write_head_locked(&self, snap: &Snapshot) -> std::io::Result<()> {
        if snap.records == 0 {
            return Ok(());
        }
        let head = Head {
            log: tail::file_name(&self.path),
            records: snap.records,
            hash: snap.last.clone(),
            time: tail::now_rfc3339(),
            inode: snap.id.1,
        };
        let tmp = head::prepare(&self.head, &head)?;
        let _lock = Flock::take(&snap.file)?;
        let still_the_log =
            std::fs::metadata(&self.path).is_ok_and(|m| tail::identity(&m) == snap.id);
        let newer = head::read(&self.head).ok().flatten().filter(|h| {
            (h.log.as_str(), h.inode) == (head.log.as_str(), head.inode) && h.records > head.records
        });
        if still_the_log && newer.is_none() {
            head::install(&tmp, &self.head)
        } else {
            std::fs::remove_file(&tmp)
        }
    }

    /// The syncer thread: at most `sync_interval` after a record is written it is synced,
    /// and once more when the writer closes.
    fn run_syncer(&self) {
        let mut st = self.lock_state();
        loop {
            while !st.unsynced && !st.closing {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            let deadline = Instant::now() + self.opts.sync_interval;
            while !st.closing {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                st = self
                    .wake
                    .wait_timeout(st, left)
                    .map_or_else(|p| p.into_inner().0, |r| r.0);
            }
            if st.unsynced {
                st.unsynced = false;
                let snap = Snapshot::of(&st);
                drop(st);
                let result = self.sync(&snap);
                st = self.lock_state();
                if let Err(e) = result {
                    tracing::warn!("cannot sync audit log {}: {e}", self.path.display());
                    st.unsynced = true;
                    st.sync_failed = Some(e.to_string());
                    if st.closing {
                        return;
                    }
                }
                // Records written during that sync wait for the next one, also at close.
                continue;
            }
            if st.closing {
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
