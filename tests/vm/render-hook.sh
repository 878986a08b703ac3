#!/usr/bin/env bash
# Render the scripted stage 1's rollback hook, as nix/module.nix makes it, for tests/vm/init.
#
#   tests/vm/render-hook.sh OUT_FILE
#
# Evaluates (nix-instantiate --eval, nothing is built) a NixOS system with the scripted stage 1,
# LUKS as "cryptroot", fileSystems."/" on /dev/mapper/cryptroot (subvol=root) and the module
# with its defaults, against the nixpkgs tree scripts/nixpkgs.sh prints, as
# tests/vm/systemd/render-unit.sh does for the unit. Writes boot.initrd.postResumeCommands
# (the module's snippet: the invocation of btrfs-rollback and what it prints when that fails)
# to OUT_FILE; /init sources it where NixOS's stage-1 init runs it. Nothing of the command line
# is written twice: a change to the module's invocation or defaults reaches the VM test.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:?usage: render-hook.sh OUT_FILE}

# shellcheck source=tests/vm/nix-eval.sh
. "$here/nix-eval.sh"

expr=$(cat <<EOF
let
  system = import "$nixpkgs/nixos" {
    system = "x86_64-linux";
    configuration = { lib, pkgs, ... }: {
      imports = [ $repo/nix/module.nix ];
      boot.loader.grub.enable = false;
      boot.initrd.systemd.enable = false;
      boot.initrd.luks.devices.cryptroot.device = "/dev/vda";
      fileSystems."/" = { device = "/dev/mapper/cryptroot"; fsType = "btrfs"; options = [ "subvol=root" ]; };
      boot.initrd.btrfsRollback.enable = true;
      boot.initrd.btrfsRollback.package = pkgs.writeShellScriptBin "btrfs-rollback" "echo stub";
      system.stateVersion = "24.05";
    };
  };
  c = system.config;
in {
  hook = c.boot.initrd.postResumeCommands;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
}
EOF
)

json=$(nix-instantiate --eval --strict --json --expr "$expr")
python3 - "$out" "$json" <<'PY'
import json, sys

out, u = sys.argv[1], json.loads(sys.argv[2])
if u["failedAssertions"]:
    sys.exit("render-hook.sh: the module's assertions fail:\n" + "\n".join(u["failedAssertions"]))
hook = u["hook"]
if "\nbtrfs-rollback 'run' " not in "\n" + hook:
    sys.exit("render-hook.sh: postResumeCommands does not run btrfs-rollback:\n" + hook)
with open(out, "w") as f:
    f.write(hook)
PY
