#!/usr/bin/env bash
# Build btrfs-rollback and run a rollback on a throwaway disk image laid out like an
# impermanence install. No real disk is touched: everything lives in target/demo/.
# Needs root (loop devices, mount). Installs btrfs-progs with apt-get if it is missing, and
# needs a Rust toolchain no older than Cargo.toml's rust-version (it says how to get one).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "demo: needs root (loop devices and mount): sudo $0" >&2; exit 1; }
if ! command -v mkfs.btrfs >/dev/null; then
  echo "demo: installing btrfs-progs (used only to build the demo disk and show the result)"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends btrfs-progs >/dev/null
fi

# A Rust toolchain at least as new as Cargo.toml's rust-version, or exactly what to do.
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
have=$(rustc --version 2>/dev/null | awk '{print $2}' || true)
fresh_binary() {  # a release binary built from these very sources
  [ -x target/release/btrfs-rollback ] &&
    [ -z "$(find src Cargo.toml Cargo.lock -newer target/release/btrfs-rollback | head -n 1)" ]
}
if command -v cargo >/dev/null && [ -n "$have" ] &&
   [ "$(printf '%s\n%s\n' "$msrv" "$have" | sort -V | head -n 1)" = "$msrv" ]; then
  echo "demo: building the release binary with rustc $have (about a minute the first time)"
  cargo build --release --bin btrfs-rollback
elif fresh_binary; then
  echo "demo: no Rust $msrv+ on PATH, but target/release/btrfs-rollback is up to date; using it"
else
  echo "demo: needs Rust $msrv or newer (cargo and rustc on PATH); found: ${have:-none}" >&2
  [ -n "$have" ] && echo "demo: (Debian 12's rustc is 1.63, too old; Debian 13's 1.85 is fine)" >&2
  cat >&2 <<EOT
demo: install a current toolchain with rustup, for root (the demo needs root), then rerun:
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "\$HOME/.cargo/env"
  $0
demo: with sudo, a rustup toolchain of your own user is not on root's PATH: either install
demo: it for root as above, or run 'cargo build --release' as yourself first, then sudo $0
EOT
  exit 1
fi
bin=$PWD/target/release/btrfs-rollback

echo "demo: making target/demo/disk.img: btrfs, root with nested subvolumes, root-blank"
work=$PWD/target/demo
rm -rf "$work"; mkdir -p "$work/check"
truncate -s 1G "$work/disk.img"
mkfs.btrfs -q -f "$work/disk.img"
dev=$(losetup -f --show "$work/disk.img")
cleanup() {
  umount "$work/check" 2>/dev/null || true
  losetup -d "$dev"
}
trap cleanup EXIT

m=$work/check
mount -o subvolid=5 "$dev" "$m"
btrfs -q subvolume create "$m/root"
mkdir -p "$m/root/etc" "$m/root/var/lib"
echo "installed system" >"$m/root/etc/os-release"
btrfs -q subvolume snapshot -r "$m/root" "$m/root-blank"      # taken at install time
for s in persist nix home; do btrfs -q subvolume create "$m/$s"; done
echo "kept across boots" >"$m/persist/important"
# What one boot leaves behind: files, and nested subvolumes (docker, machines), one read-only.
echo "state nobody persisted" >"$m/root/etc/forgotten"
btrfs -q subvolume create "$m/root/var/lib/docker"
btrfs -q subvolume create "$m/root/var/lib/docker/layer 1"
btrfs -q subvolume create "$m/root/var/lib/docker/layer 1/inner"
btrfs -q subvolume create "$m/root/var/lib/machines"
btrfs -q subvolume create "$m/root/var/lib/machines/container"
btrfs property set -ts "$m/root/var/lib/machines" ro true
echo "== before: btrfs subvolume list"
btrfs subvolume list "$m"
umount "$m"

echo; echo "== btrfs-rollback list --device $dev"
"$bin" list --device "$dev" --mountpoint "$work/mnt"
echo; echo "== btrfs-rollback run --device $dev"
status=0
"$bin" run --device "$dev" --mountpoint "$work/mnt" || status=$?
echo "exit status $status"

mount -o subvolid=5 "$dev" "$m"
echo; echo "== after: btrfs subvolume list"
btrfs subvolume list "$m"
echo; echo "== after: files in root"
find "$m/root" | sed "s|^$m/||"
echo; echo "== rollback.log on the top-level volume"
cat "$m/rollback.log"

# The rollback's own exit status (0; 3 would mean the fresh root is in place but cleanup failed).
exit "$status"
