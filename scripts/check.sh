#!/usr/bin/env bash
# The static checks CI runs: formatting, lints, doc warnings, and grep lints that keep
# the layers apart (see ../shared/STYLE.md).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
lint() { # lint "message" command...
  local msg=$1; shift
  local out
  if out=$("$@"); then
    if [ -n "$out" ]; then
      echo "layer lint: $msg"; echo "$out"; fail=1
    fi
  fi
}

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

# fs/ is glue: it never reaches into crypto or the KMS directly.
lint "src/fs must not use crypto or kms" \
  grep -rnE 'crate::(crypto|kms)\b|kmsfs::(crypto|kms)\b' src/fs 2>/dev/null || true
# Plaintext key bytes leave `secret` only towards crypto and the KMS backends.
lint "expose_secret() outside secret/, crypto.rs, kms/" \
  bash -c "grep -rn 'expose_secret()' src --include='*.rs' | grep -vE '^src/(secret/|crypto(\.rs|/)|kms/)' || true"
# unsafe lives in one small module.
lint "unsafe outside src/secret/locked.rs" \
  bash -c "grep -rnE '\bunsafe\b' src --include='*.rs' | grep -v '^src/secret/locked.rs' || true"
# One errno mapping: libc::E* constants appear only in the errno module.
lint "errno constants outside src/fs/errno.rs" \
  bash -c "grep -rnE 'libc::E[A-Z]+\b' src --include='*.rs' | grep -v '^src/fs/errno.rs' || true"

if [ $fail -ne 0 ]; then
  echo "check.sh: layer lints failed" >&2
  exit 1
fi
echo "check.sh: all static checks passed"
