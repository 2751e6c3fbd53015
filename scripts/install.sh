#!/usr/bin/env bash
# Installs kmsfs system-wide: the binary in /usr/local/bin, the mount(8) helper
# /usr/sbin/mount.fuse.kmsfs (so that `mount -t fuse.kmsfs` and fstab lines work), man
# pages and shell completions. Run as root after `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}
bin=target/release/kmsfs
[ -x "$bin" ] || cargo build --release --bin kmsfs
install -D -m 0755 "$bin" "$prefix/bin/kmsfs"
ln -sf "$prefix/bin/kmsfs" /usr/sbin/mount.fuse.kmsfs
mandir=$prefix/share/man/man1
mkdir -p "$mandir"
"$prefix/bin/kmsfs" generate man "$mandir"
"$prefix/bin/kmsfs" generate completions bash > /usr/share/bash-completion/completions/kmsfs 2>/dev/null || true
install -D -m 0644 docs/systemd/kmsfs-backup.service "$prefix/share/doc/kmsfs/kmsfs-backup.service"
echo "installed kmsfs in $prefix/bin, mount helper /usr/sbin/mount.fuse.kmsfs, man pages in $mandir"
