#!/usr/bin/env bash
# The README's first command: builds kmsfs and shows it at work.
# Until the mount lands, this shows the on-disk format: `kmsfs inspect` on a valid and on
# a damaged golden file from tests/vectors/ (no KMS needed for either).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install a Rust toolchain (https://rustup.rs) and run this again." >&2
  exit 1
fi

echo "== building kmsfs (release)"
cargo build --release --quiet --bin kmsfs
bin=target/release/kmsfs

echo
echo "== a valid ciphertext file: the header, read without any KMS"
"$bin" inspect tests/vectors/three-blocks.kmsfs

echo
echo "== the first bytes on disk: magic, version, algorithm, flags, header length, file id"
od -A d -t x1 -N 36 tests/vectors/three-blocks.kmsfs

echo
echo "== a damaged one (cut inside a block): kmsfs refuses it and says why"
"$bin" inspect tests/vectors/cut-mid-block.kmsfs || echo "(exit status $?)"

echo
echo "== the same, as JSON for scripts"
"$bin" inspect --json tests/vectors/block-plus-one.kmsfs
