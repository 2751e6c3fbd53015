//! Unwrapping ahead of opens: when a process opens the files of a directory one after
//! another (`tar`, `cp -r`, `rsync`, a thread pool over a listing), the keys of the files
//! it is about to open are unwrapped before it gets there, many calls at once, so that a
//! walk waits for a remote KMS's latency about once per directory instead of once per file
//! (`docs/kms.md`, "Walking a directory").
//!
//! Each open of a regular file is noted ([`Prefetch::opened`]) with its directory. Worker
//! threads list the directory once (kept while its files are opened), follow the opens as
//! streams in a few orders (`streams.rs`), and for the files ahead of a stream read the
//! header, make the checks an open makes before asking the KMS (the volume's key, the
//! name binding), and hand the keys to [`KeyCache::prefetch`](crate::key_cache::KeyCache::prefetch).
//! Each call is audited (`key_prefetched`), and the open that uses the key is audited as
//! usual. Bounded: at most `max_calls` Decrypt calls under way, at most `max_ahead` keys
//! unwrapped and not yet used; nothing is fetched while the KMS is in an outage. On the
//! built-in KMS too, where what a walk gains is the headers read ahead, in parallel.

mod listing;
mod streams;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::audit::{Attempt, AuditEvent};
use super::{context, Requester, Volume};
use crate::file::read_header;
use crate::kms::{budget, KmsError, Unwrap};
use crate::namespace::{ContentFile, DirNames, Place};
use listing::{list, Listing, MAX_LISTED};
use streams::ORDERS;

/// Directories followed at once; the least recently opened in goes first.
const DIRS: usize = 64;
/// Keys one worker asks for in one batch of calls.
const BATCH: usize = 32;
/// How long an idle worker waits for work before it ends.
const IDLE: Duration = Duration::from_secs(30);
/// No fetching for this long after a prefetch failed: the opens ask for themselves.
const BACK_OFF: Duration = Duration::from_secs(5);

/// `st_dev` and `st_ino` of a directory of the ciphertext tree.
type DirKey = (u64, u64);

/// The prefetcher of one volume.
pub(super) struct Prefetch {
    volume: Weak<Volume>,
    shared: Arc<(Mutex<State>, Condvar)>,
    max_calls: usize,
    max_ahead: usize,
    root: DirKey,
    /// How long a fetched key stays useful (the key cache's lifetime).
    key_ttl: Duration,
}

#[derive(Default)]
struct State {
    opens: VecDeque<Opened>,
    dirs: HashMap<DirKey, Followed>,
    targets: VecDeque<Target>,
    in_flight: usize,
    /// Files in the listings of `dirs`.
    listed: usize,
    workers: usize,
    idle: usize,
    paused_until: Option<Instant>,
}

/// One open of a regular file, as noted.
struct Opened {
    dir: DirKey,
    /// A descriptor of the directory, when it is not followed yet.
    fd: Option<OwnedFd>,
    ino: u64,
    /// The directory's path in the mount (`""` for the top).
    path: String,
    who: Requester,
}

/// A directory followed: its files as last listed, and the streams of opens in it.
struct Followed {
    dir: Arc<DirShared>,
    listing: Option<Listing>,
    /// Being listed by a worker; opens noted meanwhile wait in `waiting`.
    listing_now: bool,
    waiting: Vec<(u64, Requester)>,
    last_open: Instant,
}

struct DirShared {
    fd: Arc<OwnedFd>,
    names: DirNames,
    path: String,
}

/// A file whose key is to be fetched.
struct Target {
    dir: Arc<DirShared>,
    on_disk: OsString,
    name: OsString,
    who: Requester,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn dir_key(fd: BorrowedFd<'_>) -> Option<DirKey> {
    let st = rustix::fs::fstat(fd).ok()?;
    Some((st.st_dev, st.st_ino))
}

impl Prefetch {
    /// A prefetcher for `volume`, with up to `max_calls` Decrypt calls under way.
    pub(super) fn new(volume: &Arc<Volume>, max_calls: usize, key_ttl: Duration) -> Option<Self> {
        let root = rustix::fs::stat(volume.cipherdir()).ok()?;
        let cache_size = volume.keys.capacity();
        Some(Self {
            volume: Arc::downgrade(volume),
            shared: Default::default(),
            max_calls: max_calls.max(1),
            // Keys fetched must not push each other out of the cache before their use.
            max_ahead: (cache_size / 2).clamp(1, 4 * max_calls.max(1)),
            root: (root.st_dev, root.st_ino),
            key_ttl,
        })
    }

