//! Fuzzes the header decoder and the length arithmetic with hostile bytes: they must
//! return errors, never panic, and anything that decodes must re-encode to the same bytes.
#![no_main]

use kmsfs::format::{Header, Layout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, used)) = Header::decode(data) {
        assert_eq!(used, header.header_len as usize);
        let again = header.encode().expect("a decoded header re-encodes");
        assert_eq!(&again[..], &data[..used]);
        let layout = Layout::of(&header);
        if let Ok(plain) = layout.plain_len(data.len() as u64) {
            assert_eq!(layout.cipher_len(plain).unwrap(), data.len() as u64);
        }
    }
});
