#!/usr/bin/env bash
# Print the path of a nixpkgs tree to evaluate the NixOS module against, unpacking the
# offline one when needed. Exit 3 with a reason on stderr when there is none.
#
#   scripts/nixpkgs.sh
#
# Looked for, in order:
#   1. $NIXPKGS, if set (a nixpkgs checkout or unpacked tree);
#   2. ../shared/nixpkgs/nixpkgs-24.05.tar.zst beside the checkout (what CI has), unpacked
#      once into target/nixpkgs/ (about 30 MB compressed; never committed);
#   3. <nixpkgs> from NIX_PATH (a NixOS machine or a Nix install with channels).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

if [ -n "${NIXPKGS:-}" ]; then
  [ -f "$NIXPKGS/nixos/default.nix" ] || { echo "NIXPKGS=$NIXPKGS has no nixos/default.nix" >&2; exit 3; }
  (cd "$NIXPKGS" && pwd)
  exit 0
fi

tarball=$repo/../shared/nixpkgs/nixpkgs-24.05.tar.zst
if [ -f "$tarball" ]; then
  dest=$repo/target/nixpkgs
  if [ ! -f "$dest/nixpkgs-24.05/nixos/default.nix" ]; then
    command -v zstd >/dev/null || { echo "zstd is needed to unpack $tarball" >&2; exit 3; }
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    tar --zstd -xf "$tarball" -C "$dest.tmp"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
  fi
  echo "$dest/nixpkgs-24.05"
  exit 0
fi

if command -v nix-instantiate >/dev/null; then
  if p=$(nix-instantiate --find-file nixpkgs 2>/dev/null) && [ -f "$p/nixos/default.nix" ]; then
    echo "$p"
    exit 0
  fi
fi
echo "no nixpkgs: set NIXPKGS=<path>, or put <nixpkgs> in NIX_PATH" >&2
exit 3
