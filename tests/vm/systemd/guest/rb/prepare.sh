#!/bin/bash
# Test only (rb-prepare.service): runs on the opened device before btrfs-rollback.service.
#   rb.scenario=setup     build the impermanence layout (tests/vm/guest.sh), rb.layout, rb.nested,
#                         rb.fsuuid (the file system's UUID, for the by-uuid scenarios)
#   rb.scenario=checkrun  report the state before the rollback (phase "pre")
#   rb.preop=delblank     delete root-blank (missing-blank scenarios)
# Its report keys wait in /run for report.sh, which writes the report; its other output goes to
# the report port (/dev/ttyS1).
DEV=/dev/mapper/cryptroot LAYOUT=normal NESTED=0 SCENARIO= PREOP= FSUUID=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rb.scenario=*) SCENARIO=${arg#rb.scenario=} ;;
        rb.layout=*) LAYOUT=${arg#rb.layout=} ;;
        rb.nested=*) NESTED=${arg#rb.nested=} ;;
        rb.preop=*) PREOP=${arg#rb.preop=} ;;
        rb.fsuuid=*) FSUUID=${arg#rb.fsuuid=} ;;
    esac
done
exec >>/dev/ttyS1 2>&1
. /rb/guest.sh
die() { echo "RB-FATAL $*"; result init.fatal 1; exit 1; }
mkdir -p /mnt-top /mnt-root
i=0
while [ ! -b "$DEV" ]; do
    i=$((i + 1)); [ $i -gt 600 ] && die "no $DEV"
    sleep 0.1
done
case "$SCENARIO" in
    setup) setup ;; # its "post" report: report.sh's, at the end of the boot
    checkrun) report pre ;;
esac
if [ "$PREOP" = delblank ]; then
    mount -t btrfs -o subvolid=5 "$DEV" /mnt-top && btrfs -q subvolume delete /mnt-top/root-blank
    umount /mnt-top
    result preop.delblank 1
fi
exit 0
