#!/usr/bin/env bash
# Run every test tier of btrfs-rollback:
#   1. the musl build NixOS users get (scripts/musl.sh): built, its tests run, static, size
#   2. unit tests                                  (cargo test, no privileges)
#   3. privileged tests: real btrfs on loop devices (tests/*.rs, as root), run against the
#      musl binary when there is one (BTRFS_ROLLBACK_TEST_BIN), else cargo's own build
#   4. the static release binary's ELF check        (tests/static_binary.rs)
#   5. the stage-1 boot test: QEMU, LUKS2, initramfs, power cuts (tests/vm/run.sh)
#   6. the same under systemd in stage 1: Debian trixie's systemd in a dracut initrd, the unit
#      rendered from nix/module.nix (tests/vm/run.sh --stage1 systemd)
#
#   scripts/test.sh [--no-vm]
#
# As root it installs what the tests need with apt-get. Outside CI, tiers it cannot run skip
# with a printed reason; with CI=true every tier must run and a skip is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

vm=1
case "${1:-}" in
  --no-vm) vm=0 ;;
  "") ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac

if [ "$(id -u)" = 0 ]; then
  need=()
  command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  command -v losetup >/dev/null || need+=(mount)
  if [ ${#need[@]} -gt 0 ]; then
    echo "test.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

echo "test.sh: the musl build (scripts/musl.sh)"
musl_bin=$(scripts/musl.sh --print-bin)
if [ -n "$musl_bin" ]; then
  echo "test.sh: the privileged tests, the ELF check and the VM suite use $musl_bin"
  export BTRFS_ROLLBACK_TEST_BIN=$musl_bin BTRFS_ROLLBACK_STATIC_BIN=$musl_bin
  export BTRFS_ROLLBACK_BIN=${BTRFS_ROLLBACK_BIN:-$musl_bin}
else
  echo "test.sh: no musl build here; building the static glibc release binary instead"
  RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --target x86_64-unknown-linux-gnu
fi

cargo test

if [ $vm = 1 ]; then
  # Both suites run even when the first fails; the script fails if either did.
  status=0
  tests/vm/run.sh || status=1
  tests/vm/run.sh --stage1 systemd || status=1
  exit $status
fi
