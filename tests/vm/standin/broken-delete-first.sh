#!/bin/sh
# NOT the real btrfs-rollback: a deliberately broken one, to show that the
# power-cut scenario of tests/vm/run.sh catches a rollback that is not
# crash-safe.  It moves root out of the way and commits, deletes it (children
# first), and only THEN snapshots root-blank as root: a power cut anywhere in
# the deletion leaves no root.
#   BTRFS_ROLLBACK_BIN=tests/vm/standin/broken-delete-first.sh tests/vm/run.sh
DEVICE= ROOT=root BLANK=root-blank LOG= WAIT=0
[ "$1" = run ] && shift
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift ;;
        --root) ROOT=$2; shift ;;
        --blank) BLANK=$2; shift ;;
        --log) LOG=$2; shift ;;
        --wait) WAIT=$2; shift ;;
    esac
    shift
done
say() { echo "btrfs-rollback: $*" >&2; echo "<5>btrfs-rollback: $*" >/dev/kmsg; }
i=0
while [ ! -b "$DEVICE" ]; do
    i=$((i + 1))
    [ $i -gt $((WAIT * 10)) ] && { say "device $DEVICE did not appear"; exit 1; }
    sleep 0.1
done
M=/run/btrfs-rollback-standin
mkdir -p $M
mount -t btrfs -o subvolid=5 "$DEVICE" $M || { say "cannot mount $DEVICE"; exit 1; }
fail() { say "$*"; umount $M; exit 1; }
[ -d "$M/$BLANK" ] || fail "blank subvolume $BLANK not found, $ROOT left untouched"
delete_recursively() {
    btrfs property set -ts "$1" ro false 2>/dev/null
    for i in $(btrfs subvolume list -o "$1" | sed 's/.* path //'); do
        delete_recursively "$M/$i"
    done
    btrfs -q subvolume delete "$1"
}
[ -d "$M/$ROOT.old" ] && delete_recursively "$M/$ROOT.old"
if [ -d "$M/$ROOT" ]; then
    mv "$M/$ROOT" "$M/$ROOT.old" || fail "rename failed"
    btrfs filesystem sync $M
    delete_recursively "$M/$ROOT.old" || fail "delete failed"
fi
btrfs -q subvolume snapshot "$M/$BLANK" "$M/$ROOT" || fail "snapshot failed"
say "rolled $ROOT back to $BLANK"
[ -n "$LOG" ] && echo "$(date) rolled $ROOT back to $BLANK" >>"$M/$LOG"
umount $M
exit 0
