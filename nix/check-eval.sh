#!/usr/bin/env bash
# Evaluate the NixOS side without building anything (local use, not CI).
#
#   nix/check-eval.sh NIXPKGS [--real-package]
#
# NIXPKGS  a nixpkgs tree (e.g. /work/nixpkgs-24.05, laid out by
#          ../shared/tools/offline-nixpkgs.sh); a flake cannot fetch its input
#          offline, so nix/module.nix is evaluated directly.
# --real-package  use nix/package.nix (pkgsStatic) instead of a stub script as
#          boot.initrd.btrfsRollback.package when instantiating the VM tests.
#
# Prints the generated postResumeCommands (scripted stage 1) and the unit
# (systemd stage 1) for both onFailure policies, checks that the assertions
# and warnings fire for wrong layouts, instantiates every VM test, and parses
# every .nix file. Exits non-zero on the first unexpected result.
set -euo pipefail

[ $# -ge 1 ] || { sed -n '2,15p' "$0"; exit 2; }
nixpkgs=$(cd "$1" && pwd)
real=false
[ "${2:-}" = --real-package ] && real=true
here=$(cd "$(dirname "$0")" && pwd)
module=$here/module.nix

if [ -z "${NIX_CONF_DIR:-}" ]; then
  NIX_CONF_DIR=$(mktemp -d)
  export NIX_CONF_DIR
  printf 'build-users-group =\nexperimental-features = nix-command flakes\nsubstituters =\nsandbox = false\n' >"$NIX_CONF_DIR/nix.conf"
fi

failures=0
ok() { printf 'ok   %s\n' "$1"; }
bad() { printf 'FAIL %s\n' "$1"; failures=$((failures + 1)); }

# A NixOS system: the module, a stub package, a LUKS + btrfs layout as the
# README has it, and the extra configuration $1 (a Nix attribute set).
system() {
  cat <<EOF
import "$nixpkgs/nixos" {
  system = "x86_64-linux";
  configuration = { lib, pkgs, ... }: {
    imports = [ $module ({ lib, pkgs, ... }: $1) ];
    boot.loader.grub.enable = false;
    boot.initrd.luks.devices.cryptroot.device = "/dev/disk/by-partlabel/luks";
    fileSystems."/".device = lib.mkDefault "/dev/mapper/cryptroot";
    fileSystems."/".fsType = lib.mkDefault "btrfs";
    fileSystems."/".options = [ "subvol=root" "compress=zstd" "noatime" ];
    fileSystems."/persist" = { device = "/dev/mapper/cryptroot"; fsType = "btrfs"; options = [ "subvol=persist" ]; neededForBoot = true; };
    fileSystems."/nix" = { device = "/dev/mapper/cryptroot"; fsType = "btrfs"; options = [ "subvol=nix" "noatime" ]; };
    boot.initrd.btrfsRollback.enable = true;
    boot.initrd.btrfsRollback.package = pkgs.writeShellScriptBin "btrfs-rollback" "echo stub";
    system.stateVersion = "24.05";
  };
}
EOF
}

# Evaluate attribute path $2 of the system with extra configuration $1 as a string.
show() {
  nix-instantiate --eval --strict --json --expr "($(system "$1")).$2" |
    python3 -c 'import json, sys; print(json.load(sys.stdin), end="")'
}

# The failed assertions and the warnings, one per line, squeezed.
problems() {
  nix-instantiate --eval --strict --json --expr "
    let c = ($(system "$1")).config; in
    (map (a: \"assertion: \" + a.message) (builtins.filter (a: !a.assertion) c.assertions))
    ++ (map (w: \"warning: \" + w) c.warnings)" |
    python3 -c 'import json, sys; [print(" ".join(p.split())) for p in json.load(sys.stdin)]'
}

# expect_problem NAME CONFIG WORDS...: the evaluation reports one problem containing all WORDS.
expect_problem() {
  local name=$1 config=$2 out
  shift 2
  out=$(problems "$config")
  for word in "$@"; do
    if ! grep -F -- "$word" <<<"$out" >/dev/null; then
      bad "$name: no problem mentions '$word'. Got:"
      printf '%s\n' "$out" | sed 's/^/       /'
      return
    fi
  done
  ok "$name: $(grep -F -- "$1" <<<"$out" | head -n 1 | cut -c1-150)…"
}

expect_clean() {
  local name=$1 out
  out=$(problems "$2")
  if [ -z "$out" ]; then ok "$name: no assertion or warning"; else
    bad "$name: unexpected problems:"
    printf '%s\n' "$out" | sed 's/^/       /'
  fi
}

echo "== scripted stage 1, onFailure = \"continue\": boot.initrd.postResumeCommands"
show '{ }' config.boot.initrd.postResumeCommands
echo "== scripted stage 1: extraUtilsCommands / extraUtilsCommandsTest"
show '{ }' config.boot.initrd.extraUtilsCommands | grep -F btrfs-rollback
show '{ }' config.boot.initrd.extraUtilsCommandsTest | grep -F btrfs-rollback
echo "== scripted stage 1, onFailure = \"stop\": the failure branch"
show '{ boot.initrd.btrfsRollback.onFailure = "stop"; }' config.boot.initrd.postResumeCommands | sed -n '/^if /,/^fi/p'

systemd='boot.initrd.systemd.enable = true;'
echo
echo "== systemd stage 1, onFailure = \"continue\": btrfs-rollback.service"
show "{ $systemd }" 'config.boot.initrd.systemd.units."btrfs-rollback.service".text'
echo "== its ExecStopPost script"
show "{ $systemd }" 'config.boot.initrd.systemd.services.btrfs-rollback.postStop'
echo "== systemd stage 1, onFailure = \"stop\": what changes"
stop="{ $systemd boot.initrd.btrfsRollback.onFailure = \"stop\"; boot.initrd.systemd.emergencyAccess = true; }"
show "$stop" 'config.boot.initrd.systemd.units."btrfs-rollback.service".requiredBy' | sed 's/^/requiredBy (a sysroot.mount.requires link): /'
echo
show "$stop" 'config.boot.initrd.systemd.services.btrfs-rollback.postStop' | grep -F 'Stopping the boot' | sed 's/^ */ExecStopPost says: /'
echo "== systemd stage 1: the binary in the initrd"
show "{ $systemd }" 'config.boot.initrd.systemd.storePaths' | tr ' ' '\n' | grep -F btrfs-rollback | sed 's/^/storePaths: /'
show "{ $systemd }" 'config.boot.initrd.systemd.extraBin.btrfs-rollback' | sed 's/^/extraBin: /'
echo

echo "== assertions and warnings"
expect_clean "scripted, README layout" '{ }'
expect_clean "systemd, README layout" "{ $systemd }"
expect_clean "subvol=/root" '{ fileSystems."/".options = lib.mkForce [ "subvol=/root" ]; }'
expect_problem "root is ext4" '{ fileSystems."/" = { device = "/dev/mapper/cryptroot"; fsType = "ext4"; }; }' \
  'fileSystems."/".fsType is "ext4"'
expect_problem "root is another subvolume" '{ fileSystems."/".options = lib.mkForce [ "subvol=@" ]; }' \
  'subvol=root' 'boot.initrd.btrfsRollback.rootSubvolume'
expect_problem "root without subvol=" '{ fileSystems."/".options = lib.mkForce [ "compress=zstd" ]; }' \
  'Add "subvol=root" to fileSystems."/".options'
expect_problem "root on another device" '{ fileSystems."/".device = lib.mkForce "/dev/mapper/other"; }' \
  'boot.initrd.btrfsRollback.device is "/dev/mapper/cryptroot" but fileSystems."/".device is "/dev/mapper/other"'
expect_clean "dm-name link of the same device" '{ fileSystems."/".device = lib.mkForce "/dev/disk/by-id/dm-name-cryptroot"; }'
expect_problem "root by uuid: warning, not assertion" '{ fileSystems."/".device = lib.mkForce "/dev/disk/by-uuid/0f3c8a2e-5b1d-4c47-9e8b-6a1f2d3c4b5a"; }' \
  'warning:' 'cannot check statically'
expect_problem "root by label: warning" '{ fileSystems."/" = lib.mkForce { label = "nixos"; fsType = "btrfs"; options = [ "subvol=root" ]; }; }' \
  'warning:' '/dev/disk/by-label/nixos'
expect_problem "subvolid=: warning" '{ fileSystems."/".options = lib.mkForce [ "subvolid=256" ]; }' \
  'warning:' 'Subvolume ids change at every rollback'
expect_problem "nested rootSubvolume" '{ boot.initrd.btrfsRollback.rootSubvolume = "a/root"; fileSystems."/".options = lib.mkForce [ "subvol=a/root" ]; }' \
  'boot.initrd.btrfsRollback.rootSubvolume = "a/root" must be a single path component'
expect_problem "blankSnapshot is .." '{ boot.initrd.btrfsRollback.blankSnapshot = ".."; }' \
  'boot.initrd.btrfsRollback.blankSnapshot = ".." must be a single path component'
expect_problem "blank = root" '{ boot.initrd.btrfsRollback.blankSnapshot = "root"; }' \
  'are both "root"'
expect_problem "log inside the root" '{ boot.initrd.btrfsRollback.logFile = "root/rollback.log"; }' \
  'boot.initrd.btrfsRollback.logFile = "root/rollback.log"'
expect_problem "log outside the volume" '{ boot.initrd.btrfsRollback.logFile = "../rollback.log"; }' \
  'without ".."'
expect_clean "absolute log in /run" '{ boot.initrd.btrfsRollback.logFile = "/run/btrfs-rollback.log"; }'
expect_problem "blank with a leading dash" '{ boot.initrd.btrfsRollback.blankSnapshot = "-x"; }' \
  'no leading "-"'
expect_problem "UUID= device" '{ boot.initrd.btrfsRollback.device = "UUID=0f3c8a2e"; fileSystems."/".device = lib.mkForce "UUID=0f3c8a2e"; }' \
  'must be an absolute device path'
expect_problem "mapper name without LUKS entry" '{ boot.initrd.btrfsRollback.device = "/dev/mapper/crypt"; fileSystems."/".device = lib.mkForce "/dev/mapper/crypt"; }' \
  'warning:' 'boot.initrd.luks.devices has no entry named "crypt"'
expect_problem "leftover hand-written rollback" '{ boot.initrd.postDeviceCommands = lib.mkAfter "btrfs subvolume delete /mnt/root\nbtrfs subvolume snapshot /mnt/root-blank /mnt/root\n"; }' \
  'warning:' 'boot.initrd.postDeviceCommands still contains what looks like a hand-written rollback'
expect_problem "stop without emergency access (systemd)" "{ $systemd boot.initrd.btrfsRollback.onFailure = \"stop\"; }" \
  'warning:' 'boot.initrd.systemd.emergencyAccess is false'
expect_problem "no root file system" '{ fileSystems = lib.mkForce { }; }' \
  'fileSystems."/" is not defined'
echo

echo "== without the scripted stage 1 (nixpkgs plans to remove it): a module set with stubs"
sim=$(mktemp --suffix=.nix)
trap 'rm -f "$sim"' EXIT
sed "s|MODULE|$module|" >"$sim" <<'NIX'
# Our module in a module set without the scripted stage 1 options (as after their removal).
{ nixpkgs, removedStubs ? false, systemd ? true }:
let
  lib = import (nixpkgs + "/lib");
  pkgs = import nixpkgs { system = "x86_64-linux"; };
  utils = import (nixpkgs + "/nixos/lib/utils.nix") { inherit lib pkgs; config = {}; };
  t = lib.types;
  stubs = {
    options = {
      assertions = lib.mkOption { type = t.listOf t.unspecified; default = [ ]; };
      warnings = lib.mkOption { type = t.listOf t.str; default = [ ]; };
      environment.systemPackages = lib.mkOption { type = t.listOf t.package; default = [ ]; };
      boot.initrd.enable = lib.mkOption { type = t.bool; default = true; };
      boot.initrd.luks.devices = lib.mkOption { type = t.attrsOf t.anything; default = { }; };
      boot.initrd.systemd = {
        enable = lib.mkOption { type = t.bool; default = true; };
        emergencyAccess = lib.mkOption { type = t.anything; default = false; };
        storePaths = lib.mkOption { type = t.listOf t.anything; default = [ ]; };
        extraBin = lib.mkOption { type = t.attrsOf t.anything; default = { }; };
        services = lib.mkOption { type = t.attrsOf t.anything; default = { }; };
      };
      fileSystems = lib.mkOption {
        type = t.attrsOf (t.submodule { options = {
          device = lib.mkOption { type = t.nullOr t.str; default = null; };
          label = lib.mkOption { type = t.nullOr t.str; default = null; };
          fsType = lib.mkOption { type = t.str; default = "auto"; };
          options = lib.mkOption { type = t.listOf t.str; default = [ ]; };
        }; });
        default = { };
      };
    };
  };
  removed = lib.optionals removedStubs (map (n: lib.mkRemovedOptionModule [ "boot" "initrd" n ] "gone") [
    "postResumeCommands" "postDeviceCommands" "preLVMCommands" "postMountCommands" "extraUtilsCommands" "extraUtilsCommandsTest"
  ]);
  eval = lib.evalModules {
    specialArgs = { inherit utils pkgs; };
    modules = [ stubs MODULE {
      boot.initrd.systemd.enable = systemd;
      fileSystems."/" = { device = "/dev/mapper/cryptroot"; fsType = "btrfs"; options = [ "subvol=root" ]; };
      boot.initrd.btrfsRollback.enable = true;
      boot.initrd.btrfsRollback.package = pkgs.writeShellScriptBin "btrfs-rollback" "";
    } ] ++ removed;
  };
in {
  failed = map (a: a.message) (lib.filter (a: !a.assertion) eval.config.assertions);
  warnings = eval.config.warnings;
  unit = eval.config.boot.initrd.systemd.services.btrfs-rollback.serviceConfig.ExecStart or null;
}
NIX
for removed in false true; do
  for sd in true false; do
    out=$(nix-instantiate --eval --strict --json "$sim" --arg nixpkgs "$nixpkgs" --arg removedStubs "$removed" --arg systemd "$sd" 2>&1) || {
      bad "options absent (mkRemovedOptionModule stubs: $removed), systemd stage 1: $sd: evaluation failed:"
      printf '%s\n' "$out" | tail -n 5 | sed 's/^/       /'
      continue
    }
    if [ "$sd" = true ]; then
      grep -qF '"failed":[]' <<<"$out" && grep -qF 'btrfs-rollback\"' <<<"$out" &&
        ok "options absent (stubs: $removed), systemd stage 1: the unit, no assertion" ||
        bad "options absent (stubs: $removed), systemd stage 1: $out"
    else
      grep -qF 'has no scripted stage 1' <<<"$out" &&
        ok "options absent (stubs: $removed), scripted stage 1 asked for: the assertion fires" ||
        bad "options absent (stubs: $removed), scripted stage 1: $out"
    fi
  done
done
echo

echo "== the systems instantiate (derivations only, nothing is built)"
for kind in '{ }' "{ $systemd }"; do
  drv=$(nix-instantiate --expr "($(system "$kind")).system" 2>/dev/null) &&
    ok "system $kind: $drv" || bad "system $kind does not instantiate"
done
echo

echo "== VM tests (package: $([ "$real" = true ] && echo "nix/package.nix, pkgsStatic" || echo stub))"
tests=$(nix-instantiate --eval --strict --json --expr "builtins.attrNames (import $here/tests { pkgs = import $nixpkgs { system = \"x86_64-linux\"; }; module = null; })" |
  python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)))')
for t in $tests; do
  if drv=$(nix-instantiate --arg real "$real" --expr "
      { real }:
      let
        pkgs = import $nixpkgs { system = \"x86_64-linux\"; };
        package =
          if real then pkgs.pkgsStatic.callPackage $here/package.nix { }
          else pkgs.writeShellScriptBin \"btrfs-rollback\" \"echo stub\";
      in
      (import $here/tests {
        inherit pkgs;
        module = { imports = [ $module ]; boot.initrd.btrfsRollback.package = package; };
      }).$t" 2>&1); then
    ok "$t: $(tail -n 1 <<<"$drv")"
  else
    bad "$t:"
    printf '%s\n' "$drv" | tail -n 20 | sed 's/^/       /'
  fi
done
echo

echo "== every .nix file parses"
while IFS= read -r -d '' f; do
  nix-instantiate --parse "$f" >/dev/null && ok "${f#"$here/../"}" || bad "$f does not parse"
done < <(find "$here/.." -name '*.nix' -not -path '*/target/*' -not -path '*/.git/*' -print0)

echo
if [ "$failures" -eq 0 ]; then echo "all checks passed"; else echo "$failures check(s) failed"; exit 1; fi