    /// Notes that `who` opened the regular file of ciphertext inode `ino` in the
    /// directory open at `dir`, whose path in the mount is that of `path` without its last
    /// name. Cheap: the work is done by the prefetcher's own threads.
    pub(super) fn opened(&self, dir: BorrowedFd<'_>, ino: u64, path: &str, who: &Requester) {
        let Some(key) = dir_key(dir) else { return };
        let (m, cv) = &*self.shared;
        let mut st = lock(m);
        let fd = match st.dirs.get_mut(&key) {
            Some(f) => {
                f.last_open = Instant::now();
                None
            }
            None => match dir.try_clone_to_owned() {
                Ok(fd) => Some(fd),
                Err(_) => return,
            },
        };
        let path = path.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        st.opens.push_back(Opened {
            dir: key,
            fd,
            ino,
            path,
            who: *who,
        });
        self.wake(&mut st, cv);
    }

    /// Starts a worker if work waits and none is idle.
    fn wake(&self, st: &mut State, cv: &Condvar) {
        if st.idle > 0 {
            cv.notify_one();
            return;
        }
        if st.workers > self.max_calls.div_ceil(BATCH) {
            return;
        }
        let (volume, shared) = (self.volume.clone(), self.shared.clone());
        let spawned = std::thread::Builder::new()
            .name("kmsfs-prefetch".into())
            .spawn(move || work(volume, shared));
        if spawned.is_ok() {
            st.workers += 1;
        }
    }
}

/// A worker: takes noted opens and keys to fetch until the volume is gone or nothing
/// comes for a while.
fn work(volume: Weak<Volume>, shared: Arc<(Mutex<State>, Condvar)>) {
    let (m, cv) = &*shared;
    let mut st = lock(m);
    loop {
        let Some(vol) = volume.upgrade() else { break };
        let Some(p) = vol.prefetch.get() else { break };
        if let Some(opened) = st.opens.pop_front() {
            st = p.note(m, st, &vol, opened);
            continue;
        }
        let paused = st.paused_until.is_some_and(|t| Instant::now() < t);
        if !st.targets.is_empty() && st.in_flight < p.max_calls && !paused {
            let n = BATCH.min(p.max_calls - st.in_flight).min(st.targets.len());
            let batch: Vec<Target> = st.targets.drain(..n).collect();
            st.in_flight += n;
            drop(st);
            let failed = p.fetch(&vol, batch);
            st = lock(m);
            st.in_flight -= n;
            if failed {
                st.paused_until = Some(Instant::now() + BACK_OFF);
                st.targets.clear();
            }
            continue;
        }
        drop(vol);
        st.idle += 1;
        let (next, waited) = cv.wait_timeout(st, IDLE).unwrap_or_else(|p| p.into_inner());
        st = next;
        st.idle -= 1;
        if waited.timed_out() && st.opens.is_empty() && st.targets.is_empty() {
            break;
        }
    }
    st.workers -= 1;
}

impl Prefetch {
    /// Follows one open: lists its directory if needed, continues a stream, and queues the
    /// keys ahead of it.
    fn note<'a>(
        &self,
        m: &'a Mutex<State>,
        mut st: MutexGuard<'a, State>,
        vol: &Volume,
        opened: Opened,
    ) -> MutexGuard<'a, State> {
        if !st.dirs.contains_key(&opened.dir) {
            let Some(fd) = opened.fd else { return st };
            let at_root = opened.dir == self.root;
            let Ok(names) = vol.namespace.dir_names(fd.as_fd(), at_root) else {
                return st;
            };
            if st.dirs.len() >= DIRS {
                let oldest = st
                    .dirs
                    .iter()
                    .min_by_key(|(_, f)| f.last_open)
                    .map(|(k, _)| *k);
                let gone = st.dirs.remove(&oldest.expect("dirs are not empty"));
                st.listed -= gone.and_then(|f| f.listing).map_or(0, |l| l.files.len());
            }
            let dir = DirShared {
                fd: Arc::new(fd),
                names,
                path: opened.path,
            };
            st.dirs.insert(opened.dir, Followed::new(dir));
        }
        let f = st.dirs.get_mut(&opened.dir).expect("followed");
        let stale = f
            .listing
            .as_ref()
            .is_none_or(|l| !l.by_ino.contains_key(&opened.ino) && l.at.elapsed() >= l.relist());
        if f.listing_now || stale {
            f.waiting.push((opened.ino, opened.who));
            if f.listing_now {
                return st;
            }
            f.listing_now = true;
            let dir = f.dir.clone();
            drop(st);
            let listing = list(vol, &dir, self.max_ahead);
            st = lock(m);
            let Some(f) = st.dirs.get_mut(&opened.dir) else {
                return st;
            };
            f.listing_now = false;
            let waiting = std::mem::take(&mut f.waiting);
            if let Some(l) = listing {
                let n = l.files.len();
                let old = f.listing.replace(l).map_or(0, |o| o.files.len());
                st.listed = st.listed + n - old;
                keep_listings_within_bound(&mut st, opened.dir);
            }
            for (ino, who) in waiting {
                self.advance(&mut st, opened.dir, ino, who, vol);
            }
            return st;
        }
        self.advance(&mut st, opened.dir, opened.ino, opened.who, vol);
        st
    }

    /// Continues a stream of directory `key` with the open of `ino`, queueing what it
    /// reaches.
    fn advance(&self, st: &mut State, key: DirKey, ino: u64, who: Requester, vol: &Volume) {
        let waiting_keys = vol.keys.prefetched_waiting() as usize;
        let queued = st.targets.len() + st.in_flight + waiting_keys;
        let room = self.max_ahead.saturating_sub(queued);
        let Some(f) = st.dirs.get_mut(&key) else {
            return;
        };
        let Some(l) = f.listing.as_mut() else { return };
        let Some(&i) = l.by_ino.get(&ino) else { return };
        let at: [usize; ORDERS] = std::array::from_fn(|o| l.positions[o][i] as usize);
        let Some((order, range)) = l.streams.opened(at, room) else {
            return;
        };
        let mut reached = Vec::new();
        for k in range {
            let file = &mut l.files[l.orders[order][k] as usize];
            if file.2.is_some_and(|t| t.elapsed() < self.key_ttl / 2) {
                continue;
            }
            file.2 = Some(Instant::now());
            reached.push(Target {
                dir: f.dir.clone(),
                on_disk: file.0.clone(),
                name: file.1.clone(),
                who,
            });
        }
        st.targets.extend(reached);
    }

    /// Fetches the keys of `batch`: true if a call failed (the KMS is in trouble, or
    /// refuses; the opens will ask for themselves and say so).
    fn fetch(&self, vol: &Volume, batch: Vec<Target>) -> bool {
        if vol.metrics.in_outage() {
            return true;
        }
        let mut found = Vec::new();
        for t in batch {
            if let Some(header) = checked_header(vol, &t) {
                found.push((t, header));
            }
        }
        let contexts: Vec<_> = found
            .iter()
            .map(|(_, h)| context(&vol.config.volume_id, &h.file_id))
            .collect();
        let requests: Vec<Unwrap<'_>> = found
            .iter()
            .zip(&contexts)
            .map(|((_, h), ctx)| Unwrap {
                key_id: &h.key_id,
                wrapped: &h.wrapped_key,
                ctx,
            })
            .collect();
        let started = Instant::now();
        let mut failed = false;
        let fetch = |each: &mut dyn FnMut(usize, Result<(), KmsError>)| {
            // No longer than an open would wait: a silent KMS then shows as one promptly.
            match vol.offload.as_ref().map(|o| started + o.timeout()) {
                Some(deadline) => {
                    budget::with_deadline(deadline, || vol.keys.prefetch(&requests, each))
                }
                None => vol.keys.prefetch(&requests, each),
            }
        };
        fetch(&mut |i, result| {
            let (t, h) = &found[i];
            let event = match &result {
                Ok(()) => AuditEvent::KeyPrefetched {
                    kms_latency_ms: started.elapsed().as_secs_f64() * 1e3,
                },
                Err(e) => {
                    failed = true;
                    tracing::debug!("prefetch of {:?} failed: {e}", t.name);
                    AuditEvent::kms_failure(Attempt::KeyPrefetched, e)
                }
            };
            let path = match t.dir.path.as_str() {
                "" => t.name.to_string_lossy().into_owned(),
                d => format!("{d}/{}", t.name.to_string_lossy()),
            };
            let audited = vol.audit(&event, Some(&h.file_id), &path, &h.key_id, &t.who);
            if let Err(e) = audited {
                tracing::error!("{}", crate::describe(&e));
            }
        });
        failed
    }
}

