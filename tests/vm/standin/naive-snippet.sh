#!/bin/sh
# NOT the real btrfs-rollback.  A stand-in with the same command line that does
# what the classic "erase your darlings" stage-1 snippet does: delete root (and
# everything nested, children first), THEN snapshot root-blank as root.  It is
# correct when nothing goes wrong, and not crash-safe: a power cut between the
# delete and the snapshot leaves no root.  tests/vm/run.sh uses it to show that
# the power-cut scenario catches exactly that:
#   BTRFS_ROLLBACK_BIN=tests/vm/standin/naive-snippet.sh tests/vm/run.sh
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
if [ -d "$M/$ROOT" ]; then
    delete_recursively "$M/$ROOT" || fail "delete failed"
fi
btrfs -q subvolume snapshot "$M/$BLANK" "$M/$ROOT" || fail "snapshot failed"
say "rolled $ROOT back to $BLANK"
[ -n "$LOG" ] && echo "$(date) rolled $ROOT back to $BLANK" >>"$M/$LOG"
umount $M
exit 0
