#!/usr/bin/env bash
# kmsfs beside the plain directory and gocryptfs, in one run on one disk (issue 6).
#
#   bash scripts/bench.sh            # full: 1 GiB sequential, 10,000 small files, 3 runs
#   bash scripts/bench.sh --quick    # a few seconds per workload, for development
#   options: --runs N  --out DIR (default docs/benchmarks)  --work DIR (default target/bench)
#            --only "seq_write seq_read ..." (a subset of the workloads, for development)
#            --baseline BIN  (also measure another kmsfs binary on the local KMS: before/after)
#            --baseline-init "ARGS"  (extra `kmsfs init` arguments for the baseline's volume,
#                                     e.g. "--format-version 1" with --baseline target/release/kmsfs)
#            --baseline-label TEXT   (its name in the results; default "kmsfs before (local KMS)")
#
# Systems: plain (the work directory itself), gocryptfs (defaults), kmsfs on the built-in
# local KMS, kmsfs on `kmsfs kms serve --latency 20` (an HTTP KMS answering 20 ms late),
# and kmsfs in bucket-key mode (`init --bucket-key`) on the same HTTP KMS.
# Systems are interleaved within each workload (A B C D, rotated every run); before every
# timed step the page cache is dropped and a few GiB of memory are touched. Needs root (to
# drop caches), fuse3, gocryptfs and fio (installed with apt-get when missing).
# Writes DIR/results.md, DIR/chart.png and DIR/raw.tsv. Nothing stays mounted.
set -euo pipefail
. "$(dirname "$0")/benchlib.sh"
cd "$(dirname "$0")/.."
repo=$PWD

quick=0 runs=3 out=docs/benchmarks work=target/bench only= baseline= baseline_init= baseline_label=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --runs) runs=$2; shift ;;
    --out) out=$2; shift ;;
    --work) work=$2; shift ;;
    --only) only=$2; shift ;;
    --baseline) baseline=$(realpath "$2"); shift ;;
    --baseline-init) baseline_init=$2; shift ;;
    --baseline-label) baseline_label=$2; shift ;;
    *) echo "usage: bench.sh [--quick] [--runs N] [--out DIR] [--work DIR] [--only \"W ...\"] [--baseline BIN [--baseline-init \"ARGS\"] [--baseline-label TEXT]]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then
  seq_mib=128 nfiles=1000 fio_secs=3 tree_files=1000 balloon_gib=1
else
  seq_mib=1024 nfiles=10000 fio_secs=10 tree_files=5000 balloon_gib=3
fi
read_threads=8
systems=(plain gocryptfs kmsfs kmsfs-kms20)
[ -n "$baseline" ] && systems+=(kmsfs-base)

[ "$(id -u)" = 0 ] || { echo "bench.sh needs root (it drops the page cache)" >&2; exit 1; }
need=()
command -v gocryptfs >/dev/null || need+=(gocryptfs)
command -v fio >/dev/null || need+=(fio)
command -v fusermount3 >/dev/null || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
venv=$repo/target/bench-venv
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  echo "== making a venv with matplotlib for the chart ($venv)"
  python3 -m venv "$venv" && "$venv/bin/pip" install -q matplotlib
fi
echo "== building kmsfs (release)"
cargo build --release --quiet --bin kmsfs
K=$repo/target/release/kmsfs

mkdir -p "$work" "$out"
work=$(cd "$work" && pwd)
W=$work/run
raw=$work/raw.tsv

