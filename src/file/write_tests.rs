//! Tests of the write path's chunking and its split for two cores (`write.rs`).

use super::{chunk_blocks, split_point, Layout, CHUNK_PLAIN};
use crate::format::{GROUP_BLOCKS, TAG_LEN};

/// Every split leaves two runs that each own all of their blocks' bytes and none of the
/// other's, with neither under a quarter of the blocks; long enough runs do split.
#[test]
fn split_points_never_interleave_the_two_runs() {
    for version in [1u16, 2, 4] {
        let layout = Layout::new(version, 1024);
        let bs = layout.block_len() as usize;
        for b0 in (0..3 * GROUP_BLOCKS).step_by(7) {
            for count in [64u64, 65, 100, 109, 128, 200, 256, 300] {
                let b1 = b0 + count - 1;
                for last_len in [1usize, 100, bs] {
                    let Some((mid, back_start)) = split_point(&layout, b0, b1, last_len) else {
                        // Only version 2 may decline (no group boundary near the middle).
                        assert!(version == 2, "v1 {b0}..={b1} not split");
                        continue;
                    };
                    assert!(b0 < mid && mid <= b1);
                    assert!((mid - b0).min(b1 + 1 - mid) >= count / 4);
                    for b in b0..=b1 {
                        let len = if b == b1 { last_len } else { bs };
                        let p = layout.place(b, len);
                        let end = (p.data + len as u64).max(p.tag + TAG_LEN as u64);
                        let start = p.nonce.min(p.data);
                        if b < mid {
                            assert!(end <= back_start, "v{version} block {b} of {b0}..={b1}");
                        } else {
                            assert!(start >= back_start, "v{version} block {b} of {b0}..={b1}");
                        }
                    }
                    if version == 2 {
                        assert_eq!(mid % GROUP_BLOCKS, 0);
                    }
                }
            }
        }
        // A whole 1 MiB chunk always splits.
        let chunk = chunk_blocks(bs as u64);
        for b0 in (0..1000).step_by(256) {
            for last in [b0 + 255, b0 + chunk - 1] {
                assert!(
                    split_point(&layout, b0, last, bs).is_some(),
                    "v{version} {b0}..={last}"
                );
            }
        }
    }
}

/// A request of 1 MiB, wherever it starts, is one chunk (one `pwrite`) in every version.
#[test]
fn a_1_mib_request_is_one_chunk_at_any_offset() {
    for bs in [4096u64, 4068] {
        let most = (0..3 * bs)
            .map(|off| (off + CHUNK_PLAIN - 1) / bs - off / bs + 1)
            .max();
        assert_eq!(most, Some(chunk_blocks(bs)), "blocks of {bs}");
    }
    assert_eq!(chunk_blocks(4096), 257);
}
