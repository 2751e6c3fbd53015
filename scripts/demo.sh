#!/usr/bin/env bash
# The README's first command: sets up, builds kmsfs, and shows the main job on the
# built-in local KMS: create a volume, mount it, write files, look at the ciphertext and
# the audit log, catch a tampered file, unmount. Everything lives in a temporary
# directory that is removed at the end; nothing stays mounted.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install a Rust toolchain (https://rustup.rs) and run this again." >&2
  exit 1
fi
if ! command -v fusermount3 >/dev/null 2>&1; then
  echo "== installing fuse3 (needed to mount)"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq fuse3 >/dev/null
fi

echo "== building kmsfs (release)"
cargo build --release --quiet --bin kmsfs
export PATH="$PWD/target/release:$PATH"
kmsfs=$PWD/target/release/kmsfs

demo=$(mktemp -d /tmp/kmsfs-demo.XXXXXX)
export XDG_DATA_HOME=$demo/data XDG_STATE_HOME=$demo/state   # the local KMS's keys live here
cleanup() {
  mountpoint -q "$demo/plain" 2>/dev/null && kmsfs unmount "$demo/plain" >/dev/null
  rm -rf "$demo"
}
trap cleanup EXIT
mkdir "$demo/plain"
cd "$demo"
run() {
  if [ "$1" = sh ] && [ "$2" = -c ]; then printf '\n$ %s\n' "$3"; else printf '\n$ %s\n' "$*"; fi
  "$@"
}

run kmsfs init cipher
run kmsfs mount cipher plain --audit-log audit.jsonl
run sh -c 'echo "my secret tax return" > plain/tax-2025.txt'
run sh -c 'seq 1 100000 > plain/numbers.txt'
run ls -l plain
run cat plain/tax-2025.txt
echo
echo "# the same files in the ciphertext directory: a header and sealed blocks"
run ls -l cipher
echo
echo "# names are encrypted too; kmsfs path finds a file's ciphertext name"
run kmsfs path encrypt cipher tax-2025.txt
tax=cipher/$(basename "$(kmsfs path encrypt cipher tax-2025.txt)")
numbers=cipher/$(basename "$(kmsfs path encrypt cipher numbers.txt)")
run sh -c "od -A d -c $tax | sed -n '1,3p;\$p'"
run sh -c "grep -c 'my secret' $tax || true"
run kmsfs inspect "$tax"
echo
echo "# every key use, with who asked for it"
run kmsfs audit show audit.jsonl
run kmsfs unmount plain
echo
echo "# flip one bit of the ciphertext (byte 20000, past the first block) while unmounted: the read fails, nothing wrong is returned"
run sh -c "printf '\\001' | dd of=$numbers bs=1 seek=20000 count=1 conv=notrunc status=none"
run kmsfs mount cipher plain --audit-log audit.jsonl
run sh -c 'head -c 100 plain/numbers.txt > /dev/null && echo "first block still reads"'
run sh -c 'cat plain/numbers.txt > /dev/null || echo "-> EIO, as it should be"'
run sh -c "$kmsfs audit show audit.jsonl | tail -2"
run kmsfs audit verify audit.jsonl
run kmsfs unmount plain
echo
echo "done: the demo directory $demo is removed now."
