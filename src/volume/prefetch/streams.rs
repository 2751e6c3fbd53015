//! Which files of a directory a reader is about to open: the opens of a directory's files,
//! seen as positions in a few orders of its listing, make streams, as the kernel's
//! readahead does for the pages of a file. A stream is an order and the last position
//! opened in it; an open a little past that continues it, and each continuation reaches
//! further ahead, up to a bound; once there, more is handed out when half of it is used.

use std::ops::Range;

/// The orders a reader may walk a directory in: as it is listed (tar, cp, find, a thread
/// pool over a listing), by name (rsync, ls), by inode number (cp's fast read).
pub const ORDERS: usize = 3;
/// Opens in order that make a stream worth fetching for: two could be chance, in a large
/// directory opened at random.
const PROVEN: u32 = 3;
/// Files a stream reaches ahead once proven; doubled at each open since.
const FIRST_REACH: usize = 4;
/// An open this many positions or fewer past a stream's last continues it (the files
/// between were skipped by the reader, or opened by another of its threads).
const SLACK: usize = 4;
/// A stream is continued only by an open this many opens of the directory after its last:
/// a reader in order opens its next files right away (its threads interleaved), while
/// random opens that happen to land a little past an old stream are not a walk.
const RECENT: u64 = 8;
/// Streams remembered per directory; the least recently continued goes first.
const STREAMS: usize = 24;

#[derive(Debug, Clone, Copy)]
struct Stream {
    order: usize,
    last: usize,
    /// Opens in order so far.
    run: u32,
    /// Positions up to here (exclusive) have been handed out to fetch.
    reached: usize,
    /// When it was last continued, in opens of the directory.
    touched: u64,
}

/// The streams of one directory of `len` files.
#[derive(Debug)]
pub struct Streams {
    len: usize,
    max_reach: usize,
    streams: Vec<Stream>,
    opens: u64,
}

impl Streams {
    pub fn new(len: usize, max_reach: usize) -> Self {
        Self {
            len,
            max_reach: max_reach.max(1),
            streams: Vec::new(),
            opens: 0,
        }
    }

    /// The file at `at` (its position in each order) was opened. Returns the positions in
    /// an order to fetch now, past what was handed out already, if the open continues a
    /// stream; `room` bounds how many.
    pub fn opened(&mut self, at: [usize; ORDERS], room: usize) -> Option<(usize, Range<usize>)> {
        self.opens += 1;
        let continued = self.streams.iter().position(|s| {
            let p = at[s.order];
            // Until proven, only the very next file: random opens rarely make such runs.
            let slack = if s.run < PROVEN { 1 } else { SLACK };
            p > s.last && p <= s.last + slack && self.opens - s.touched <= RECENT
        });
        let Some(i) = continued else {
            self.start(at);
            return None;
        };
        let (len, max_reach, opens) = (self.len, self.max_reach, self.opens);
        let s = &mut self.streams[i];
        s.last = at[s.order];
        s.run += 1;
        s.touched = opens;
        if s.run < PROVEN {
            return None;
        }
        let reach = FIRST_REACH
            .saturating_mul(1 << (s.run - PROVEN).min(20))
            .min(max_reach);
        // More only once less than half the reach is left ahead: handed out in chunks, the
        // keys go to the KMS in full batches rather than one at a time.
        if s.reached > s.last + 1 + reach / 2 {
            return None;
        }
        let from = s.reached.max(s.last + 1);
        let to = (s.last + 1 + reach).min(len).min(from + room);
        s.reached = s.reached.max(to);
        (from < to).then_some((s.order, from..to))
    }

