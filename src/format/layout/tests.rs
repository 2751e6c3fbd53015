//! Tests of [`Layout`]: the worked examples of `docs/format.md`, sweeps of lengths around
//! block and group boundaries, and properties (round trips, ranges that own exactly their
//! blocks' bytes, slack that no block owns).

use super::*;
use proptest::prelude::*;

const L: Layout = Layout::new(1, 1024);
const S: Layout = Layout::new(2, 1024);
const T: Layout = Layout::new(3, 1024);

/// Every byte range block `b` (holding `blen` bytes) owns: its entry (or nonce and tag)
/// and its data.
fn owned_by(layout: &Layout, b: u64, blen: usize) -> [std::ops::Range<u64>; 3] {
    let p = layout.place(b, blen);
    if layout.is_split() {
        let entry = p.nonce..p.nonce + layout.entry_len();
        [entry, p.data..p.data + blen as u64, 0..0]
    } else {
        [
            p.nonce..p.nonce + 12,
            p.data..p.data + blen as u64,
            p.tag..p.tag + 16,
        ]
    }
}

#[test]
fn worked_examples_from_the_format_doc() {
    for (plain, v1, v2) in [
        (0u64, 1052u64, 4096u64),
        (1, 1053, 4097),
        (4095, 5147, 8191),
        (4096, 5148, 8192),
        (4097, 5177, 8193),
        (109 * 4096, 1024 + 109 * 4124, 4096 + 109 * 4096),
        (
            109 * 4096 + 1,
            1024 + 109 * 4124 + 29,
            4096 + 110 * 4096 + 1,
        ),
        (1 << 20, 1_056_768, 1_060_864),
        ((1 << 20) + 3, 1_056_799, 1_060_867),
        (1 << 30, 1_081_082_880, 1_083_592_704),
    ] {
        assert_eq!(L.cipher_len(plain).unwrap(), v1, "v1 plain {plain}");
        assert_eq!(L.plain_len(v1).unwrap(), plain, "v1 cipher {v1}");
        assert_eq!(S.cipher_len(plain).unwrap(), v2, "v2 plain {plain}");
        assert_eq!(S.plain_len(v2).unwrap(), plain, "v2 cipher {v2}");
    }
    assert_eq!(Layout::new(2, 128).data_start, 4096);
    assert_eq!(Layout::new(2, 16384).data_start, 20480);
    // Version 3: 64 entries of 64 bytes to a group; D = 8192 with the default header.
    for (plain, v3) in [
        (0u64, 8192u64),
        (1, 8193),
        (4096, 12288),
        (4097, 12289),
        (64 * 4096, 8192 + 64 * 4096),
        (64 * 4096 + 1, 8192 + 65 * 4096 + 1),
        (1 << 20, 1_069_056),
    ] {
        assert_eq!(T.cipher_len(plain).unwrap(), v3, "v3 plain {plain}");
        assert_eq!(T.plain_len(v3).unwrap(), plain, "v3 cipher {v3}");
    }
    assert_eq!(Layout::new(3, 128).data_start, 8192);
    assert_eq!(Layout::new(3, 16384).data_start, 20480);
}

#[test]
fn impossible_lengths_are_rejected() {
    // Shorter than header + empty block; mid-overhead cuts; an empty block after full ones.
    for cipher in [0, 1023, 1024, 1051, 5149, 5148 + 27, 5148 + 28] {
        assert!(
            L.plain_len(cipher).is_err(),
            "v1 cipher {cipher} must be invalid"
        );
    }
    // Version 2: before the first data page; ending in a table page (the next group's
    // table written, its first block not).
    let g1_table = 4096 + 109 * 4096;
    for cipher in [
        0,
        1024,
        1052,
        4095,
        g1_table + 1,
        g1_table + 4096,
        g1_table + 4095,
    ] {
        assert!(
            S.plain_len(cipher).is_err(),
            "v2 cipher {cipher} must be invalid"
        );
    }
}

