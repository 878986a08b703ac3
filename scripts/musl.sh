#!/usr/bin/env bash
# The build NixOS users get: btrfs-rollback for x86_64-unknown-linux-musl (what nixpkgs'
# pkgsStatic builds), built, tested and checked here without Nix.
#
#   scripts/musl.sh [--print-bin]
#
# 1. `cargo test` for the musl target (unit tests, and the test binaries link and start).
#    The privileged tests skip inside the build chroot (no btrfs-progs there, and CI is not
#    passed in); they run on the host against the musl binary in step 3.
# 2. `cargo build --release` for the musl target; copies the binary to target/musl/.
# 3. The host's tests/static_binary.rs on that binary (no interpreter, no DT_NEEDED, runs),
#    and its size against the target of 1 MiB (1,048,576 bytes, stripped).
# --print-bin: print only the binary's path on stdout at the end (for scripts/test.sh).
#
# The chroot recipe (Debian trixie, rustc 1.85 + rust-src with -Zbuild-std, musl 1.2.5) is
# ../shared/tools/build-musl.sh, which every developer machine and CI has beside the
# checkout; its first run takes about 2 minutes (debootstrap), later runs reuse the chroot.
# Needs root. Without the recipe it skips with a reason (a failure under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
print_bin=0
[ "${1:-}" = --print-bin ] && print_bin=1

say() { echo "musl.sh: $*" >&2; }
recipe=$repo/../shared/tools/build-musl.sh
if [ ! -x "$recipe" ] || [ "$(id -u)" != 0 ]; then
  why="needs root and $recipe"
  if [ "${CI:-}" = true ]; then say "FAILED: CI=true and the musl tier cannot run: $why"; exit 1; fi
  say "SKIPPED: $why"
  exit 0
fi

say "cargo test for x86_64-unknown-linux-musl (privileged tests skip in the chroot)"
"$recipe" "$repo" test >&2

say "cargo build --release for x86_64-unknown-linux-musl"
mkdir -p target/musl
bin=$(OUT_DIR=$repo/target/musl "$recipe" "$repo" build | grep '/btrfs-rollback$')
[ -x "$bin" ] || { say "FAILED: no binary from the musl build"; exit 1; }

say "static check of $bin"
BTRFS_ROLLBACK_STATIC_BIN=$bin cargo test -q --test static_binary >&2
size=$(stat -c %s "$bin")
# 1 MiB: forget, log, restore --dry-run, diff NAME, the JSON documents, 80-column help and
# flag suggestions took the binary past the first 900 KiB target (942 KiB on 2026-11-30).
limit=1048576
say "size: $size bytes ($((size / 1024)) KiB; target at most $((limit / 1024)) KiB stripped)"
if [ "$size" -gt "$limit" ]; then
  say "FAILED: the musl binary is larger than the target"
  exit 1
fi
if [ $print_bin = 1 ]; then echo "$bin"; fi
