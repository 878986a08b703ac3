#!/bin/bash
# Test only: report to the host and power off.
#   report.sh final       (rb-report.service) the root is mounted at /sysroot
#   report.sh emergency   (rb-emergency-report.service) the boot reached emergency.target
# On /dev/ttyS1: the report (tests/vm/guest.sh's emit_report, judged by tests/vm/report.py: the
# disk; what is mounted at /sysroot; the units' results; the keys rb-prepare.service left in
# /run) and the journal as JSON between RB-JOURNAL-BEGIN/END. On
# /dev/ttyS2: journalctl -b -o short-monotonic, for people.
mkdir /run/rb-reported 2>/dev/null || exit 0 # once per boot
DEV=/dev/mapper/cryptroot
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=
exec >>/dev/ttyS1 2>&1
. /rb/guest.sh
die() { echo "RB-FATAL $*"; result init.fatal 1; }
mkdir -p /mnt-top /mnt-root
PHASE=post
r reached "$1"
if mountpoint -q /sysroot; then
    r sysroot_mounted 1
    r sysroot_source "$(findmnt -n -o SOURCE /sysroot 2>/dev/null || sed -n 's|^\([^ ]*\) /sysroot .*|\1|p' /proc/mounts)"
    if [ -f /sysroot/BLANK-MARKER ]; then r sysroot_blank_marker 1; else r sysroot_blank_marker 0; fi
    if [ -f /sysroot/STALE-MARKER ]; then r sysroot_stale_marker 1; else r sysroot_stale_marker 0; fi
else
    r sysroot_mounted 0
fi
for u in btrfs-rollback.service sysroot.mount systemd-hibernate-resume.service \
    systemd-cryptsetup@cryptroot.service emergency.target initrd-root-fs.target; do
    r "unit.$u" "$(systemctl show -P ActiveState "$u")/$(systemctl show -P Result "$u" 2>/dev/null)/$(systemctl show -P ExecMainStatus "$u" 2>/dev/null)"
done
[ -b "$DEV" ] && report post
emit_report
journalctl --sync 2>/dev/null
echo "RB-JOURNAL-BEGIN"
journalctl -b -o json --no-pager \
    --output-fields=MESSAGE,MESSAGE_ID,UNIT,JOB_TYPE,JOB_RESULT,SYSLOG_IDENTIFIER,_PID,_SYSTEMD_UNIT,_TRANSPORT,EXIT_STATUS,PRIORITY
echo "RB-JOURNAL-END"
echo "RB-REPORT-DONE $1"
journalctl -b -o short-monotonic --no-pager >/dev/ttyS2 2>&1
sync
echo o >/proc/sysrq-trigger
sleep 30
