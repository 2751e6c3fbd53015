//! Tests of version 4's [`Layout`]: the worked examples of `docs/format.md` ("Layout,
//! version 4"), the sizes it refuses, each block on a page of its own, the slack and the
//! length record, and the length a size says after a crash.

use super::*;
use proptest::prelude::*;

const P4: Layout = Layout::new(4, 1024);
const B: u64 = BLOCK_PLAIN_LEN_PAGED;

#[test]
fn worked_examples_from_the_format_doc() {
    for (plain, cipher) in [
        (0u64, 4124u64),
        (1, 4125),
        (4068, 8192),
        (4069, 8221),
        (8136, 12288),
        (1 << 20, 1_059_896),
        (1 << 30, 1_081_136_492),
    ] {
        assert_eq!(P4.cipher_len(plain).unwrap(), cipher, "plain {plain}");
        assert_eq!(P4.plain_len(cipher).unwrap(), plain, "cipher {cipher}");
    }
    assert_eq!(P4.block_count(1 << 20), 258);
    assert_eq!(P4.block_count(1 << 30), 263_949);
    // D = ceil((H + 64) / P) · P.
    for (h, d) in [
        (128u32, 4096u64),
        (1024, 4096),
        (4032, 4096),
        (4033, 8192),
        (8128, 8192),
        (8129, 12288),
        (16384, 20480),
    ] {
        let l = Layout::new(4, h);
        assert_eq!(l.data_start, d, "H {h}");
        assert_eq!(l.length_record_at(), Some(d - 64), "H {h}");
        assert_eq!(l.cipher_len(0).unwrap(), d + 28, "H {h}");
    }
}

#[test]
fn impossible_sizes_are_rejected() {
    let d = 4096;
    // Below the empty block, D itself, and a page holding only part of a nonce and tag
    // (or an empty block after full ones).
    for cipher in [
        0,
        1024,
        d - 1,
        d,
        d + 1,
        d + 27,
        d + 4096 + 1,
        d + 4096 + 27,
        d + 4096 + 28,
    ] {
        assert!(
            P4.plain_len(cipher).is_err(),
            "cipher {cipher} must be invalid"
        );
    }
    // Every page boundary after D is a size: f full blocks.
    for f in 1..5u64 {
        assert_eq!(P4.plain_len(d + f * PAGE).unwrap(), f * B);
    }
}

#[test]
fn each_sealed_block_fills_one_page_of_its_own() {
    for b in [0u64, 1, 2, 63, 64, 108, 109, 1000] {
        let p = P4.place(b, B as usize);
        assert_eq!(p.nonce, 4096 + b * PAGE);
        assert_eq!(p.data, p.nonce + 12);
        assert_eq!(p.tag + 16, p.nonce + PAGE, "a full block ends its page");
        // A short last block starts its page too.
        let short = P4.place(b, 10);
        assert_eq!((short.nonce, short.tag), (p.nonce, p.data + 10));
        // One positional write of a block covers its page and nothing else.
        assert_eq!(
            P4.write_ranges(b, b, B as usize),
            vec![(p.nonce, p.nonce + PAGE)]
        );
    }
    assert_eq!(
        P4.write_ranges(3, 7, 5),
        vec![(4096 + 3 * PAGE, 4096 + 7 * PAGE + 33)]
    );
    assert!(P4.is_paged() && !P4.is_split() && !P4.has_slots());
    assert_eq!(P4.data_window(5, 5, 1 << 30, 4), None);
}

#[test]
fn slack_is_the_header_region_after_the_header_record_included() {
    for h in [128u32, 1024, 4032, 4033, 16384] {
        let l = Layout::new(4, h);
        for plain in [0u64, 1, B, 100 * B + 7] {
            assert_eq!(l.slack(plain), vec![(h as u64, l.data_start)], "H {h}");
        }
    }
}

#[test]
fn sweep_every_length_near_block_boundaries() {
    for blocks in [0u64, 1, 2, 3, 63, 64, 65, 108, 109, 110, 255, 256, 257, 258] {
        for delta in 0..B + 2 {
            let plain = blocks * B + delta;
            let cipher = P4.cipher_len(plain).unwrap();
            assert_eq!(P4.plain_len(cipher), Ok(plain));
            assert_eq!(P4.longest_plain_len(cipher), Ok(plain));
            assert_eq!(P4.plain_len_after_crash(cipher), Ok(plain));
            let last = P4.block_count(plain) - 1;
            let blen = P4.block_plain_len(plain, last);
            let p = P4.place(last, blen);
            assert_eq!(cipher, p.tag + 16);
            assert_eq!(p.nonce, 4096 + last * PAGE);
        }
    }
}

#[test]
fn the_length_a_size_says_after_a_crash() {
    // With a record: a size 1..=28 bytes into a page after whole blocks is those blocks.
    for f in [1u64, 2, 257] {
        for r in [1u64, 12, 27, 28] {
            let c = 4096 + f * PAGE + r;
            assert!(P4.plain_len(c).is_err());
            assert_eq!(P4.longest_plain_len(c).unwrap(), f * B, "f {f} r {r}");
        }
    }
    // Below D + 28 nothing, record or not; without a record no invalid size opens.
    for c in [4095u64, 4096, 4097, 4123] {
        assert!(P4.longest_plain_len(c).is_err(), "cipher {c}");
        assert!(P4.plain_len_after_crash(c).is_err(), "cipher {c}");
    }
    assert!(P4.plain_len_after_crash(4096 + PAGE + 5).is_err());
}

proptest! {
    #[test]
    fn plain_cipher_round_trip(plain in 0u64..(1 << 44), h in 128u32..16384) {
        let l = Layout::new(4, h);
        let c = l.cipher_len(plain).unwrap();
        prop_assert_eq!(l.plain_len(c).unwrap(), plain);
        if let Ok(p) = l.plain_len(c + 1) { prop_assert!(p > plain); }
        // Every block starts a page.
        let last = l.block_count(plain) - 1;
        prop_assert_eq!(l.place(last, 0).nonce % PAGE, 0);
    }
}
