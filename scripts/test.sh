#!/usr/bin/env bash
# Run every test tier of btrfs-rollback:
#   1. the musl build NixOS users get (scripts/musl.sh): built, its tests run, static, size
#   2. the man page and bash/zsh/fish completions from btrfs-rollback-gen (feature gen): every
#      subcommand has its section, each file is non-empty and parses where its shell exists
#   3. unit tests                                  (cargo test, no privileges)
#   4. privileged tests: real btrfs on loop devices (tests/*.rs, as root), run against the
#      musl binary when there is one (BTRFS_ROLLBACK_TEST_BIN), else cargo's own build
#   5. the static release binary's ELF check        (tests/static_binary.rs)
#   6. the stage-1 boot test: QEMU, LUKS2, initramfs, power cuts (tests/vm/run.sh)
#   7. the same under systemd in stage 1: Debian trixie's systemd in a dracut initrd, the unit
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
  *) sed -n '2,14p' "$0"; exit 2 ;;
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

echo "test.sh: the man page and shell completions (cargo run --features gen --bin btrfs-rollback-gen)"
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
cargo run -q --features gen --bin btrfs-rollback-gen -- "$gen"
# Every subcommand the binary has (its --help's "Commands:" list), and at least these four.
subs=$(cargo run -q -- --help | sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p' | grep -vx help)
for sub in run list diff restore $subs; do
  grep -q "^\.SH \"BTRFS-ROLLBACK ${sub^^}\"" "$gen/btrfs-rollback.1" ||
    { echo "test.sh: FAILED: the man page has no section for '$sub'"; exit 1; }
  grep -qw -- "$sub" "$gen/btrfs-rollback.bash" ||
    { echo "test.sh: FAILED: the bash completion does not know '$sub'"; exit 1; }
done
for f in btrfs-rollback.1 btrfs-rollback.bash _btrfs-rollback btrfs-rollback.fish; do
  [ -s "$gen/$f" ] || { echo "test.sh: FAILED: $f was not written or is empty"; exit 1; }
done
bash -n "$gen/btrfs-rollback.bash"
if command -v zsh >/dev/null; then zsh -n "$gen/_btrfs-rollback"; fi
if command -v fish >/dev/null; then fish --no-execute "$gen/btrfs-rollback.fish"; fi
if command -v man >/dev/null; then
  warnings=$(MANWIDTH=80 man --warnings -l "$gen/btrfs-rollback.1" 2>&1 >/dev/null || true)
  [ -z "$warnings" ] || { echo "test.sh: FAILED: man reports on the page: $warnings"; exit 1; }
fi
echo "test.sh: man page with $(echo run list diff restore $subs | tr ' ' '\n' | sort -u | wc -l) subcommands, completions for bash, zsh, fish"

cargo test

if [ $vm = 1 ]; then
  # Both suites run even when the first fails; the script fails if either did.
  status=0
  tests/vm/run.sh || status=1
  tests/vm/run.sh --stage1 systemd || status=1
  exit $status
fi
