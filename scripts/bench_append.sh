#!/usr/bin/env bash
# Appends to and truncates of files that were fsynced, on two kmsfs binaries (issue 19):
# since an append to a file whose last block holds fsynced bytes, and a truncate of a file
# holding such bytes, are ordered with flushes (`docs/format.md`, "Ordered changes"), this
# is the work that pays for it. Both on the
# built-in local KMS, interleaved (the order swapped every round); prints the medians.
#
#   sudo bash scripts/bench_append.sh BIN BASELINE     # two built kmsfs binaries
#   options: --rounds N (default 5)  --balloon GIB (default 2)  --work DIR
#
# Workloads, each on a file of 1 MiB + 100 bytes written and fsynced by an earlier mount:
#   log      300 appends of 120 bytes, each followed by fdatasync (a log that syncs)
#   lines    300 appends of 120 bytes through one open, then one fsync
#   bulk     64 MiB appended in writes of 1 MiB, then one fsync
#   trunc    100 truncates, each 1000 bytes shorter, then one fsync
#   rewrite  100 times: open with O_TRUNC, write 4 KiB, fsync, close (a file saved in place)
# Conventions of scripts/bench.sh: root, a fresh mount and the page cache dropped before
# every timed step. Writes DIR/raw.tsv; nothing stays mounted.
set -euo pipefail
. "$(dirname "$0")/benchlib.sh"
cd "$(dirname "$0")/.."

usage() {
  echo "usage: bench_append.sh BIN BASELINE [--rounds N] [--balloon GIB] [--work DIR]" >&2
  exit 2
}
K= B= rounds=5 balloon_gib=2 work=target/bench/append
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --balloon) balloon_gib=$2; shift ;;
    --work) work=$2; shift ;;
    -*) usage ;;
    *) if [ -z "$K" ]; then K=$(realpath "$1"); elif [ -z "$B" ]; then B=$(realpath "$1"); else usage; fi ;;
  esac
  shift
done
[ -n "$K" ] && [ -x "$K" ] && [ -n "$B" ] && [ -x "$B" ] || usage
[ "$(id -u)" = 0 ] || { echo "bench_append.sh needs root (it drops the page cache)" >&2; exit 1; }
command -v fusermount3 >/dev/null || { echo "fusermount3 missing (apt-get install fuse3)" >&2; exit 1; }

mkdir -p "$work"
work=$(cd "$work" && pwd)
W=$work/run
raw=$work/raw.tsv
systems=(kmsfs baseline)
declare -A MNT CIPHER PID BIN
BIN[kmsfs]=$K BIN[baseline]=$B
cleanup() {
  set +e
  for s in "${systems[@]}"; do
    [ -n "${MNT[$s]:-}" ] && mountpoint -q "${MNT[$s]}" && { fusermount3 -u "${MNT[$s]}" || umount -l "${MNT[$s]}"; }
  done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$W"; mkdir -p "$W"
export XDG_DATA_HOME=$W/xdg/data XDG_STATE_HOME=$W/xdg/state
for s in "${systems[@]}"; do
  "${BIN[$s]}" init "$W/$s.cipher" --local-kms-state "$W/$s-kms" >/dev/null
  CIPHER[$s]=$W/$s.cipher; MNT[$s]=$W/$s.mnt; mkdir "${MNT[$s]}"
done

# One timed workload on file $2 of mount $1 (python prints the seconds).
run() { # workload file
  python3 - "$@" <<'PY'
import os, sys, time
work, path = sys.argv[1], sys.argv[2]
line = b"x" * 119 + b"\n"
t0 = time.monotonic()
if work == "log":
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    for _ in range(300):
        os.write(fd, line); os.fdatasync(fd)
    os.close(fd)
elif work == "lines":
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    for _ in range(300):
        os.write(fd, line)
    os.fsync(fd); os.close(fd)
elif work == "trunc":
    fd = os.open(path, os.O_WRONLY)
    size = os.fstat(fd).st_size
    for i in range(1, 101):
        os.ftruncate(fd, size - 1000 * i)
    os.fsync(fd); os.close(fd)
elif work == "rewrite":
    page = os.urandom(4096)
    for _ in range(100):
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, page); os.fsync(fd); os.close(fd)
else:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    chunk = os.urandom(1 << 20)
    for _ in range(64):
        os.write(fd, chunk)
    os.fsync(fd); os.close(fd)
print("%.3f" % (time.monotonic() - t0))
PY
}

printf 'round\tsystem\tworkload\tseconds\n' > "$raw"
for round in $(seq "$rounds"); do
  order=("${systems[@]}")
  [ $((round % 2)) = 0 ] && order=(baseline kmsfs)
  for work in log lines bulk trunc rewrite; do
    for s in "${order[@]}"; do
      # The file, fsynced by an earlier mount; the timed step on a fresh one.
      fresh_mount "$s"
      f=${MNT[$s]}/$work.$round
      head -c $((1048576 + 100)) /dev/urandom > "$f"; sync "$f"
      fresh_mount "$s"; settle
      secs=$(run "$work" "$f")
      printf '%s\t%s\t%s\t%s\n' "$round" "$s" "$work" "$secs" >> "$raw"
      echo "  round $round $s $work ${secs}s"
      rm -f "$f"
    done
  done
done
for s in "${systems[@]}"; do unmount_sys "$s"; done

echo "== medians of $rounds rounds (seconds; ratio = kmsfs / baseline time)"
python3 - "$raw" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for work in ("log", "lines", "bulk", "trunc", "rewrite"):
    med = {s: statistics.median(float(r["seconds"]) for r in rows if r["workload"] == work and r["system"] == s)
           for s in ("kmsfs", "baseline")}
    print("%-7s kmsfs %.3f s  baseline %.3f s  ratio %.2f" % (work, med["kmsfs"], med["baseline"], med["kmsfs"] / med["baseline"]))
PY
