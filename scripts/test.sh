#!/usr/bin/env bash
# Runs every test (what CI runs, and the README's test command): sets the machine up
# (scripts/setup.sh), then the static checks, the cargo tests, the AWS SDK against our KMS
# server, the POSIX suites on real mounts and the README's demo. Fails if any of them
# leaves a kmsfs mount behind.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\n== %s\n' "$*"; }

# FUSE mounts (kmsfs mounts show as type fuse), one per line; a test that leaves one
# makes the run fail.
kmsfs_mounts() { awk '$3 == "fuse" || $3 ~ /^fuse\./ {print $2}' /proc/mounts | sort; }
mounts_before=$(kmsfs_mounts)
check_mounts() {
  local left
  left=$(comm -13 <(printf '%s\n' "$mounts_before") <(kmsfs_mounts) | sed '/^$/d')
  if [ -n "$left" ]; then
    echo "error: the tests left kmsfs mounts behind:" >&2
    printf '  %s\n' $left >&2
    return 1
  fi
  echo "mounts: none left behind"
}

bash scripts/setup.sh

log "static checks"
bash scripts/check.sh

log "cargo test"
cargo build --release --bins
cargo test --release --all-targets 2>&1

if [ -d tests/python ] && ls tests/python/test_*.py >/dev/null 2>&1; then
  log "python tests (AWS SDK against our binaries)"
  KMSFS_BIN="$PWD/target/release/kmsfs" target/pyenv/bin/python -m pytest -q tests/python
fi

log "POSIX suites on a real mount (pjdfstest, fsx)"
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/posix.sh
else
  echo "error: the POSIX suites need root (pjdfstest switches users); run as root" >&2
  exit 1
fi

log "the README's demo (scripts/demo.sh) runs to the end"
if ! bash scripts/demo.sh > target/demo.log 2>&1; then
  tail -30 target/demo.log
  echo "error: scripts/demo.sh failed (log above)" >&2
  exit 1
fi
grep -q -- "-> EIO, as it should be" target/demo.log || { echo "error: the demo's tampered read did not fail" >&2; exit 1; }
echo "demo: ok"

log "nothing left mounted"
check_mounts