    /// Starts a stream in each order at `at`, unless one is there already (the same file
    /// opened again).
    fn start(&mut self, at: [usize; ORDERS]) {
        if self.streams.iter().any(|s| s.last == at[s.order]) {
            return;
        }
        for (order, &last) in at.iter().enumerate() {
            if self.streams.len() >= STREAMS {
                let oldest = (0..self.streams.len()).min_by_key(|&i| self.streams[i].touched);
                self.streams
                    .swap_remove(oldest.expect("streams are not empty"));
            }
            self.streams.push(Stream {
                order,
                last,
                run: 1,
                reached: last + 1,
                touched: self.opens,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(p: usize) -> [usize; ORDERS] {
        // Listing order is the identity; name order reversed; inode order shuffled.
        [p, 999 - p, (p * 7) % 1000]
    }

    #[test]
    fn a_reader_in_listing_order_is_fetched_ahead_ever_further() {
        let mut s = Streams::new(1000, 64);
        assert_eq!(s.opened(at(0), 1000), None, "one open is no stream");
        assert_eq!(s.opened(at(1), 1000), None, "two could be chance");
        assert_eq!(s.opened(at(2), 1000), Some((0, 3..7)));
        assert_eq!(s.opened(at(3), 1000), Some((0, 7..12)));
        assert_eq!(s.opened(at(4), 1000), Some((0, 12..21)));
        let mut far = 0;
        for p in 5..200 {
            if let Some((0, r)) = s.opened(at(p), 1000) {
                assert!(r.start >= p, "nothing behind the reader");
                far = far.max(r.end - p);
            }
        }
        assert_eq!(far, 65, "reach grows to the bound");
        // At the bound, files are handed out in chunks of half the reach.
        let mut s = Streams::new(10_000, 64);
        let chunks: Vec<_> = (0..300).filter_map(|p| s.opened(at(p), 10_000)).collect();
        let late: Vec<usize> = chunks.iter().skip(8).map(|c| c.1.len()).collect();
        assert!(late.iter().all(|&n| n >= 32), "{late:?}");
    }

    #[test]
    fn other_orders_are_followed_and_random_opens_fetch_nothing() {
        let mut s = Streams::new(1000, 64);
        s.opened(at(500), 1000);
        s.opened(at(499), 1000);
        assert_eq!(s.opened(at(498), 1000), Some((1, 502..506)), "name order");
        let mut r = Streams::new(1000, 64);
        for p in [5, 700, 31, 402, 999, 250, 123, 888] {
            assert_eq!(r.opened(at(p), 1000), None);
        }
    }

    #[test]
    fn room_and_the_end_bound_what_is_handed_out() {
        let mut s = Streams::new(11, 64);
        s.opened(at(0), 10);
        s.opened(at(1), 10);
        assert_eq!(s.opened(at(2), 2), Some((0, 3..5)));
        assert_eq!(s.opened(at(3), 100), Some((0, 5..11)));
        assert_eq!(s.opened(at(4), 100), None, "the end of the directory");
        assert_eq!(s.opened(at(4), 100), None, "the same file again");
    }

    #[test]
    fn interleaved_readers_each_keep_their_stream() {
        let mut s = Streams::new(1000, 64);
        let starts = [0, 100, 200, 300];
        for &b in &starts {
            s.opened(at(b), 1000);
        }
        for k in 1..6 {
            for &b in &starts {
                let got = s.opened(at(b + k), 1000);
                assert_eq!(
                    got.as_ref().is_some_and(|g| g.0 == 0),
                    k >= 2,
                    "{b}+{k}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn random_opens_over_any_listing_order_are_rarely_a_stream() {
        // 100 opens in a fixed shuffle of 400 files, whose listing order (a hashed
        // directory's) is a random permutation, 300 of them. Before the very next file was
        // required until a stream is proven, about one in ten had more than 4 files handed
        // out (tests/kms_prefetch.rs then failed now and then).
        let (mut over, mut total) = (0, 0);
        for seed in 0..300u64 {
            let mut x = seed.wrapping_mul(6364136223846793005) | 1;
            let mut listing: Vec<usize> = (0..400).collect();
            for i in (1..400).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                listing.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut s = Streams::new(400, 512);
            let handed: usize = (0..100)
                .map(|k| (k * 163 + 11) % 400)
                .filter_map(|i| s.opened([listing[i], i, i], 1000))
                .map(|(_, r)| r.len())
                .sum();
            over += usize::from(handed > 4);
            total += handed;
        }
        assert!(
            over <= 3,
            "{over} of 300 listing orders had more than 4 files handed out"
        );
        assert!(total <= 150, "{total} files handed out in all");
    }
}
