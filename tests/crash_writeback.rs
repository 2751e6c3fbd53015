//! A power cut in the middle of an append that starts a new group (format version 3) can
//! leave the file ending at the new group's table page: the filesystem wrote that page
//! back, and the size with it, before the data pages after it. The file must still open,
//! everything before the cut read back, and the block at the cut fail as damage
//! (issue 19: no file unreadable after a crash).

mod mountkit;

use std::fs;
use std::io::Read;

use mountkit::{cipher_of, TestVolume};

const PAGE: u64 = 4096;
/// Where block 0's data starts with the default 1024-byte header.
const D: u64 = 8192;

#[test]
fn a_file_ending_at_a_new_groups_table_still_opens() {
    let v = TestVolume::with_init_args(&["--format-version", "3"], vec![]);
    let data: Vec<u8> = (0..(256 * 4096 + 4096) as u32)
        .map(|i| (i % 251) as u8)
        .collect();
    {
        let _m = v.mount();
        fs::write(v.p("big"), &data).unwrap();
    }
    // Four groups of data (256 blocks), then the fifth group's table page: block 256's
    // data never reached the disk.
    let cipher = cipher_of(&v, "big");
    let f = fs::OpenOptions::new().write(true).open(&cipher).unwrap();
    f.set_len(D + 260 * PAGE).unwrap();
    drop(f);
    let _m = v.mount();
    assert_eq!(fs::metadata(v.p("big")).unwrap().len(), 256 * 4096);
    let mut file = fs::File::open(v.p("big")).expect("the file opens");
    let mut head = vec![0u8; 255 * 4096];
    file.read_exact(&mut head).unwrap();
    assert_eq!(head, data[..255 * 4096]);
    // Block 255 was sealed as not the last one: it fails, as damage.
    let mut tail = vec![0u8; 4096];
    let err = file.read_exact(&mut tail).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
}
