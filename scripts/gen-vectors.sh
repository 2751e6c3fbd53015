#!/usr/bin/env bash
# Regenerates tests/vectors/ from fixed seeds (see docs/format.md, "Test vectors").
# Review the diff: a changed existing vector means the format changed.
set -euo pipefail
cd "$(dirname "$0")/.."
KMSFS_REGEN_VECTORS=1 cargo test --quiet --test vectors -- vectors_are_reproducible
KMSFS_REGEN_VECTORS=1 cargo test --quiet --test name_vectors
git status --short tests/vectors/
