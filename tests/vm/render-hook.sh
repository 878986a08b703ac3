#!/usr/bin/env bash
# Render the scripted stage 1's rollback hook, as nix/module.nix makes it, for tests/vm/init.
#
#   tests/vm/render-hook.sh OUT_FILE
#
# Evaluates tests/vm/system.nix (the NixOS system tests/vm/systemd/render-unit.sh evaluates for
# the unit) with the scripted stage 1 and the module's defaults, against the nixpkgs tree
# scripts/nixpkgs.sh prints. Writes boot.initrd.postResumeCommands
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
  s = import $here/system.nix {
    nixpkgs = "$nixpkgs";
    module = $repo/nix/module.nix;
    systemdStage1 = false;
  };
in {
  hook = s.config.boot.initrd.postResumeCommands;
  inherit (s) failedAssertions;
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
