#!/usr/bin/env bash
# The evaluation tier: the NixOS side evaluated against a real nixpkgs, nothing built.
#
#   nix/check-eval.sh [NIXPKGS] [--real-package] [--cases "NAME..."]
#
# NIXPKGS  a nixpkgs tree; without it, scripts/nixpkgs.sh finds one ($NIXPKGS, the offline
#          ../shared/nixpkgs tarball CI has, or <nixpkgs>). With none (or no nix-instantiate)
#          the tier is skipped with the reason, or fails under CI=true.
# --real-package  instantiate the VM tests with nix/package.nix (pkgsStatic) instead of a stub.
# --cases "NAME..."  only these cases of nix/check-eval.nix, and nothing else (while working on one).
#
# Checks, each an ok/FAIL line: every case of nix/check-eval.nix (what our module's
# assertions and warnings say for a layout, and what the scripted hook, the unit, its
# scripts and /etc/btrfs-rollback.conf contain); the configuration file as the binary
# reads it (cargo-built; --help shows the defaults it took); the module in a module set
# without the scripted stage 1; the systems and every VM test instantiate; every .nix parses.
# Exits 1 if any check failed. A NixOS evaluation takes ~10 s: the whole tier ~8 minutes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
module=$here/module.nix

skip() {
  if [ "${CI:-}" = true ]; then
    echo "FAIL evaluation tier cannot run (CI=true: a skip is a failure): $1"
    exit 1
  fi
  echo "SKIP evaluation tier: $1"
  exit 0
}

real=false
nixpkgs=
only=
while [ $# -gt 0 ]; do
  case $1 in
    --real-package) real=true ;;
    --cases) only=$2; shift ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) nixpkgs=$1 ;;
  esac
  shift
done
command -v nix-instantiate >/dev/null || skip "no nix-instantiate (apt-get install nix-bin)"
command -v python3 >/dev/null || skip "no python3"
if [ -z "$nixpkgs" ]; then
  reason=$(mktemp)
  nixpkgs=$("$repo/scripts/nixpkgs.sh" 2>"$reason") || skip "no nixpkgs: $(cat "$reason")"
  rm -f "$reason"
fi
nixpkgs=$(cd "$nixpkgs" && pwd)
[ -f "$nixpkgs/nixos/default.nix" ] || skip "$nixpkgs has no nixos/default.nix"
echo "nixpkgs: $nixpkgs ($(cat "$nixpkgs/.version" 2>/dev/null || echo "version unknown"))"

if [ -z "${NIX_CONF_DIR:-}" ]; then
  NIX_CONF_DIR=$(mktemp -d)
  export NIX_CONF_DIR
  printf 'build-users-group =\nexperimental-features = nix-command flakes\nsubstituters =\nsandbox = false\n' >"$NIX_CONF_DIR/nix.conf"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failures=0
passes=0
ok() { printf 'ok   %s\n' "$1"; passes=$((passes + 1)); }
bad() { printf 'FAIL %s\n' "$1"; failures=$((failures + 1)); }
indent() { sed 's/^/       /'; }

echo
echo "== the cases of nix/check-eval.nix (assertions, warnings, rendered hook, unit, config file)"
cases=$(nix-instantiate --eval --strict --json "$here/check-eval.nix" --arg nixpkgs "$nixpkgs" --arg module "$module" |
  python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)))')
