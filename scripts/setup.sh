#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (idempotent): system packages,
# the cargo-installed POSIX suites, the python venv with the AWS SDK, and the unprivileged
# user pjdfstest switches to. scripts/test.sh calls it first.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install a Rust toolchain (https://rustup.rs) and run this again." >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi

# --- system packages -------------------------------------------------------
# xfsprogs: xfs_io, whose shutdown cuts the crash tests' ext4 like a power cut.
apt_pkgs=(python3-venv fuse3 libacl1-dev xfsprogs)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
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

# --- the user pjdfstest switches to ------------------------------------------
if ! id tests >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  useradd --no-create-home --shell /usr/sbin/nologin tests
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
echo "setup: ok"
