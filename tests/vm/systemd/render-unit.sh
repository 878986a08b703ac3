#!/usr/bin/env bash
# Render btrfs-rollback.service, as nix/module.nix makes it for systemd stage 1, into a tree
# to lay over an initrd.
#
#   tests/vm/systemd/render-unit.sh OUT_DIR [--on-failure continue|stop] [--device PATH]
#
# Evaluates tests/vm/system.nix (the NixOS system tests/vm/render-hook.sh evaluates for the
# scripted hook) with boot.initrd.systemd.enable = true and fileSystems."/" on the module's
# device, against the nixpkgs tree scripts/nixpkgs.sh prints. Writes:
#
#   OUT_DIR/tree/etc/systemd/system/btrfs-rollback.service          the unit text, unchanged
#   OUT_DIR/tree/etc/systemd/system/<unit>.wants|requires/...       its wantedBy / requiredBy
#                                                                   links, as NixOS's initrd has them
#   OUT_DIR/tree/<ExecStartPost, ExecStopPost, ... path>            the job scripts
#   OUT_DIR/tree/etc/btrfs-rollback.conf (etc.)                     the module's initrd contents
#   OUT_DIR/tree/<runtimeShell path> -> /bin/bash                   the script's interpreter
#   OUT_DIR/exec-start                                              where the binary must go
#   OUT_DIR/unit.json                                               everything evaluated, for the record
#
# The device unit the rollback waits for goes to OUT_DIR/device-unit.
# Store paths are kept as they are: the files are put at those paths in the initrd, so the unit
# text is exactly the module's. The package is a stub (its store path is all that is used); the
# runner puts the real binary at OUT_DIR/exec-start's path.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=${1:?usage: render-unit.sh OUT_DIR [--on-failure continue|stop] [--device PATH]}
shift
on_failure=continue
device=/dev/mapper/cryptroot
while [ $# -gt 0 ]; do
  case "$1" in
    --on-failure) on_failure=$2; shift ;;
    --device) device=$2; shift ;;
    *) echo "render-unit.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=tests/vm/nix-eval.sh
. "$here/../nix-eval.sh"

expr=$(cat <<EOF
let
  s = import $here/../system.nix {
    nixpkgs = "$nixpkgs";
    module = $repo/nix/module.nix;
    systemdStage1 = true;
    device = "$device";
    settings = {
      boot.initrd.systemd.emergencyAccess = true;
      boot.initrd.btrfsRollback.device = "$device";
      boot.initrd.btrfsRollback.onFailure = "$on_failure";
    };
  };
  c = s.config;
  lib = s.pkgs.lib;
  unit = c.boot.initrd.systemd.units."btrfs-rollback.service";
  svc = c.boot.initrd.systemd.services.btrfs-rollback;
in {
  text = unit.text;
  wantedBy = unit.wantedBy;
  requiredBy = unit.requiredBy;
  upholdedBy = unit.upheldBy or [ ];
  # The job scripts (nixpkgs' makeJobScript) and the Exec*= settings that run them.
  scripts = builtins.filter (j: j.text != "") (map (j: {
    inherit (j) key;
    text = svc.\${j.option};
    paths = map toString (lib.toList (svc.serviceConfig.\${j.key} or [ ]));
  }) [
    { key = "ExecStartPre"; option = "preStart"; }
    { key = "ExecStartPost"; option = "postStart"; }
    { key = "ExecStop"; option = "preStop"; }
    { key = "ExecStopPost"; option = "postStop"; }
  ]);
  # Files the module adds to the initrd (boot.initrd.systemd.contents), e.g. /etc/btrfs-rollback.conf.
  contents = lib.mapAttrs (_: v: v.text) (lib.filterAttrs
    (n: v: lib.hasInfix "btrfs-rollback" n && (v.text or null) != null)
    c.boot.initrd.systemd.contents);
  runtimeShell = s.pkgs.runtimeShell;
  package = toString c.boot.initrd.btrfsRollback.package;
  inherit (s) failedAssertions;
}
EOF
)

rm -rf "$out"
mkdir -p "$out/tree/etc/systemd/system"
nix-instantiate --eval --strict --json --expr "$expr" >"$out/unit.json"

python3 - "$out" <<'PY'
import json, os, re, sys

out = sys.argv[1]
u = json.load(open(os.path.join(out, "unit.json")))
if u["failedAssertions"]:
    sys.exit("render-unit.sh: the module's assertions fail:\n" + "\n".join(u["failedAssertions"]))
tree = os.path.join(out, "tree")
units = os.path.join(tree, "etc/systemd/system")
with open(os.path.join(units, "btrfs-rollback.service"), "w") as f:
    f.write(u["text"])
# NixOS's initrd materializes wantedBy/requiredBy as .wants/.requires links (no [Install]).
for key, suffix in (("wantedBy", "wants"), ("requiredBy", "requires"), ("upholdedBy", "upholds")):
    for target in u[key]:
        d = os.path.join(units, f"{target}.{suffix}")
        os.makedirs(d, exist_ok=True)
        os.symlink("../btrfs-rollback.service", os.path.join(d, "btrfs-rollback.service"))
# The job scripts as nixpkgs' makeJobScript writes them (systemd-lib.nix: writeShellScriptBin
# with "set -e" and the text), at their store paths; their interpreter is the initrd's bash.
for job in u["scripts"]:
    (path,) = job["paths"]
    m = re.search(r"^%s=(\S+)$" % job["key"], u["text"], re.M)
    if not m or m.group(1) != path:
        sys.exit(f"render-unit.sh: {job['key']} in the unit ({m and m.group(1)}) is not {path}")
    p = tree + path
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write("#!" + u["runtimeShell"] + "\nset -e\n" + job["text"] + "\n\n")
    os.chmod(p, 0o755)
for name, text in u["contents"].items():
    p = tree + "/" + name.lstrip("/")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text)
sh = tree + u["runtimeShell"]
os.makedirs(os.path.dirname(sh), exist_ok=True)
os.symlink("/bin/bash", sh)
# ExecStart="/nix/store/...-btrfs-rollback/bin/btrfs-rollback" "run" ...
m = re.search(r'^ExecStart="?([^" ]+)"?', u["text"], re.M)
if not m or not m.group(1).startswith(u["package"] + "/"):
    sys.exit(f"render-unit.sh: ExecStart does not run the package's binary: {m and m.group(0)}")
with open(os.path.join(out, "exec-start"), "w") as f:
    f.write(m.group(1) + "\n")
m = re.search(r"^After=(\S+\.device)\b", u["text"], re.M)
if not m:
    sys.exit("render-unit.sh: the unit is not ordered after a device unit")
with open(os.path.join(out, "device-unit"), "w") as f:
    f.write(m.group(1) + "\n")
PY