#[test]
fn version_2_places_data_on_pages_and_tables_before_their_data() {
    for b in [0u64, 1, 108, 109, 110, 217, 218, 10_000] {
        let p = S.place(b, 4096);
        assert_eq!(p.data % PAGE, 0, "block {b}");
        assert_eq!(p.tag, p.nonce + 12);
        assert!(p.nonce + 28 <= p.data);
        let g = b / GROUP_BLOCKS;
        // The table page of group g (or the header page) holds the entry whole.
        let table_page = if g == 0 {
            0
        } else {
            p.data - (b % GROUP_BLOCKS + 1) * PAGE
        };
        assert_eq!(p.nonce / PAGE, table_page / PAGE, "block {b}");
        assert_eq!((p.nonce + 27) / PAGE, table_page / PAGE, "block {b}");
    }
    // Group 0's table follows the header.
    assert_eq!(S.place(0, 0).nonce, 1024);
    assert_eq!(S.place(108, 4096).nonce + 28, 1024 + 109 * 28);
}

#[test]
fn version_3_fills_each_table_page_with_64_entries() {
    for b in [0u64, 1, 47, 48, 63, 64, 65, 127, 128, 10_000] {
        let p = T.place(b, 4096);
        assert_eq!(p.data % PAGE, 0, "block {b}");
        let g = b / 64;
        if g > 0 {
            // The table of group g is the page before its data.
            assert_eq!(
                p.nonce / PAGE,
                (p.data - (b % 64 + 1) * PAGE) / PAGE,
                "block {b}"
            );
        }
        assert_eq!(
            (p.nonce + 63) / PAGE,
            p.nonce / PAGE,
            "block {b}: entry in one page"
        );
        assert_eq!(
            p.nonce % 64,
            0,
            "block {b}: entries never straddle a sector"
        );
    }
    assert_eq!(T.place(0, 0).nonce, 1024);
    assert_eq!(T.place(63, 4096).nonce + 64, 1024 + 64 * 64);
    // Two full groups: slack only before block 0's data (later table pages are full).
    assert!(T.slack(128 * 4096).iter().all(|&(a, _)| a < T.data_start));
}

#[test]
fn write_ranges_cover_the_blocks_written_and_no_others() {
    // Every byte a block owns, by layout, for blocks 0..n of a file of n full blocks.
    for layout in [L, S, T] {
        let n = 400u64;
        let owner = |off: u64| -> Option<u64> {
            (0..n).find(|&b| owned_by(&layout, b, 4096).iter().any(|r| r.contains(&off)))
        };
        for (first, last) in [(0, 0), (0, 108), (5, 120), (108, 109), (100, 330)] {
            let ranges = layout.write_ranges(first, last, 4096);
            let mut covered = 0u64;
            for (a, b) in ranges {
                for off in a..b {
                    let o = owner(off);
                    assert!(
                        o.is_some_and(|o| (first..=last).contains(&o)),
                        "offset {off} (owner {o:?}) in a write of {first}..={last}"
                    );
                }
                covered += b - a;
            }
            assert_eq!(covered, (last - first + 1) * (4096 + layout.entry_len()));
            let (a, b) = layout.range(first, last, 4096);
            assert!(
                a <= layout.place(first, 4096).nonce && b >= layout.place(last, 4096).data + 4096
            );
        }
    }
}

#[test]
fn slack_is_exactly_what_no_block_or_header_owns() {
    for plain in [
        0u64,
        1,
        3 * 4096 - 100,
        108 * 4096,
        109 * 4096,
        109 * 4096 + 1,
        250 * 4096,
    ] {
        assert!(L.slack(plain).is_empty());
        for layout in [S, T] {
            let len = layout.cipher_len(plain).unwrap();
            let count = layout.block_count(plain);
            let mut owned = vec![false; len as usize];
            owned[..1024].iter_mut().for_each(|o| *o = true);
            for b in 0..count {
                let blen = layout.block_plain_len(plain, b);
                for r in owned_by(&layout, b, blen) {
                    for o in r {
                        assert!(!owned[o as usize], "byte {o} owned twice");
                        owned[o as usize] = true;
                    }
                }
            }
            for (a, z) in layout.slack(plain) {
                for o in a..z {
                    assert!(!owned[o as usize], "slack byte {o} is owned");
                    owned[o as usize] = true;
                }
            }
            // Table pages past the last group's table entries hold nothing else.
            let unowned: Vec<_> = (0..len).filter(|&o| !owned[o as usize]).collect();
            assert!(
                unowned.is_empty(),
                "plain {plain}: {} bytes unaccounted",
                unowned.len()
            );
        }
    }
}

