#!/usr/bin/env python3
"""Judge one boot of the stage-1 VM suites from the guest's report.

    report.py LOG CHECK...

LOG is what the guest wrote to the console (tests/vm/init) or to its report port (the systemd
suite). tests/vm/guest.sh collects the report in a file and writes it once, as one block:

    RB-REPORT-BEGIN
    RESULT <key>=<value>          one line a key, each key once, keys of the schema only
    RB-REPORT-END

A boot that did not write exactly one whole block, a key written twice, a key not in the schema,
a phase without all of its keys or init.fatal fails every check. Checks (PHASE: pre or post):

  setup:N          the setup boot built the layout: setup.ok, N nested subvolumes under root,
                   the stale marker in root, the blank, the four top-level subvolumes
  rc:N             btrfs-rollback exited N (run.rc)
  fresh:PHASE      root is a fresh writable snapshot of root-blank, nothing nested in it, the top
                   level holds exactly what it should, persist is intact
  mounted:PHASE    root mounts
  logged:PHASE     rollback.log has a line
  kmsg:PHASE       the binary's own lines are in the kernel log
  untouched:PHASE  the old root, whole (stale marker, its 5 nested subvolumes), and no blank
  old-root:PHASE   the old root (stale marker)
  cut:PHASE        a valid root (the old one, or a snapshot of the blank); says where a power cut
                   fell, read off the disk, as "[where]": before-snapshot, snapshot-not-swapped,
                   swapped-deleting, after-deletion (or no-root, a failure)
  preop            root-blank was deleted before the rollback (preop.delblank)
  reached:WHAT     the systemd suite's report ran from WHAT (final, emergency, timeout)
  sysroot:fresh|old|none  what is mounted at /sysroot (systemd suite)

Prints one summary line (starting with a space) and exits 0 when every check passes; otherwise
prints what failed (space-separated words, starting with a space) and exits 1.
"""
import re
import sys

# What guest.sh's report() writes for each phase: always top_mounted; the rest once the top
# level mounted; blank_tree with the blank; the root_* content keys once root mounted.
DISK = ["top_mounted"]
TOP = ["top_subvols", "top_entries", "nested", "subvols_total", "root_is_subvol", "root_ro",
       "blank_exists", "persist", "log_lines", "kmsg_lines", "root_mounted"]
BLANK = ["blank_tree"]
ROOT = ["root_blank_marker", "root_stale_marker", "root_tree"]
PHASES = ("pre", "post")
# Keys outside the phases' disk report, and the systemd suite's additions to "post".
OTHER = {"setup.ok", "run.rc", "init.fatal", "preop.delblank", "post.reached",
         "post.sysroot_mounted", "post.sysroot_source", "post.sysroot_blank_marker",
         "post.sysroot_stale_marker"}
OTHER_RE = re.compile(r"^post\.unit\.[A-Za-z0-9@_.:-]+$")
TOP_LEVEL = "nix,persist,root,root-blank,"
TOP_ENTRIES = {"nix", "persist", "root", "root-blank", "rollback.log"}
PERSIST = "persist-data-42"


def load(path):
    """The report's keys and values, and what is wrong with its form."""
    values, bad, blocks, inside = {}, [], 0, False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line == "RB-REPORT-BEGIN":
                blocks += 1
                inside = True
            elif line == "RB-REPORT-END":
                inside = False
            elif inside and line.startswith("RESULT ") and "=" in line:
                k, v = line[7:].split("=", 1)
                if k in values:
                    bad.append(f"report:twice:{k}")
                values[k] = v
    if blocks == 0:
        return values, ["no-report"]
    if blocks > 1:
        bad.append(f"report:{blocks}-blocks")
    if inside:
        bad.append("report:cut-short")
    for k in values:
        phase, _, key = k.partition(".")
        if phase in PHASES and key in DISK + TOP + BLANK + ROOT:
            continue
        if k not in OTHER and not OTHER_RE.match(k):
            bad.append(f"report:unknown-key:{k}")
    for phase in PHASES:
        if not any(k.startswith(phase + ".") for k in values):
            continue
        want = list(DISK)
        if values.get(f"{phase}.top_mounted") == "1":
            want += TOP
            if values.get(f"{phase}.blank_exists") == "1":
                want += BLANK
            if values.get(f"{phase}.root_mounted") == "1":
                want += ROOT
        bad += [f"report:missing:{phase}.{k}" for k in want if f"{phase}.{k}" not in values]
    if values.get("init.fatal"):
        bad.append("init-fatal")
    return values, bad


