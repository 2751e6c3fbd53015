#!/usr/bin/env bash
# POSIX conformance of real kmsfs mounts: pjdfstest (every test, ext4's feature set) on an
# allow_other mount, where the kernel checks permissions, and fsx (100,000 operations,
# fixed seed) on a private one, where it does not. Both must be clean. Run by scripts/test.sh after
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
private=$work/private

cleanup() {
  for m in "$mnt" "$private"; do
    if mountpoint -q "$m" 2>/dev/null; then
      fusermount3 -u "$m" 2>/dev/null || umount -l "$m" || true
    fi
  done
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

echo "-- fsx, $ops operations, seed 42, on a private mount (no default_permissions)"
mkdir -p "$private"
"$bin" init "$work/cipher2" >/dev/null
"$bin" mount "$work/cipher2" "$private" --audit-log "$work/audit2.jsonl" --log-file "$work/daemon2.log" >/dev/null
if grep -q "default_permissions" < <(grep " $private " /proc/self/mountinfo); then
  echo "fsx: the private mount has default_permissions; it should not"
  exit 1
fi
if ! fsx -N "$ops" -S 42 -P "$work" "$private/fsx.dat" > "$work/fsx.log" 2>&1; then
  tail -40 "$work/fsx.log"
  echo "fsx: failed on the kmsfs mount"
  exit 1
fi
tail -1 "$work/fsx.log"

echo "-- the audit logs of this run verify"
"$bin" audit verify "$work/audit.jsonl"
"$bin" audit verify "$work/audit2.jsonl"
echo "posix: 2 passed, 0 failed"