#[test]
fn sweep_every_length_near_block_and_group_boundaries() {
    for layout in [L, S, T] {
        for blocks in [
            0u64, 1, 2, 3, 63, 64, 65, 107, 108, 109, 110, 127, 128, 217, 218,
        ] {
            for delta in 0..BLOCK_PLAIN_LEN + 2 {
                let plain = blocks * BLOCK_PLAIN_LEN + delta;
                let cipher = layout.cipher_len(plain).unwrap();
                assert_eq!(layout.plain_len(cipher), Ok(plain));
                let last = layout.block_count(plain) - 1;
                let blen = layout.block_plain_len(plain, last);
                let end = owned_by(&layout, last, blen).iter().map(|r| r.end).max();
                assert_eq!(Some(cipher), end);
            }
        }
    }
}

#[test]
fn too_large_is_an_error_not_an_overflow() {
    for layout in [
        L,
        S,
        T,
        Layout::new(2, 16384),
        Layout::new(1, 16384),
        Layout::new(3, 16384),
        Layout::new(4, 1024),
        Layout::new(4, 16384),
    ] {
        assert!(layout.cipher_len(u64::MAX).is_err());
        let c = layout.cipher_len(MAX_PLAIN_LEN).unwrap();
        assert!(c < i64::MAX as u64);
        // Huge ciphertext lengths give a size or an error, without overflowing.
        let _ = layout.plain_len(u64::MAX);
    }
}

#[test]
fn data_window_examples() {
    let big = 1 << 30;
    let data = |b: u64| S.place(b, 4096).data;
    assert_eq!(L.data_window(5, 5, big, 4), None, "version 1 has no window");
    assert_eq!(S.data_window(5, 5, big, 4), Some((data(4), data(7) + 4096)));
    assert_eq!(S.data_window(0, 0, big, 4), Some((data(0), data(3) + 4096)));
    // Cut to the group: block 108 is the last of group 0, alone in its run.
    assert_eq!(S.data_window(108, 108, big, 4), None);
    assert_eq!(
        S.data_window(105, 105, big, 4),
        Some((data(104), data(107) + 4096))
    );
    // Group 1 aligns from its own first block.
    assert_eq!(
        S.data_window(110, 110, big, 4),
        Some((data(109), data(112) + 4096))
    );
    // Cut to the file: blocks 0..=6, the last holding 100 bytes.
    let len = 6 * 4096 + 100;
    assert_eq!(S.data_window(5, 5, len, 4), Some((data(4), data(6) + 100)));
    assert_eq!(S.data_window(6, 6, len, 4), Some((data(4), data(6) + 100)));
    // Runs across an alignment boundary keep both ends; across groups, no window.
    assert_eq!(S.data_window(3, 4, big, 4), Some((data(0), data(4) + 4096)));
    assert_eq!(S.data_window(108, 109, big, 4), None);
    // As long as the window already: nothing gained.
    assert_eq!(S.data_window(4, 7, big, 4), None);
    assert_eq!(S.data_window(5, 5, big, 1), None);
}

