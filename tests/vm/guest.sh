# Shared by the stage-1 test guests (busybox sh in tests/vm/init, bash in the systemd
# initrd of tests/vm/systemd/): build the impermanence layout, and collect what the host needs
# to judge the file system in one report, written once at the end of the boot (emit_report)
# and judged by tests/vm/report.py (which holds its schema). Expects $DEV (the opened device),
# $LAYOUT/$NESTED (setup) and a die function; mounts at /mnt-top and /mnt-root.

REPORT=/run/rb-report
# result KEY VALUE: one key of the report (tests/vm/report.py lists them)
result() { echo "RESULT $1=$2" >>"$REPORT"; }
r() { result "$PHASE.$1" "$2"; }
# The report, once: between RB-REPORT-BEGIN and RB-REPORT-END on stdout.
emit_report() {
    echo "RB-REPORT-BEGIN"
    cat "$REPORT" 2>/dev/null
    echo "RB-REPORT-END"
}

# Everything the host needs to judge the state of the file system.
report() {
    PHASE=$1
    if ! mount -t btrfs -o subvolid=5 "$DEV" /mnt-top; then
        r top_mounted 0
        return
    fi
    r top_mounted 1
    btrfs subvolume list /mnt-top | sed 's/.* path //' >/tmp/subvols
    grep -v / /tmp/subvols | sort >/tmp/topsubvols
    r top_subvols "$(tr '\n' ',' </tmp/topsubvols)"
    r top_entries "$(ls -A /mnt-top | sort | tr '\n' ',')"
    r nested "$(grep -c '^root/' /tmp/subvols)"
    r subvols_total "$(wc -l </tmp/subvols)"
    grep '^root/' /tmp/subvols | grep -v '^root/many/' | sed "s|^|SUBVOL $PHASE |"
    if btrfs subvolume show /mnt-top/root >/dev/null 2>&1; then r root_is_subvol 1; else r root_is_subvol 0; fi
    r root_ro "$(btrfs property get -ts /mnt-top/root ro 2>/dev/null)"
    if [ -d /mnt-top/root-blank ]; then
        r blank_exists 1
        r blank_tree "$(cd /mnt-top/root-blank && find . | sort | md5sum | cut -c1-32)"
    else
        r blank_exists 0
    fi
    r persist "$(cat /mnt-top/persist/persist-file 2>/dev/null)"
    if [ -f /mnt-top/rollback.log ]; then
        r log_lines "$(wc -l </mnt-top/rollback.log)"
        tail -n 5 /mnt-top/rollback.log | sed "s|^|LOG $PHASE |"
    else
        r log_lines 0
    fi
    # the binary's own lines ("btrfs-rollback: ..."), not the kernel's "scanned by btrfs-rollback"
    r kmsg_lines "$(dmesg | grep -c 'btrfs-rollback: ')"
    dmesg | grep 'btrfs-rollback: ' | tail -n 10 | sed "s|^|KMSG $PHASE |"
    if mount -t btrfs -o subvol=root "$DEV" /mnt-root; then
        r root_mounted 1
        if [ -f /mnt-root/BLANK-MARKER ]; then r root_blank_marker 1; else r root_blank_marker 0; fi
        if [ -f /mnt-root/STALE-MARKER ]; then r root_stale_marker 1; else r root_stale_marker 0; fi
        r root_tree "$(cd /mnt-root && find . | sort | md5sum | cut -c1-32)"
        umount /mnt-root
    else
        r root_mounted 0
    fi
    umount /mnt-top
    echo "RB-REPORT-END $PHASE"
}

setup() {
    # shellcheck disable=SC2086
    mkfs.btrfs -q -f ${FSUUID:+-U "$FSUUID"} "$DEV" >/dev/null || die "mkfs.btrfs failed"
    mount -t btrfs "$DEV" /mnt-top || die "mount failed"
    cd /mnt-top || die "cd"
    set -e
    btrfs -q subvolume create root
    echo blank >root/BLANK-MARKER
    mkdir -p root/etc root/home
    echo "hostname-from-blank" >root/etc/hostname
    btrfs -q subvolume snapshot -r root root-blank
    # what a booted system leaves in root
    echo stale >root/STALE-MARKER
    echo junk >root/etc/junk.conf
    mkdir -p root/var/lib root/tmp
    dd if=/dev/urandom of=root/var/lib/data bs=64k count=16 2>/dev/null
    # nested subvolumes, three deep
    btrfs -q subvolume create root/var/lib/n1
    echo 1 >root/var/lib/n1/f
    btrfs -q subvolume create root/var/lib/n1/n2
    echo 2 >root/var/lib/n1/n2/f
    btrfs -q subvolume create root/var/lib/n1/n2/n3
    echo 3 >root/var/lib/n1/n2/n3/f
    # a read-only nested subvolume with a child
    btrfs -q subvolume create root/ro
    echo ro >root/ro/f
    btrfs -q subvolume create root/ro/child
    echo child >root/ro/child/f
    btrfs property set -ts root/ro ro true
    if [ "$LAYOUT" = big ]; then
        mkdir root/many
        n=1
        while [ $n -le "$NESTED" ]; do
            btrfs -q subvolume create root/many/s$n
            echo $n >root/many/s$n/f
            n=$((n + 1))
        done
    fi
    btrfs -q subvolume create persist
    echo "persist-data-42" >persist/persist-file
    btrfs -q subvolume create nix
    mkdir -p nix/store
    echo nix >nix/store/x
    set +e
    cd /
    sync
    umount /mnt-top || die "umount failed"
    result setup.ok 1
}
