#!/usr/bin/env bash
# POSIX conformance of a real kmsfs mount: pjdfstest (every test, ext4's feature set) and
# fsx (100,000 operations, fixed seed). Both must be clean. Run by scripts/test.sh after
# the release build; needs root (pjdfstest switches users), fuse3, pjdfstest and fsx.
#
#   bash scripts/posix.sh [FSX_OPS]
set -euo pipefail
cd "$(dirname "$0")/.."

ops=${1:-100000}
bin=$PWD/target/release/kmsfs
work=$(mktemp -d /tmp/kmsfs-posix.XXXXXX)
# pjdfstest runs parts as other users: they must be able to reach the mount.
chmod 0755 "$work"
export XDG_DATA_HOME=$work/data XDG_STATE_HOME=$work/state
mnt=$work/mnt

cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then
    fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" || true
  fi
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$mnt"
"$bin" init "$work/cipher" >/dev/null
"$bin" mount "$work/cipher" "$mnt" -o allow_other --audit-log "$work/audit.jsonl" --log-file "$work/daemon.log" >/dev/null

echo "-- pjdfstest on a kmsfs mount"
mkdir "$mnt/pjd" && chmod 0777 "$mnt/pjd"
if ! (cd "$mnt/pjd" && pjdfstest -c "$OLDPWD/tests/posix/pjdfstest.toml" -p . > "$work/pjdfstest.log" 2>&1); then
  grep -E "FAILED" -A2 "$work/pjdfstest.log" | head -60 || true
fi
summary=$(grep '^Summary:' "$work/pjdfstest.log" || echo "Summary: pjdfstest did not finish")
echo "pjdfstest $summary"
case "$summary" in
  *" 0 failed,"*) ;;
  *) echo "pjdfstest: failures on the kmsfs mount (log above)"; exit 1 ;;
esac

echo "-- fsx, $ops operations, seed 42"
if ! fsx -N "$ops" -S 42 -P "$work" "$mnt/fsx.dat" > "$work/fsx.log" 2>&1; then
  tail -40 "$work/fsx.log"
  echo "fsx: failed on the kmsfs mount"
  exit 1
fi
tail -1 "$work/fsx.log"

echo "-- the audit log of this run verifies"
"$bin" audit verify "$work/audit.jsonl"
echo "posix: 2 passed, 0 failed"
