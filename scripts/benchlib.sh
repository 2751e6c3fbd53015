# Helpers shared by the benchmark scripts (sourced by bench.sh and bench_openbao.sh).

# Before every timed step: no cached pages, and memory touched (the memory balloon:
# `balloon_gib` GiB), as freed memory goes back to the host and comes back slowly.
settle() {
  sync; echo 3 > /proc/sys/vm/drop_caches
  python3 -c "b = b'\\1' * ($balloon_gib << 30)"
  sync; echo 3 > /proc/sys/vm/drop_caches
}

# Lines in an audit log (0 when it does not exist yet).
audit_lines() { [ -f "$1" ] && wc -l < "$1" || echo 0; }

# Lines of FILE after its first FROM lines that match the extended regex PATTERN.
count_since() { # file from-line pattern
  [ -f "$1" ] || { echo 0; return; }
  tail -n +"$(($2 + 1))" "$1" | grep -cE "$3" || true
}

# Mounting system S (the scripts' arrays CIPHER, MNT, PID and BIN, and $W and $K): its
# volume CIPHER[S] at MNT[S], by the binary BIN[S] (else $K), with its audit log and daemon
# log in $W.
mount_sys() {
  local line
  line=$("${BIN[$1]:-$K}" mount "${CIPHER[$1]}" "${MNT[$1]}" --audit-log "$W/$1.audit.jsonl" --log-file "$W/$1.log")
  PID[$1]=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<< "$line")
}
unmount_sys() {
  mountpoint -q "${MNT[$1]}" || return 0
  fusermount3 -u "${MNT[$1]}"
  for _ in $(seq 100); do mountpoint -q "${MNT[$1]}" || break; sleep 0.05; done
  # Let the daemon finish exiting so that it does not share the CPU with the next step.
  if [ -n "${PID[$1]:-}" ]; then
    for _ in $(seq 100); do kill -0 "${PID[$1]}" 2>/dev/null || break; sleep 0.05; done
  fi
}
fresh_mount() { unmount_sys "$1"; mount_sys "$1"; }
