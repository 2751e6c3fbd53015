#!/usr/bin/env bash
# The static checks CI runs: formatting, lints, doc warnings, and grep lints that keep
# the layers apart (see docs/style.md). `unsafe` is kept to src/secret/locked.rs by
# #![deny(unsafe_code)] in the crate roots, not by a grep.
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
# The only exception to #![deny(unsafe_code)] is the locked-memory module.
lint "allow(unsafe_code) outside src/secret (on its locked module)" \
  bash -c "grep -rn 'allow(unsafe_code)' src --include='*.rs' | grep -v '^src/secret/mod.rs' || true"
# One errno mapping: errno constants (libc::E*, rustix's Errno::*) appear only in the
# errno module; elsewhere errors are compared by std::io::ErrorKind.
lint "errno constants outside src/fs/errno.rs" \
  bash -c "grep -rnE 'libc::E[A-Z]+\b|Errno::[A-Z]+\b' src --include='*.rs' | grep -v '^src/fs/errno.rs' || true"
# The namespace owns names on disk: fs/ has no directory-record or long-name-file code.
lint "directory records or long-name files handled in src/fs" \
  grep -rnE 'DIR_ID_NAME|long_name_file|records::|dir_record' src/fs 2>/dev/null || true
# The FUSE glue stays glue: under 1,500 lines in all (issue 18).
lint "src/fs is 1,500 lines or more" \
  bash -c "cat src/fs/*.rs | wc -l | awk '\$1 >= 1500 {print \$1 \" lines\"}'"
# Files stay small enough to read in one sitting.
lint "source files over 500 lines" \
  bash -c "find src tests -name '*.rs' -print0 | xargs -0 wc -l | awk '\$2 != \"total\" && \$1 > 500 {print}'"

if [ $fail -ne 0 ]; then
  echo "check.sh: layer lints failed" >&2
  exit 1
fi
echo "check.sh: all static checks passed"
