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
apt_pkgs=(python3-venv)
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
