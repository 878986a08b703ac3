# Helpers shared by the stage-1 VM suites (tests/vm/run.sh, tests/vm/systemd/run.sh), sourced.
# They use: REPO, WORK (scratch), RES (one result file per scenario), T0 (start time), CUTS,
# REFINE, JOBS, the suite's sc_cut, and BTRFS_ROLLBACK_BIN from the environment.

log() { echo "[$(($(date +%s) - T0))s] $*"; }
fatal() { echo "FATAL: $*" >&2; echo "0 passed, 1 failed"; exit 2; }

is_static() { ! ldd "$1" 2>&1 | grep -q '=>'; }
# ---------------------------------------------------------------- the binary
build_binary() {
    if [ -n "${BTRFS_ROLLBACK_BIN:-}" ]; then
        BIN=$(readlink -f "$BTRFS_ROLLBACK_BIN")
        [ -f "$BIN" ] || fatal "BTRFS_ROLLBACK_BIN=$BTRFS_ROLLBACK_BIN not found"
        log "btrfs-rollback under test: $BIN (from BTRFS_ROLLBACK_BIN)"
        return
    fi
    log "building the static binary"
    (cd "$REPO" && RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --target x86_64-unknown-linux-gnu) >"$WORK/cargo.log" 2>&1 ||
        { tail -n 30 "$WORK/cargo.log"; fatal "cargo build failed (see $WORK/cargo.log)"; }
    BIN=$REPO/target/x86_64-unknown-linux-gnu/release/btrfs-rollback
    is_static "$BIN" || fatal "$BIN is not statically linked"
    log "btrfs-rollback under test: $BIN"
}

new_disk() { # path
    rm -f "$1"
    truncate -s 400M "$1"
    cryptsetup luksFormat --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --batch-mode --key-file "$WORK/cryptroot.key" "$1" >/dev/null ||
        fatal "luksFormat failed"
}

clean() { tr -d '\r' <"$1"; }
val() { clean "$1" | sed -n "s/^RESULT $2=//p" | tail -n 1; }

pass() { echo "PASS $*" | tee "$RES/$1"; }
fail() { echo "FAIL $*" | tee "$RES/$1"; }

# fresh LOG PHASE: root is a fresh writable snapshot of root-blank, nothing is
# nested in it, the top level holds exactly what it should, persist is intact.
BAD=
fresh() {
    local l=$1 p=$2 e
    BAD=
    [ "$(val "$l" "$p.top_mounted")" = 1 ] || BAD+=" top-level-not-mountable"
    [ "$(val "$l" "$p.root_is_subvol")" = 1 ] || BAD+=" root-not-a-subvolume"
    [ "$(val "$l" "$p.root_mounted")" = 1 ] || BAD+=" root-not-mountable"
    [ "$(val "$l" "$p.root_ro")" = ro=false ] || BAD+=" root-$(val "$l" "$p.root_ro")"
    [ "$(val "$l" "$p.root_blank_marker")" = 1 ] || BAD+=" no-blank-marker"
    [ "$(val "$l" "$p.root_stale_marker")" = 0 ] || BAD+=" stale-content"
    [ -n "$(val "$l" "$p.root_tree")" ] && [ "$(val "$l" "$p.root_tree")" = "$(val "$l" "$p.blank_tree")" ] ||
        BAD+=" root-differs-from-blank"
    [ "$(val "$l" "$p.nested")" = 0 ] || BAD+=" nested=$(val "$l" "$p.nested")"
    [ "$(val "$l" "$p.top_subvols")" = "nix,persist,root,root-blank," ] ||
        BAD+=" top-subvolumes=$(val "$l" "$p.top_subvols")"
    for e in $(val "$l" "$p.top_entries" | tr ',' ' '); do
        case "$e" in nix|persist|root|root-blank|rollback.log) ;; *) BAD+=" leftover:$e" ;; esac
    done
    [ "$(val "$l" "$p.persist")" = persist-data-42 ] || BAD+=" persist-changed"
    [ -z "$BAD" ]
}

# valid_root LOG PHASE: a root subvolume exists, mounts, and is either the old
# root or a snapshot of the blank.
valid_root() {
    local l=$1 p=$2
    [ "$(val "$l" "$p.root_is_subvol")" = 1 ] && [ "$(val "$l" "$p.root_mounted")" = 1 ] &&
        { [ "$(val "$l" "$p.root_blank_marker")" = 1 ] || [ "$(val "$l" "$p.root_stale_marker")" = 1 ]; }
}

# Wait (inotify, via tail -f) until the serial log shows a line matching $2.
wait_line() { # serial pattern qemu-pid timeout
    timeout "$4" grep -q -m 1 "$2" < <(tail -F -n +1 --pid="$3" "$1" 2>/dev/null)
}

now() { date +%s.%N; }
secs() { awk "BEGIN { printf \"%.2f\", $1 }"; }

# run "$@" in the background, at most $JOBS at a time
spawn() {
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    "$@" &
}

# power_cuts T: the power-cut loop of both suites. $CUTS instants over 0..T seconds, denser
# early on (d = T * (i/(N-1))^2: the snapshot, the swap and its commit, still reaching the end
# of the deletion), then $REFINE more between the last cut that found the old root and the
# first that found the fresh one. The suite's `sc_cut INDEX DELAY` does one cut and writes
# $RES/power-cut-NN (PASS/FAIL), $RES/power-cut-NN.phase ("DELAY PHASE") and, when the next
# boot found no valid root, $RES/power-cut-NN.noroot. Prints the totals and sets TRIED and
# NOROOT.
power_cuts() {
    local T=$1 i k d lo hi
    log "power cuts: $CUTS instants over 0..${T}s (denser early on)"
    for ((i = 0; i < CUTS; i++)); do
        d=$(awk -v T="$T" -v i=$i -v n="$CUTS" 'BEGIN { x = (n > 1) ? i / (n - 1) : 0; printf "%.3f", T * x * x }')
        spawn sc_cut "$i" "$d"
    done
    wait
    if [ "$REFINE" -gt 0 ]; then
        lo=$(cat "$RES"/*.phase 2>/dev/null | awk '$2 ~ /^(before-snapshot|snapshot-not-swapped)$/ && $1 > m { m = $1 } END { print m + 0 }')
        hi=$(cat "$RES"/*.phase 2>/dev/null | awk -v T="$T" 'BEGIN { m = T } $2 ~ /^(swapped-deleting|after-deletion)$/ && $1 < m { m = $1 } END { print m }')
        log "power cuts: $REFINE more between ${lo}s (old root) and ${hi}s (fresh root)"
        for ((k = 1; k <= REFINE; k++)); do
            d=$(awk -v lo="$lo" -v hi="$hi" -v k=$k -v n="$REFINE" 'BEGIN { printf "%.3f", lo + (hi - lo) * k / (n + 1) }')
            spawn sc_cut $((CUTS + k - 1)) "$d"
        done
        wait
    fi
    echo "power cuts by where they fell: $(cat "$RES"/*.phase 2>/dev/null | awk '{ n[$2]++ } END { for (p in n) printf "%s %d, ", p, n[p] }' | sed 's/, $//')"
    TRIED=$(ls "$RES" | grep -c '^power-cut-[0-9]*$')
    NOROOT=$(ls "$RES" | grep -c '\.noroot$')
    echo "power cuts: $TRIED tried, $NOROOT found no valid root"
}
