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