[ -z "$only" ] || cases=$only
# A few systems per evaluation: each costs ~10 s and ~300 MB, the memory stays with the process.
set -- $cases
while [ $# -gt 0 ]; do
  batch=("${@:1:4}")
  shift $(($# < 4 ? $# : 4))
  names=$(printf '"%s" ' "${batch[@]}")
  if nix-instantiate --eval --strict --json "$here/check-eval.nix" --arg nixpkgs "$nixpkgs" \
    --arg module "$module" --arg names "[ $names]" >"$work/batch.json" 2>"$work/batch.err"; then
    python3 -c 'import json, sys; [print(json.dumps(c)) for c in json.load(sys.stdin)]' <"$work/batch.json" >>"$work/cases.jsonl"
  else
    for name in "${batch[@]}"; do bad "$name: does not evaluate:"; done
    tail -n 15 "$work/batch.err" | indent
  fi
done

# The binary that reads the configuration files (same sources, host build).
binary=
if command -v cargo >/dev/null; then
  if (cd "$repo" && cargo build --quiet 2>"$work/cargo.err"); then
    binary=$repo/target/debug/btrfs-rollback
  else
    bad "cargo build failed:"
    tail -n 15 "$work/cargo.err" | indent
  fi
elif [ "${CI:-}" = true ]; then
  bad "no cargo: the configuration files cannot be read by the binary (CI=true)"
else
  echo "SKIP configuration files read by the binary: no cargo"
fi

if [ -s "$work/cases.jsonl" ]; then
  python3 - "$work/cases.jsonl" "$binary" "$work" >"$work/judged" <<'PY' || true
import json, os, subprocess, sys

cases_file, binary, work = sys.argv[1:4]
fake_bin = os.path.join(work, "bin")
os.makedirs(fake_bin, exist_ok=True)
for tool, body in [
    ("systemctl", '[ "$FAKE_MAIN_STATUS" = fail ] && exit 1; echo "$FAKE_MAIN_STATUS"'),
    ("btrfs-rollback", 'exit "$FAKE_STATUS"'),
]:
    with open(os.path.join(fake_bin, tool), "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(os.path.join(fake_bin, tool), 0o755)
squeeze = lambda s: " ".join(s.split())

def report(good, what, detail=""):
    print(("ok   " if good else "FAIL ") + what)
    if not good and detail:
        print("\n".join("       " + l for l in detail.rstrip("\n").splitlines()))

for line in open(cases_file):
    case = json.loads(line)
    name, expect, problems = case["name"], case["expect"], case["problems"]
    listing = "\n".join(problems) or "(none)"
    if expect == "clean":
        report(not problems, f"{name}: no assertion or warning", "got:\n" + listing)
    else:
        (kind, words), = expect.items()
        hits = [p for p in problems if p.startswith(kind + ": ") and all(squeeze(w) in squeeze(p) for w in words)]
        others = [p for p in problems if p not in hits]
        short = squeeze(hits[0])[:150] + "…" if hits else ""
        report(len(hits) == 1 and not others, f"{name}: {kind}: {short}",
               f"expected exactly one {kind} containing {words}; got:\n" + listing)
    for label, r in sorted(case["renders"].items()):
        text = r["text"]
        missing = [s for s in r["has"] if s not in text]
        present = [s for s in r["lacks"] if s in text]
        wrong = r["equals"] is not None and text != r["equals"]
        detail = "".join(f"lacks {s!r}\n" for s in missing) + "".join(f"has {s!r}\n" for s in present)
        if wrong:
            detail += f"expected exactly {r['equals']!r}\n"
        checks = len(r["has"]) + len(r["lacks"]) + (r["equals"] is not None)
        report(not (missing or present or wrong), f"{name}: {label}: {checks} content check(s)",
               detail + "text:\n" + text[:3000])
        for run in r["runs"]:
            # As a unit script runs it (set -e; stage 1 without), with stand-ins for
            # systemctl, the binary and stage 1's fail; kmsg writes go nowhere.
            env = dict(os.environ, PATH=fake_bin + ":" + os.environ["PATH"], **run["env"])
            script = ("set -e\n" if run.get("setE", True) else "") + "fail() { echo fail called; }\n" \
                + text.replace("/dev/kmsg", "/dev/null")
            out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
            report(out.returncode == 0 and out.stdout == run["stdout"],
                   f"{name}: {label}: run with {' '.join(f'{k}={v}' for k, v in run['env'].items())}: "
                   + (repr(out.stdout.strip()[:90]) + "…" if out.stdout else "says nothing"),
                   f"exit {out.returncode}, expected stdout {run['stdout']!r}, got {out.stdout!r} {out.stderr!r}")
    if case["config-file"] is not None:
        # The file as the module writes it, read by the real binary: its values are the
        # defaults --help shows, for every subcommand that has the option.
        if not binary:
            continue
        path = os.path.join(work, name + ".conf")
        open(path, "w").write(case["config-file"])
        values = dict(l.split(" = ", 1) for l in case["config-file"].splitlines() if l and not l.startswith("#"))
        for sub in ["run", "list", "diff", "restore"]:
            out = subprocess.run([binary, "--config", path, sub, "--help"], capture_output=True, text=True)
            # "      --device <PATH>  The unlocked btrfs block device [default: /dev/mapper/crypt]"
            # --help wraps at 80 columns: join each option's continuation lines to it first.
            joined = []
            for l in out.stdout.splitlines():
                if joined and l.startswith(" " * 10) and not l.strip().startswith("-"):
                    joined[-1] += " " + l.strip()
                else:
                    joined.append(l)
            lines = {k: l for l in joined for k in values if l.strip().startswith(f"--{k} <")}
            flags = [k for k in values if k in lines]
            missing = [f"--{k} [default: {values[k]}]" for k in flags
                       if not lines[k].rstrip().endswith(f"[default: {values[k]}]")]
            report(out.returncode == 0 and not missing and "device" in flags,
                   f"{name}: btrfs-rollback --config FILE {sub} --help: defaults from the file for {', '.join(flags)}",
                   f"exit {out.returncode}; not shown as defaults: {missing}\n{out.stdout}{out.stderr}")
PY
  cat "$work/judged"
  passes=$((passes + $(grep -c '^ok ' "$work/judged" || true)))
  failures=$((failures + $(grep -c '^FAIL ' "$work/judged" || true)))
fi
echo
if [ -n "$only" ]; then
  echo "evaluation tier, cases $only only: $passes passed, $failures failed"
  [ "$failures" -eq 0 ]
  exit
fi

echo "== without the scripted stage 1 (nixpkgs plans to remove it): a module set with stubs"
sed "s|MODULE|$module|" >"$work/sim.nix" <<'NIX'
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
      environment.etc = lib.mkOption { type = t.attrsOf t.anything; default = { }; };
      boot.initrd.enable = lib.mkOption { type = t.bool; default = true; };
      boot.initrd.luks.devices = lib.mkOption { type = t.attrsOf t.anything; default = { }; };
      boot.initrd.systemd = {
        enable = lib.mkOption { type = t.bool; default = true; };
        emergencyAccess = lib.mkOption { type = t.anything; default = false; };
        storePaths = lib.mkOption { type = t.listOf t.anything; default = [ ]; };
        extraBin = lib.mkOption { type = t.attrsOf t.anything; default = { }; };
        contents = lib.mkOption { type = t.attrsOf t.anything; default = { }; };
        services = lib.mkOption { type = t.attrsOf t.anything; default = { }; };
      };
      fileSystems = lib.mkOption {
        type = t.attrsOf (t.submodule ({ name, ... }: { options = {
          mountPoint = lib.mkOption { type = t.str; default = name; };
          device = lib.mkOption { type = t.nullOr t.str; default = null; };
          label = lib.mkOption { type = t.nullOr t.str; default = null; };
          fsType = lib.mkOption { type = t.str; default = "auto"; };
          options = lib.mkOption { type = t.listOf t.str; default = [ ]; };
        }; }));
        default = { };
      };
    };
  };
  removed = lib.optionals removedStubs (map (n: lib.mkRemovedOptionModule [ "boot" "initrd" n ] "gone") [
    "postResumeCommands" "postDeviceCommands" "preLVMCommands" "postMountCommands" "extraUtilsCommands" "extraUtilsCommandsTest" "extraFiles"
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
    out=$(nix-instantiate --eval --strict --json "$work/sim.nix" --arg nixpkgs "$nixpkgs" --arg removedStubs "$removed" --arg systemd "$sd" 2>&1) || {
      bad "options absent (mkRemovedOptionModule stubs: $removed), systemd stage 1: $sd: evaluation failed:"
      printf '%s\n' "$out" | tail -n 5 | indent
      continue
    }
    if [ "$sd" = true ]; then
      if grep -qF '"failed":[]' <<<"$out" && grep -qF 'btrfs-rollback\"' <<<"$out"; then
        ok "options absent (stubs: $removed), systemd stage 1: the unit, no assertion"
      else
        bad "options absent (stubs: $removed), systemd stage 1: $out"
      fi
    elif grep -qF 'has no scripted stage 1' <<<"$out"; then
      ok "options absent (stubs: $removed), scripted stage 1 asked for: the assertion fires"
    else
      bad "options absent (stubs: $removed), scripted stage 1: $out"
    fi
  done
done
echo

echo "== the systems instantiate (derivations only, nothing is built)"
for kind in '{ }' '{ boot.initrd.systemd.enable = true; }'; do
  if drv=$(nix-instantiate --expr "import $nixpkgs/nixos {
      system = \"x86_64-linux\";
      configuration = { pkgs, ... }: {
        imports = [ $module $kind ];
        boot.loader.grub.enable = false;
        boot.initrd.luks.devices.cryptroot.device = \"/dev/disk/by-partlabel/luks\";
        fileSystems.\"/\" = { device = \"/dev/mapper/cryptroot\"; fsType = \"btrfs\"; options = [ \"subvol=root\" ]; };
        boot.initrd.btrfsRollback.enable = true;
        boot.initrd.btrfsRollback.package = pkgs.writeShellScriptBin \"btrfs-rollback\" \"echo stub\";
        system.stateVersion = \"24.05\";
      };
    }" -A system 2>"$work/system.err"); then
    ok "system $kind: $drv"
  else
    bad "system $kind does not instantiate:"
    tail -n 15 "$work/system.err" | indent
  fi
done
echo

echo "== VM tests (package: $([ "$real" = true ] && echo "nix/package.nix, pkgsStatic" || echo stub))"
tests=$(nix-instantiate --eval --strict --json --expr "builtins.attrNames (import $here/tests { pkgs = import $nixpkgs { system = \"x86_64-linux\"; }; module = null; })" |
  python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)))')
[ -n "$tests" ] || bad "no VM tests found"
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
    printf '%s\n' "$drv" | tail -n 20 | indent
  fi
done
echo

echo "== the flake's outputs, nixpkgs as its input (instantiated, not built)"
flake="import $here/check-flake.nix { nixpkgs = $nixpkgs; }"
if out=$(nix-instantiate --eval --strict --json --expr "let f = $flake; in {
    checks = builtins.attrNames f.checks.x86_64-linux;
    modules = builtins.attrNames f.nixosModules;
    clippyVersion = (import $nixpkgs { system = \"x86_64-linux\"; }).clippy.version;
    clippy = f.checks.x86_64-linux.clippy.buildPhase;
  }" 2>"$work/flake.err"); then
  python3 - "$out" "$tests" >"$work/flake.judged" <<'PY' || true
import json, sys
d, tests = json.loads(sys.argv[1]), sys.argv[2].split()
want = {"package", "clippy", "rustfmt"} | {"vm-" + t for t in tests}
checks = [
    (f"checks.x86_64-linux: {' '.join(d['checks'])}", want <= set(d["checks"]), f"missing {sorted(want - set(d['checks']))}"),
    ("nixosModules: default, btrfs-rollback", {"default", "btrfs-rollback"} <= set(d["modules"]), d["modules"]),
    (f"clippy check with clippy {d['clippyVersion']} (<= 1.95): --deny warnings",
     "cargo clippy --offline --all-targets -- --deny warnings\n" in d["clippy"], d["clippy"]),
]
for what, good, detail in checks:
    print(("ok   " if good else "FAIL ") + what + ("" if good else f": {detail}"))
PY
  cat "$work/flake.judged"
  passes=$((passes + $(grep -c '^ok ' "$work/flake.judged" || true)))
  failures=$((failures + $(grep -c '^FAIL ' "$work/flake.judged" || true)))
else
  bad "the flake's outputs do not evaluate:"
  tail -n 15 "$work/flake.err" | indent
fi
for check in package clippy rustfmt; do
  if drv=$(nix-instantiate --expr "$flake" -A "checks.x86_64-linux.$check" 2>"$work/flake.err"); then
    ok "checks.x86_64-linux.$check: $drv"
  else
    bad "checks.x86_64-linux.$check does not instantiate:"
    tail -n 15 "$work/flake.err" | indent
  fi
done
echo

echo "== examples/disko.nix with disko's module"
if [ -n "${DISKO:-}" ]; then
  if out=$(nix-instantiate --eval --strict --json "$here/check-disko.nix" --arg nixpkgs "$nixpkgs" \
    --arg module "$module" --arg disko "$(cd "$DISKO" && pwd)" --arg example "$repo/examples/disko.nix" 2>"$work/disko.err"); then
    python3 - "$out" >"$work/disko.judged" <<'PY' || true
import json, sys
d = json.loads(sys.argv[1])
create = d["create"]
blank = 'btrfs subvolume snapshot -r "$MNTPOINT/root" "$MNTPOINT/root-blank"'
checks = [
    ("our module reports nothing", d["problems"] == [], d["problems"]),
    ("/ is btrfs subvol=/root of /dev/mapper/cryptroot",
     d["root"]["device"] == "/dev/mapper/cryptroot" and "subvol=/root" in d["root"]["options"], d["root"]),
    ("the LUKS partition is /dev/disk/by-partlabel/luks", d["luks"] == "/dev/disk/by-partlabel/luks", d["luks"]),
    ("the create script takes the read-only root-blank after creating root",
     blank in create and create.index('SUBVOL_ABS_PATH="$MNTPOINT//root"') < create.index(blank), ""),
]
for what, good, detail in checks:
    print(("ok   " if good else "FAIL ") + "disko: " + what + ("" if good else f": {detail}"))
PY
    cat "$work/disko.judged"
    passes=$((passes + $(grep -c '^ok ' "$work/disko.judged" || true)))
    failures=$((failures + $(grep -c '^FAIL ' "$work/disko.judged" || true)))
  else
    bad "examples/disko.nix does not evaluate with disko from $DISKO:"
    tail -n 15 "$work/disko.err" | indent
  fi
else
  # Not a skip of the tier: CI has no disko source (no network, not vendored); the file is
  # parsed below. Evaluated on a machine with DISKO=<a disko checkout>.
  echo "not evaluated: examples/disko.nix needs disko's source (DISKO=<path>); parsed only"
fi
echo

echo "== every .nix file parses"
while IFS= read -r -d '' f; do
  if nix-instantiate --parse "$f" >/dev/null 2>"$work/parse.err"; then ok "${f#"$repo/"}"; else
    bad "${f#"$repo/"} does not parse:"
    indent <"$work/parse.err"
  fi
done < <(find "$repo" -name '*.nix' -not -path '*/target/*' -not -path '*/.git/*' -print0 | sort -z)

echo
echo "evaluation tier: $passes passed, $failures failed"
[ "$failures" -eq 0 ]