# --- a real source tree: crates from the cargo registry, tarred once --------------------
tarball=$work/crates-$tree_files.tar
if [ ! -f "$tarball" ]; then
  src=$(ls -d "$HOME"/.cargo/registry/src/*/ 2>/dev/null | head -1)
  [ -n "$src" ] || { echo "no ~/.cargo/registry/src to make a source tarball from" >&2; exit 1; }
  echo "== making $tarball (crate sources, about $tree_files files)"
  (cd "$src" && total=0 && for c in $(ls | sort); do
      echo "$c"; total=$((total + $(find "$c" -type f | wc -l)))
      [ $total -ge "$tree_files" ] && break
    done) > "$work/crates.list"
  tar -C "$src" -cf "$tarball" -T "$work/crates.list"
fi
tree_count=$(tar -tf "$tarball" | grep -vc '/$')

# --- mounts -------------------------------------------------------------------------------
declare -A MNT PID
kms_pid=
cleanup() {
  set +e
  for s in gocryptfs kmsfs kmsfs-kms20 kmsfs-bucket kmsfs-base; do
    [ -n "${MNT[$s]:-}" ] && mountpoint -q "${MNT[$s]}" && { fusermount3 -u "${MNT[$s]}" || umount -l "${MNT[$s]}"; }
  done
  [ -n "$kms_pid" ] && kill "$kms_pid" 2>/dev/null && wait "$kms_pid" 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$W"; mkdir -p "$W"
export XDG_DATA_HOME=$W/xdg/data XDG_STATE_HOME=$W/xdg/state
mkdir -p "$W/plain"; MNT[plain]=$W/plain
echo benchmark > "$W/passfile"
mkdir "$W/gc.cipher"; gocryptfs -q -init -passfile "$W/passfile" "$W/gc.cipher" >/dev/null 2>&1
mkdir "$W/gc.mnt"; MNT[gocryptfs]=$W/gc.mnt
"$K" init "$W/kl.cipher" >/dev/null
mkdir "$W/kl.mnt"; MNT[kmsfs]=$W/kl.mnt
if [ -n "$baseline" ]; then
  # shellcheck disable=SC2086 # ARGS are words on purpose
  "$baseline" init "$W/kb.cipher" $baseline_init >/dev/null
  mkdir "$W/kb.mnt"; MNT[kmsfs-base]=$W/kb.mnt
fi
mkdir -p "$W/kms"
"$K" kms serve --listen 127.0.0.1:0 --state "$W/kms/state.json" --latency 20 \
  --audit-log "$W/kms/server.jsonl" > "$W/kms.out" 2> "$W/kms.err" &
kms_pid=$!
for _ in $(seq 100); do grep -q '^listening on' "$W/kms.out" 2>/dev/null && break; sleep 0.1; done
endpoint=$(sed -n 's/^listening on //p' "$W/kms.out")
[ -n "$endpoint" ] || { echo "kmsfs kms serve did not start:" >&2; cat "$W/kms.err" >&2; exit 1; }
export AWS_SHARED_CREDENTIALS_FILE=$W/kms/state.json.credentials AWS_REGION=us-east-1
arn=$("$K" kms create-key --endpoint "$endpoint")
"$K" init "$W/ks.cipher" --kms-endpoint "$endpoint" --key "$arn" >/dev/null
mkdir "$W/ks.mnt"; MNT[kmsfs-kms20]=$W/ks.mnt
if "$K" init --help | grep -q -- --bucket-key; then
  "$K" init "$W/kk.cipher" --kms-endpoint "$endpoint" --key "$arn" --bucket-key >/dev/null
  mkdir "$W/kk.mnt"; MNT[kmsfs-bucket]=$W/kk.mnt
  systems+=(kmsfs-bucket)
fi

# Mounts system $1 (benchlib.sh's mount_sys, replaced here: plain and gocryptfs too).
mount_sys() {
  case $1 in
    plain) ;;
    gocryptfs) gocryptfs -q -passfile "$W/passfile" "$W/gc.cipher" "${MNT[$1]}" 2>/dev/null ;;
    kmsfs|kmsfs-kms20|kmsfs-bucket|kmsfs-base)
      local c=$W/kl.cipher bin=$K line
      [ "$1" = kmsfs-kms20 ] && c=$W/ks.cipher
      [ "$1" = kmsfs-bucket ] && c=$W/kk.cipher
      [ "$1" = kmsfs-base ] && c=$W/kb.cipher bin=$baseline
      line=$("$bin" mount "$c" "${MNT[$1]}" --audit-log "$W/$1.audit.jsonl")
      PID[$1]=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<< "$line") ;;
  esac
}
# unmount_sys and fresh_mount: benchlib.sh (a plain directory is never a mount point).
want() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }

# KMS calls: data keys consumed and keys unwrapped, from the mount's audit log, and for
# the HTTP KMS the requests its own audit log saw (both kmsfs systems on it are never
# measured at once); keys unwrapped ahead of their open (prefetched) and of those, used.
mark() { a0=$(audit_lines "$W/$1.audit.jsonl"); k0=$(audit_lines "$W/kms/server.jsonl"); }
kms_counts() { # system -> "gdk decrypt server_gdk server_decrypt prefetched prefetched_used"
  local f=$W/$1.audit.jsonl g d sg=- sd=- p u
  if [ "$1" = plain ] || [ "$1" = gocryptfs ]; then echo "- - - - - -"; return; fi
  g=$(count_since "$f" "$a0" '"event":"data_key_generated"')
  d=$(count_since "$f" "$a0" '"event":"key_unwrapped"')
  p=$(count_since "$f" "$a0" '"event":"key_prefetched"')
  u=$(count_since "$f" "$a0" '"cache":"prefetched"')
  if [ "$1" = kmsfs-kms20 ] || [ "$1" = kmsfs-bucket ]; then
    sg=$(count_since "$W/kms/server.jsonl" "$k0" '"eventName":"GenerateDataKey"')
    sd=$(count_since "$W/kms/server.jsonl" "$k0" '"eventName":"Decrypt"')
  fi
  echo "$g $d $sg $sd $p $u"
}
rss_of() { # system -> "rss_kib hwm_kib"
  local p=${PID[$1]:-}
  if [ -n "$p" ] && [ -r "/proc/$p/status" ]; then
    awk '/^VmRSS/{r=$2} /^VmHWM/{h=$2} END{print r" "h}' "/proc/$p/status"
  else echo "- -"; fi
}
now() { date +%s.%N; }
elapsed() { python3 -c "print('%.6f' % ($2 - $1))"; }
record() { # run system workload value unit [rss hwm]
  local counts; counts=$(kms_counts "$2")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${counts// /$'\t'}" "${6:--}" "${7:--}" >> "$raw"
  printf '  %-12s %-11s %10s %-5s kms(gdk dec srv-gdk srv-dec ahead used)=%s %s\n' "$2" "$3" "$4" "$5" "$counts" "${6:+rss=${6}KiB}"
}
fio_iops() { # dir rw
  fio --name=b --directory="$1" --filename=big --rw="$2" --bs=4k --size="${seq_mib}M" \
    --ioengine=psync --numjobs=4 --group_reporting --runtime="$fio_secs" --time_based \
    ${3:+--end_fsync=1} --output-format=json |
    python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print('%.0f' % (j['read']['iops'] + j['write']['iops']))"
}

printf 'run\tsystem\tworkload\tvalue\tunit\tgdk\tdecrypt\tserver_gdk\tserver_decrypt\tprefetched\tprefetched_used\trss_kib\thwm_kib\n' > "$raw"
for s in "${systems[@]}"; do mount_sys "$s"; done
echo "== $runs runs; sequential ${seq_mib} MiB, $nfiles small files, source tree of $tree_count files"

for run in $(seq "$runs"); do
  # Rotate the order of the systems every run.
  rot=$(((run - 1) % ${#systems[@]}))
  order=("${systems[@]:$rot}" "${systems[@]:0:$rot}")
  echo "== run $run (${order[*]})"
  want seq_write && for s in "${order[@]}"; do
    M=${MNT[$s]}; rm -f "$M/big"; settle; mark "$s"
    t0=$(now); dd if=/dev/zero of="$M/big" bs=1M count="$seq_mib" conv=fsync status=none; t1=$(now)
    record "$run" "$s" seq_write "$(python3 -c "print('%.1f' % ($seq_mib / ($t1 - $t0)))")" MiB/s
  done
  want seq_read && for s in "${order[@]}"; do
    fresh_mount "$s"; M=${MNT[$s]}; settle; mark "$s"
    t0=$(now); dd if="$M/big" of=/dev/null bs=1M status=none; t1=$(now)
    record "$run" "$s" seq_read "$(python3 -c "print('%.1f' % ($seq_mib / ($t1 - $t0)))")" MiB/s
  done
  want rand_read && for s in "${order[@]}"; do
    fresh_mount "$s"; M=${MNT[$s]}; settle; mark "$s"
    record "$run" "$s" rand_read "$(fio_iops "$M" randread)" IOPS
  done
  want rand_write && for s in "${order[@]}"; do
    fresh_mount "$s"; M=${MNT[$s]}; settle; mark "$s"
    record "$run" "$s" rand_write "$(fio_iops "$M" randwrite fsync)" IOPS
  done
  for s in "${order[@]}"; do rm -rf "${MNT[$s]:?}/big" "${MNT[$s]:?}/files"; done
  want create_files && for s in "${order[@]}"; do
    fresh_mount "$s"; M=${MNT[$s]}; settle; mark "$s"
    record "$run" "$s" create_files "$(python3 scripts/bench_files.py create "$M/files" "$nfiles" 4096)" s
  done
  want read_files && for s in "${order[@]}"; do
    fresh_mount "$s"; M=${MNT[$s]}; settle; mark "$s"
    record "$run" "$s" read_files "$(python3 scripts/bench_files.py read "$M/files" "$read_threads")" s
  done
  # One reader walking the directory, as a backup does: GNU tar reads nothing when its
  # archive is /dev/null, so the archive goes through a pipe.
  want tar_files && for s in "${order[@]}"; do
    fresh_mount "$s"; M=${MNT[$s]}; settle; mark "$s"
    t0=$(now); tar -cf - -C "$M" files | cat > /dev/null; t1=$(now)
    record "$run" "$s" tar_files "$(elapsed "$t0" "$t1")" s
  done
  want delete_files && for s in "${order[@]}"; do
    M=${MNT[$s]}; settle; mark "$s"
    t0=$(now); rm -rf "$M/files"; sync; t1=$(now)
    record "$run" "$s" delete_files "$(elapsed "$t0" "$t1")" s $(rss_of "$s")
  done
  want untar && for s in "${order[@]}"; do
    fresh_mount "$s"; M=${MNT[$s]}; settle; mark "$s"
    mkdir "$M/tree"
    t0=$(now); tar -xf "$tarball" -C "$M/tree"; sync; t1=$(now)
    record "$run" "$s" untar "$(elapsed "$t0" "$t1")" s
  done
  want rm_tree && for s in "${order[@]}"; do
    M=${MNT[$s]}; settle; mark "$s"
    t0=$(now); rm -rf "$M/tree"; sync; t1=$(now)
    record "$run" "$s" rm_tree "$(elapsed "$t0" "$t1")" s
  done
  for s in "${order[@]}"; do rm -rf "${MNT[$s]:?}/tree"; done
done
for s in "${systems[@]}"; do unmount_sys "$s"; done

"$venv/bin/python" scripts/bench_report.py "$raw" "$out" --files "$nfiles" ${baseline_label:+--baseline-label "$baseline_label"} \
  --meta "runs=$runs; sequential ${seq_mib} MiB (bs 1 MiB, fsync); fio 4 KiB psync, 4 jobs, ${fio_secs} s on a ${seq_mib} MiB file; $nfiles files of 4 KiB (cold read with $read_threads threads, and by one tar); source tree: $tree_count files ($(du -h "$tarball" | cut -f1) tar); $(nproc) cores; kmsfs $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo +dirty); $(gocryptfs -version | head -1)"
cp "$raw" "$out/raw.tsv"
echo "== wrote $out/results.md, $out/chart.png, $out/raw.tsv"
