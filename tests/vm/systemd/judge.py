#!/usr/bin/env python3
"""Judge one boot of the systemd stage-1 suite from the guest's report.

    judge.py REPORT CHECK...

REPORT is what the guest wrote to its report port (/dev/ttyS1): RESULT lines and, between
RB-JOURNAL-BEGIN and RB-JOURNAL-END, `journalctl -b -o json`. Checks:

  order                     cryptsetup@cryptroot and hibernate-resume finished before
                            btrfs-rollback.service started; it finished before sysroot.mount started
  rollback-ran-ok           btrfs-rollback.service ran and succeeded
  in-journal                the binary's own lines are in the journal, none of them also
                            through the kernel log (stderr is the journal), and its "rolling
                            back" line at info priority
  rollback-failed-1         btrfs-rollback.service failed with exit status 1, and the binary's
                            error line is in the journal at error priority
  not-rolled-back:continue  the module's failure message, "Booting the previous root"
  not-rolled-back:stop      the module's failure message, "Stopping the boot"
  not-rolled-back-device:PATH  a message (not from systemd itself) that the root was not rolled
                            back, naming PATH
  emergency                 emergency.target was reached

Prints one summary line (starting with a space) and exits 0 when every check passes; otherwise
prints what failed (space-separated words) and exits 1.
"""
import json
import os
import sys

# report.py (one directory up) has the verdict line both judges print; no __pycache__ in the
# checkout for it.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from report import say  # noqa: E402

STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"  # "Starting"/"Mounting" (job started)
DONE = "39f53479d3a045ac8e11786248231fbf"  # "Finished"/"Reached"/"Mounted" (job done)
SKIPPED = "0e4284a0caca4bfc81c0bb6786972673"  # unit skipped (condition)
UNIT = "btrfs-rollback.service"
CRYPT = "systemd-cryptsetup@cryptroot.service"
RESUME = "systemd-hibernate-resume.service"
SYSROOT = "sysroot.mount"


def load(path):
    results, journal, inside = {}, [], False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line == "RB-JOURNAL-BEGIN":
                inside = True
            elif line == "RB-JOURNAL-END":
                inside = False
            elif inside:
                try:
                    journal.append(json.loads(line))
                except ValueError:
                    pass  # a line cut by the power-off
            elif line.startswith("RESULT ") and "=" in line:
                k, v = line[7:].split("=", 1)
                results[k] = v
    return results, journal