def judge(values, checks):
    bad, good = [], []

    def v(key):
        return values.get(key, "")

    def differ(p, expected):
        """What is not as expected in phase p: expected lists (key, value, word), and the word
        of each key whose value differs ({} in it: the value found) is returned, in order."""
        return [word.format(v(f"{p}.{key}")) for key, want, word in expected if v(f"{p}.{key}") != want]

    def fresh(p):
        why = differ(p, [("top_mounted", "1", "top-level-not-mountable"),
                         ("root_is_subvol", "1", "root-not-a-subvolume"),
                         ("root_mounted", "1", "root-not-mountable"),
                         ("root_ro", "ro=false", "root-{}"),
                         ("root_blank_marker", "1", "no-blank-marker"),
                         ("root_stale_marker", "0", "stale-content")])
        if not v(f"{p}.root_tree") or v(f"{p}.root_tree") != v(f"{p}.blank_tree"):
            why.append("root-differs-from-blank")
        why += differ(p, [("nested", "0", "nested={}"), ("top_subvols", TOP_LEVEL, "top-subvolumes={}")])
        why += [f"leftover:{e}" for e in v(f"{p}.top_entries").split(",") if e and e not in TOP_ENTRIES]
        return why + differ(p, [("persist", PERSIST, "persist-changed")])

    def valid_root(p):
        return (v(f"{p}.root_is_subvol") == "1" and v(f"{p}.root_mounted") == "1"
                and "1" in (v(f"{p}.root_blank_marker"), v(f"{p}.root_stale_marker")))

    def at_least_one(key):
        try:
            return int(v(key)) >= 1
        except ValueError:
            return False

    for check in checks:
        name, _, p = check.partition(":")
        if name == "setup":
            if (v("setup.ok") == "1" and v("post.nested") == p and v("post.root_stale_marker") == "1"
                    and v("post.blank_exists") == "1" and v("post.top_subvols") == TOP_LEVEL):
                good.append(f"{p} nested subvolumes under root")
            else:
                bad.append(f"setup-did-not-build-the-layout(nested={v('post.nested')})")
        elif name == "rc":
            if v("run.rc") == p:
                good.append(f"rc {p}")
            else:
                bad.append(f"exit-status={v('run.rc')}" + (f"(want-{p})" if p != "0" else ""))
        elif name == "fresh":
            why = fresh(p)
            if why:
                bad += why
            else:
                good.append("root fresh, nothing nested, persist intact")
        elif name == "mounted":
            if v(f"{p}.root_mounted") == "1":
                good.append("root mounts")
            else:
                bad.append("root-not-mountable")
        elif name == "logged":
            if at_least_one(f"{p}.log_lines"):
                good.append(f"rollback.log {v(f'{p}.log_lines')} line(s)")
            else:
                bad.append("no-rollback.log")
        elif name == "kmsg":
            if at_least_one(f"{p}.kmsg_lines"):
                good.append(f"{v(f'{p}.kmsg_lines')} line(s) in the kernel log")
            else:
                bad.append("not-in-kernel-log")
        elif name == "untouched":
            why = differ(p, [("root_mounted", "1", "root-not-mountable"),
                             ("root_stale_marker", "1", "root-content-changed"),
                             ("nested", "5", "nested={}(want-5)"),
                             ("blank_exists", "0", "blank-still-there(test-bug)")])
            if why:
                bad += why
            else:
                good.append("root untouched")
        elif name == "old-root":
            if v(f"{p}.root_stale_marker") == "1":
                good.append("the old root")
            else:
                bad.append("root-content-changed")
        elif name == "cut":
            top = v(f"{p}.top_subvols")
            extra = [s for s in top.split(",") if s and s not in ("nix", "persist", "root", "root-blank")]
            if not valid_root(p):
                bad.append(f"NO-VALID-ROOT-AFTER-CUT(subvol={v(f'{p}.root_is_subvol')},"
                           f"mounted={v(f'{p}.root_mounted')},top={top}) [no-root]")
                continue
            old = v(f"{p}.root_stale_marker") == "1"
            if old:
                where = "snapshot-not-swapped" if extra else "before-snapshot"
            else:
                where = "swapped-deleting" if extra else "after-deletion"
            good.append(f"root={'old' if old else 'fresh'}, top level: {top} nested in root: "
                        f"{v(f'{p}.nested')}, subvolumes in all: {v(f'{p}.subvols_total')} [{where}]")
        elif name == "preop":
            if v("preop.delblank") == "1":
                good.append("blank deleted before")
            else:
                bad.append("blank-not-deleted(test-bug)")
        elif name == "reached":
            if v("post.reached") == p:
                good.append(f"reached {p}")
            else:
                bad.append(f"reached={v('post.reached')}(want-{p})")
        elif name == "sysroot":
            m, b, s = (v(f"post.sysroot_{k}") for k in ("mounted", "blank_marker", "stale_marker"))
            ok = {"fresh": m == "1" and b == "1" and s == "0",
                  "old": m == "1" and s == "1",
                  "none": m == "0"}.get(p)
            if ok is None:
                bad.append(f"unknown-check:{check}")
            elif ok:
                good.append(f"/sysroot: {p}")
            else:
                bad.append({"fresh": "/sysroot-is-not-the-fresh-root", "old": "old-root-not-booted",
                            "none": "old-root-mounted"}[p])
        else:
            bad.append(f"unknown-check:{check}")
    return bad, good


def say(bad, good):
    """The verdict line of report.py and systemd/judge.py, and their exit status: what failed
    (space-separated words) when anything did, else the summary of what passed."""
    if bad:
        print(" " + " ".join(bad))
        return 1
    print(" " + "; ".join(good))
    return 0


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    values, bad = load(sys.argv[1])
    if bad:
        return say(bad, [])
    return say(*judge(values, sys.argv[2:]))


if __name__ == "__main__":
    sys.exit(main())
