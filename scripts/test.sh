#!/usr/bin/env bash
# Sets up a fresh Debian machine for the tests (idempotent) and runs every test.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install a Rust toolchain (https://rustup.rs) and run this again." >&2
  exit 1
fi

# --- system packages -------------------------------------------------------
apt_pkgs=(python3-venv fuse3 libacl1-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- cargo tools (POSIX test suites, Rust rewrites) --------------------------
export PATH="$HOME/.cargo/bin:$PATH"
need_tools=()
command -v pjdfstest >/dev/null 2>&1 || need_tools+=(pjdfstest@0.2.2)
command -v fsx >/dev/null 2>&1 || need_tools+=(fsx@0.3.2)
if [ ${#need_tools[@]} -gt 0 ]; then
  log "installing ${need_tools[*]}"
  cargo install --locked --quiet "${need_tools[@]}"
fi
# pjdfstest switches to a user named "tests".
if ! id tests >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then useradd --no-create-home --shell /usr/sbin/nologin tests; fi
fi

# --- python packages (real AWS SDK as a peer for the KMS server) ------------
if [ -f tests/python/requirements.txt ]; then
  venv=target/pyenv
  if [ ! -x "$venv/bin/python" ]; then
    log "creating python venv in $venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
fi

# --- static checks ---------------------------------------------------------
log "static checks"
bash scripts/check.sh

# --- tests -----------------------------------------------------------------
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
