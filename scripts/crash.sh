#!/usr/bin/env bash
# A long crash campaign (issue 19): ROUNDS rounds of each crash test (power cuts, killed
# daemons, killed offline commands) from SEED on, printing each round's seed; stops at the
# first failure, whose message names the seed to replay:
#   KMSFS_CRASH_ROUNDS=1 KMSFS_CRASH_SEED=<seed> cargo test --release --test crash_power
# Needs root, fuse3 and xfsprogs (scripts/setup.sh). KMSFS_BIN runs another binary.
#   bash scripts/crash.sh [ROUNDS] [SEED]        (defaults: 200, a seed from the clock)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

rounds=${1:-200}
seed=${2:-$(( $(date +%s%N) % 1000000000 ))}
if [ "$(id -u)" -ne 0 ]; then
  echo "error: the crash tests need root (loop devices, mounts)" >&2
  exit 1
fi
command -v xfs_io >/dev/null 2>&1 || { echo "error: xfs_io missing; run scripts/setup.sh" >&2; exit 1; }

nice -n 10 cargo build --release --bins
echo "crash campaign: $rounds rounds per test from seed $seed (binary: ${KMSFS_BIN:-target/release/kmsfs})"
export KMSFS_CRASH_ROUNDS=$rounds KMSFS_CRASH_SEED=$seed
for t in crash_power crash_kill crash_offline; do
  printf '\n== %s\n' "$t"
  # One test at a time, so that the rounds print in order and the first failure stops it.
  if ! nice -n 10 cargo test --release --test "$t" -- --nocapture --test-threads 1; then
    echo "crash campaign: $t failed; its panic message above names the seed to replay" >&2
    exit 1
  fi
done
left=$(losetup -a | grep -c 'disk.img' || true)
if [ "$left" -ne 0 ]; then
  echo "error: $left loop device(s) of the crash tests left behind" >&2
  exit 1
fi
echo "crash campaign: all rounds passed"