/// Forgets the directories opened in least recently, but `keep`, until the listings kept
/// hold at most `MAX_LISTED` files.
fn keep_listings_within_bound(st: &mut State, keep: DirKey) {
    while st.listed > MAX_LISTED {
        let oldest = st
            .dirs
            .iter()
            .filter(|(k, _)| **k != keep)
            .min_by_key(|(_, f)| f.last_open)
            .map(|(k, _)| *k);
        let Some(gone) = oldest.and_then(|k| st.dirs.remove(&k)) else {
            return;
        };
        st.listed -= gone.listing.map_or(0, |l| l.files.len());
    }
}

/// The header of target `t` if an open of it would ask the KMS for its own key: a regular
/// file with a header that fits the volume, is bound to its name and is not in a bucket. Anything else is
/// left for the open to find and report.
fn checked_header(vol: &Volume, t: &Target) -> Option<crate::format::Header> {
    let content = ContentFile {
        dir: t.dir.fd.clone(),
        on_disk: t.on_disk.clone(),
        path: Default::default(),
    };
    let file = content.open(false).ok()?;
    let header = read_header(&file).ok()?;
    // A bucket file's open unwraps its bucket key once for every file under it.
    if header.is_bucket() || vol.misfit(&header).is_some() {
        return None;
    }
    let at = Place::new(&t.dir.names, &t.name);
    vol.namespace.check_binding(&file, &header, at).ok()?;
    Some(header)
}

impl Followed {
    fn new(dir: DirShared) -> Self {
        Self {
            dir: Arc::new(dir),
            listing: None,
            listing_now: false,
            waiting: Vec::new(),
            last_open: Instant::now(),
        }
    }
}