proptest! {
    #[test]
    fn plain_cipher_round_trip(plain in 0u64..(1 << 44), h in 128u32..16384, v in 1u16..=3) {
        let l = Layout::new(v, h);
        let c = l.cipher_len(plain).unwrap();
        prop_assert_eq!(l.plain_len(c).unwrap(), plain);
        // The map is injective, so neighbours of a valid length are other sizes or invalid.
        if let Ok(p) = l.plain_len(c + 1) { prop_assert!(p > plain); }
    }

    #[test]
    fn data_window_covers_the_blocks_within_their_group(
        first in 0u64..2000, n in 1u64..8, extra in 0u64..2000, pages in 0u32..4,
    ) {
        let pages = 1u64 << pages;
        let last = first + n - 1;
        let plain_len = last * 4096 + 1 + extra * 97;
        let last_len = S.block_plain_len(plain_len, last);
        for l in [S, T] {
        let k = l.group_blocks();
        if let Some((a, z)) = l.data_window(first, last, plain_len, pages) {
            let g = first / k;
            prop_assert_eq!(g, last / k);
            prop_assert!(a <= l.place(first, 4096).data);
            prop_assert!(z >= l.place(last, last_len).data + last_len as u64);
            prop_assert!(z > a + n * PAGE - PAGE + last_len as u64, "gains a block");
            prop_assert!(z - a <= (2 * pages - 1) * PAGE);
            // Inside the group's data pages and the file.
            prop_assert!(a >= l.place(g * k, 4096).data);
            prop_assert!(z <= l.place(g * k + k - 1, 4096).data + PAGE);
            prop_assert!(z <= l.cipher_len(plain_len).unwrap());
        }
        }
    }

    #[test]
    fn spans_tile_the_range(off in 0u64..(1 << 40), len in 0usize..100_000) {
        let spans: Vec<_> = L.spans(off, len).collect();
        prop_assert_eq!(spans.iter().map(|s| s.len).sum::<usize>(), len);
        let mut pos = off;
        for s in &spans {
            prop_assert_eq!(s.block_no * BLOCK_PLAIN_LEN + s.start_in_block as u64, pos);
            prop_assert!(s.start_in_block + s.len <= BLOCK_PLAIN_LEN as usize);
            prop_assert!(s.len > 0);
            pos += s.len as u64;
        }
    }
}

#[test]
fn the_length_record_lies_in_group_0s_slack_when_it_fits() {
    let v3 = Layout::new(3, 1024);
    assert_eq!(v3.length_record_at(), Some(8192 - 64));
    let (start, end) = v3.slack(0)[0];
    assert!(
        start <= 8192 - 64 && end == 8192,
        "inside the slack after the table"
    );
    // A header that ends on a page leaves no zeros after the table; versions 1, 2 have none.
    assert_eq!(Layout::new(3, 4096).length_record_at(), None);
    assert_eq!(Layout::new(3, 4064).length_record_at(), None);
    assert_eq!(Layout::new(2, 1024).length_record_at(), None);
    // The longest whole prefix: a valid length is itself; a file that ends in (or right
    // after) group 1's table page is group 0's data.
    for len in [0u64, 1, 4096, 64 * 4096, 64 * 4096 + 1, 200 * 4096 + 7] {
        let c = v3.cipher_len(len).unwrap();
        assert_eq!(v3.longest_plain_len(c).unwrap(), len);
    }
    let table1_end = v3.cipher_len(64 * 4096).unwrap() + 4096;
    for c in [table1_end - 4096 + 640, table1_end] {
        assert!(v3.plain_len(c).is_err());
        assert_eq!(v3.longest_plain_len(c).unwrap(), 64 * 4096);
    }
}

#[test]
fn a_version_3_file_ending_at_a_new_groups_table_opens_at_the_data_before_it() {
    // Four groups of data, then the fifth group's table page: 260 pages after block 0's.
    let size = T.data_start + 260 * PAGE;
    assert!(T.plain_len(size).is_err());
    assert_eq!(T.plain_len_after_crash(size).unwrap(), 256 * 4096);
    // Inside that table page: the same.
    assert_eq!(T.plain_len_after_crash(size - 100).unwrap(), 256 * 4096);
    // Any other impossible length stays impossible, and version 2 keeps its rule.
    assert!(T.plain_len_after_crash(T.data_start - 1).is_err());
    let v2 = Layout::new(2, 1024);
    let v2_size = v2.cipher_len(109 * 4096).unwrap() + PAGE;
    assert!(v2.plain_len(v2_size).is_err());
    assert!(v2.plain_len_after_crash(v2_size).is_err());
    // Valid lengths are unchanged.
    let ok = T.cipher_len(5000).unwrap();
    assert_eq!(T.plain_len_after_crash(ok).unwrap(), 5000);
}
