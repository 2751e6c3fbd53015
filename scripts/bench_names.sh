#!/bin/bash
# Creates, cold-reads and renames small files on a fresh volume, and prints the seconds:
#   scripts/bench_names.sh KMSFS_BINARY   create 10,000 files of 4 KiB (then sync), read them
#                                         with 8 threads after a remount and dropped caches,
#                                         rename 2,000 of them one by one
#   scripts/bench_names.sh gocryptfs      the renames only, on a gocryptfs volume
# With KMS_LATENCY=MS the volume is on `kmsfs kms serve --latency MS` (an HTTP KMS that
# answers MS late) instead of the built-in KMS.
# Run as root (it drops caches); interleave the systems compared, as in
# docs/benchmarks/history.md ("Issue 20 beside the previous main").
set -euo pipefail
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/bench-names.XXXX")
KMS_PID=
trap 'fusermount3 -u "$W/m" 2>/dev/null || true; [ -n "$KMS_PID" ] && kill "$KMS_PID"; rm -rf "$W"' EXIT
mkdir "$W/m"
rename_2000() {
    python3 - "$1" <<'PY'
import os, sys, time
d = sys.argv[1]
t = time.monotonic()
for i in range(2000):
    os.rename(f"{d}/f{i:05d}", f"{d}/g{i:05d}")
print(f"{time.monotonic() - t:.3f}")
PY
}
if [ "$BIN" = gocryptfs ]; then
    mkdir "$W/c"
    echo pw > "$W/pw"
    gocryptfs -q -init -passfile "$W/pw" "$W/c" >/dev/null 2>&1
    gocryptfs -q -passfile "$W/pw" "$W/c" "$W/m" 2>/dev/null
    python3 "$HERE/bench_files.py" create "$W/m/files" 2000 4096 >/dev/null
    echo "gocryptfs rename2000=$(rename_2000 "$W/m/files")"
    exit 0
fi
export XDG_STATE_HOME=$W/state XDG_DATA_HOME=$W/data XDG_CONFIG_HOME=$W/config
init=()
if [ -n "${KMS_LATENCY:-}" ]; then
    "$BIN" kms serve --listen 127.0.0.1:0 --state "$W/kms.json" --latency "$KMS_LATENCY" >"$W/kms.out" 2>/dev/null &
    KMS_PID=$!
    until grep -q "listening on" "$W/kms.out" 2>/dev/null; do sleep 0.05; done
    url=$(sed -n 's/^listening on //p' "$W/kms.out" | head -1)
    export AWS_SHARED_CREDENTIALS_FILE=$W/kms.json.credentials AWS_REGION=us-east-1
    init=(--kms-endpoint "$url" --key "$("$BIN" kms create-key --endpoint "$url")")
fi
"$BIN" init "$W/c" "${init[@]}" >/dev/null
"$BIN" mount "$W/c" "$W/m" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
c=$(python3 "$HERE/bench_files.py" create "$W/m/files" 10000 4096)
"$BIN" unmount "$W/m" >/dev/null
"$BIN" mount "$W/c" "$W/m" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
r=$(python3 "$HERE/bench_files.py" read "$W/m/files" 8)
n=$(rename_2000 "$W/m/files")
"$BIN" unmount "$W/m" >/dev/null
echo "create=$c read=$r rename2000=$n"