def text(entry):
    m = entry.get("MESSAGE", "")
    if isinstance(m, list):  # not UTF-8: journalctl gives bytes
        m = bytes(b for b in m if isinstance(b, int)).decode(errors="replace")
    return m or ""


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    results, journal = load(sys.argv[1])
    bad, good = [], []
    if not journal:
        return say(["no-journal-in-report"], [])

    def t(e):
        return int(e.get("__MONOTONIC_TIMESTAMP", 0)) / 1e6

    def pid1(e):
        return e.get("_PID") == "1"

    def first(unit, msgid, result=None):
        for i, e in enumerate(journal):
            if pid1(e) and e.get("UNIT") == unit and e.get("MESSAGE_ID") == msgid:
                if result is None or e.get("JOB_RESULT") == result:
                    return i, e
        return None, None

    def unit_lines():
        return [e for e in journal if not pid1(e) and (
            e.get("_SYSTEMD_UNIT") == UNIT or e.get("SYSLOG_IDENTIFIER") == "btrfs-rollback"
            or text(e).startswith("btrfs-rollback: "))]

    def unit_state(want, said, note=""):
        """btrfs-rollback.service's ActiveState/Result/ExecMainStatus at the end of the boot."""
        state = results.get("post.unit." + UNIT, "")
        if state.startswith(want):
            good.append(said)
        else:
            bad.append(f"unit-state={state or 'unknown'}{note}")

    for check in sys.argv[2:]:
        name, _, arg = check.partition(":")
        if name == "order":
            ci, ce = first(CRYPT, DONE, "done")
            ri, re_ = first(RESUME, DONE, "done")
            si, se = first(UNIT, STARTING)
            ui, ue = first(UNIT, DONE, "done")
            mi, me = first(SYSROOT, STARTING)
            skipped = [e for e in journal if e.get("UNIT") == RESUME and e.get("MESSAGE_ID") == SKIPPED]
            missing = [n for n, i in ((CRYPT + "-finished", ci), (RESUME + "-finished", ri),
                                      (UNIT + "-started", si), (UNIT + "-finished", ui),
                                      (SYSROOT + "-started", mi)) if i is None]
            if missing:
                bad.append("order:missing:" + ",".join(missing))
            elif skipped:
                bad.append("order:hibernate-resume-was-skipped")
            elif not (ci < si and ri < si and ui < mi):
                bad.append(f"order:wrong(cryptsetup-done@{t(ce):.2f},resume-done@{t(re_):.2f},"
                           f"rollback@{t(se):.2f}-{t(ue):.2f},sysroot.mount@{t(me):.2f})")
            else:
                # Not ordered against each other (resume= is /dev/vdb, outside LUKS): reported.
                if ci < ri:
                    first_two = f"cryptsetup ({t(ce):.1f}s), resume ({t(re_):.1f}s)"
                else:
                    first_two = f"resume ({t(re_):.1f}s), cryptsetup ({t(ce):.1f}s)"
                good.append(f"order {first_two} < btrfs-rollback "
                            f"({t(se):.1f}-{t(ue):.1f}s) < sysroot.mount ({t(me):.1f}s)")
        elif name == "rollback-ran-ok":
            unit_state("active/success/0", "unit active/success")
        elif name == "in-journal":
            lines = unit_lines()
            twice = [e for e in lines if e.get("_TRANSPORT") == "kernel"]
            summary = [e for e in lines if text(e).startswith("btrfs-rollback: rolling back")]
            if not lines:
                bad.append("no-btrfs-rollback-lines-in-the-journal")
            elif twice:
                bad.append(f"{len(twice)}-lines-also-through-the-kernel-log(\"{text(twice[0])[:60]}\")")
            elif not summary or any(e.get("PRIORITY") != "6" for e in summary):
                bad.append("no-'rolling back'-line-at-info-priority")
            else:
                good.append(f"{len(lines)} journal line(s) from the unit, each once, e.g. \"{text(lines[-1])[:90]}\"")
        elif name == "rollback-failed-1":
            unit_state("failed/exit-code/1", "unit failed with exit status 1", "(want-failed/exit-code/1)")
            errors = [e for e in unit_lines() if text(e).startswith("btrfs-rollback: error: ")]
            if not errors or any(e.get("PRIORITY") != "3" for e in errors):
                bad.append("no-'btrfs-rollback: error:'-line-at-error-priority")
            else:
                good.append(f"error line at error priority: \"{text(errors[0])[:90]}\"")
        elif name == "not-rolled-back":
            phrase = {"continue": "Booting the previous root", "stop": "Stopping the boot"}[arg]
            hits = [text(e) for e in unit_lines() if "ROOT NOT ROLLED BACK" in text(e)]
            if not any(phrase in h for h in hits):
                bad.append(f"no-'ROOT NOT ROLLED BACK...{phrase}'-message")
            else:
                good.append(f"journal: \"{next(h for h in hits if phrase in h)[:110]}...\"")
        elif name == "not-rolled-back-device":
            hits = [text(e) for e in journal if not pid1(e)
                    and "not rolled back" in text(e).lower() and arg in text(e)]
            if not hits:
                bad.append(f"not-reported(no-'not-rolled-back'-message-naming-{arg})")
            else:
                good.append(f"journal: \"{hits[0][:110]}...\"")
        elif name == "emergency":
            i, _ = first("emergency.target", DONE, "done")
            if i is None:
                bad.append("emergency.target-not-reached")
            else:
                good.append("emergency.target reached")
        else:
            bad.append(f"unknown-check:{check}")
    return say(bad, good)


if __name__ == "__main__":
    sys.exit(main())
