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

pass() { echo "PASS $*" | tee "$RES/$1"; }
fail() { echo "FAIL $*" | tee "$RES/$1"; }

# verdict LOG CHECK...: tests/vm/report.py judges the boot's report (the checks are listed
# there). Passes with its summary in SAID; fails with what failed in SAID.
VMLIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
verdict() {
    SAID=$(python3 "$VMLIB/report.py" "$@" 2>&1) && return 0
    [ -n "$SAID" ] || SAID=" report.py-failed"
    return 1
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

# where_cut NAME LOG DELAY: where the power cut NAME fell, read off the disk by the next boot
# (its "pre" report): sets WHERE (for the PASS/FAIL line) and, without a valid root, NOROOT_WHY;
# writes $RES/NAME.phase ("DELAY PHASE") and, without a valid root, $RES/NAME.noroot.
where_cut() {
    local name=$1 l=$2 d=$3 phase
    NOROOT_WHY=
    if verdict "$l" cut:pre; then WHERE=",$SAID"; else NOROOT_WHY=$SAID WHERE=; fi
    phase=$(sed -n 's/.*\[\([a-z-]*\)\]$/\1/p' <<<"$SAID")
    [ -n "$phase" ] || phase=no-root
    if [ "$phase" = no-root ]; then
        WHERE=" [no-root]"
        echo 1 >"$RES/$name.noroot"
        [ -n "$NOROOT_WHY" ] || NOROOT_WHY=" NO-VALID-ROOT-AFTER-CUT"
    fi
    echo "$d $phase" >"$RES/$name.phase"
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
