//! A directory's regular files as a prefetch follows them: listed once, with their
//! positions in each order a reader may walk them in.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::streams::{Streams, ORDERS};
use super::{DirShared, Volume};
use crate::namespace::Dir;

/// A listing this old is read again when a file opened is not in it (one made since).
const RELIST: Duration = Duration::from_secs(1);
/// Files of the listings kept, in all: the least recently opened in directory goes first.
/// A directory with more is not followed (and not listed again for `RELIST_LARGE`).
pub(super) const MAX_LISTED: usize = 200_000;
const RELIST_LARGE: Duration = Duration::from_secs(60);

pub(super) struct Listing {
    pub(super) at: Instant,
    /// More files than may be kept: nothing of them is.
    pub(super) too_large: bool,
    /// Regular files in listing order: name in the ciphertext directory, plaintext name,
    /// when it was last handed out to fetch.
    pub(super) files: Vec<(OsString, OsString, Option<Instant>)>,
    pub(super) by_ino: HashMap<u64, usize>,
    /// `orders[o][k]`: the file at position `k` in order `o`; `positions` the reverse.
    pub(super) orders: [Vec<u32>; ORDERS],
    pub(super) positions: [Vec<u32>; ORDERS],
    pub(super) streams: Streams,
}

impl Listing {
    /// How old the listing must be to be read again for a file not in it.
    pub(super) fn relist(&self) -> Duration {
        match self.too_large {
            true => RELIST_LARGE,
            false => RELIST,
        }
    }
}

/// The regular files of `dir` with their plaintext names, in the orders streams follow.
pub(super) fn list(vol: &Volume, dir: &DirShared, max_reach: usize) -> Option<Listing> {
    let at = Instant::now();
    let listed = vol
        .namespace
        .list(Dir {
            fd: dir.fd.as_fd(),
            names: &dir.names,
        })
        .ok()?;
    let mut files = Vec::new();
    let mut inos = Vec::new();
    for e in listed {
        if let (Ok(name), rustix::fs::FileType::RegularFile) = (e.name, e.kind) {
            files.push((e.on_disk, name, None));
            inos.push(e.backing_ino);
        }
    }
    let too_large = files.len() > MAX_LISTED;
    if too_large {
        (files, inos) = (Vec::new(), Vec::new());
    }
    let n = files.len();
    let by_ino = inos.iter().enumerate().map(|(i, &ino)| (ino, i)).collect();
    let mut by_name: Vec<u32> = (0..n as u32).collect();
    by_name.sort_by(|&a, &b| files[a as usize].1.cmp(&files[b as usize].1));
    let mut by_number: Vec<u32> = (0..n as u32).collect();
    by_number.sort_by_key(|&i| inos[i as usize]);
    let orders = [(0..n as u32).collect(), by_name, by_number];
    let positions = std::array::from_fn(|o| {
        let mut pos = vec![0u32; n];
        for (k, &i) in orders[o].iter().enumerate() {
            pos[i as usize] = k as u32;
        }
        pos
    });
    Some(Listing {
        at,
        too_large,
        files,
        by_ino,
        orders,
        positions,
        streams: Streams::new(n, max_reach),
    })
}
