//! Rekey's journal lives in the ciphertext directory, so it is authenticated (issue 20):
//! one planted or edited by whoever can write the directory cannot mark files as done.

mod mountkit;

use std::fs;

use mountkit::TestVolume;

fn rekey(v: &TestVolume) -> serde_json::Value {
    v.kmsfs_json(&["rekey", v.cipher.to_str().unwrap(), "--json"])
}

#[test]
fn a_planted_journal_does_not_mark_files_as_done() {
    for planted in ["", "00112233445566778899aabbccddeeff\nmac 00\n"] {
        let v = TestVolume::new();
        let m = v.mount();
        for n in ["a", "b", "c"] {
            fs::write(v.p(n), n).unwrap();
        }
        m.unmount();
        fs::write(v.cipher.join(".kmsfs-rekey.journal"), planted).unwrap();
        let report = rekey(&v);
        assert_eq!(report["rekeyed"], 3, "{planted:?}: {report}");
        assert_eq!(report["journal_refused"], true, "{report}");
        assert!(!v.cipher.join(".kmsfs-rekey.journal").exists());
        let _m = v.mount();
        assert_eq!(fs::read(v.p("b")).unwrap(), b"b");
    }
}
