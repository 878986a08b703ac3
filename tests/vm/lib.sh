# shellcheck shell=bash
# Helpers shared by the stage-1 VM suites (tests/vm/run.sh, tests/vm/systemd/run.sh), sourced
# before anything else. Both take the same options (parse_options), run the same schedule
# (run_scenarios) and end with the same summary line.
#
# A suite sets SUITE (scripted|systemd), CACHE, WORK (scratch), LOGS, IMGS, RES (one result
# file per scenario), T0 (start time), MIN_CUTS, its defaults of CUTS and REFINE, and what
# marks the rollback on the console: START_RE, FINISH_RE, START_WAIT (seconds to wait for
# START_RE), START_NAME ("cut 0.5s after START_NAME") and ROLLBACK_NAME ("binary", "unit").
# It defines qemu_args (sets QARGS), sc_setup, normal_scenarios, sc_cut_baseline and sc_cut.
# BTRFS_ROLLBACK_BIN comes from the environment.

log() { echo "[$(($(date +%s) - T0))s] $*"; }
fatal() { echo "FATAL: $*" >&2; echo "0 passed, 1 failed"; exit 2; }

# ---------------------------------------------------------------- options
VMLIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() { # cuts refine: the suite's defaults
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"
    cat <<EOF

Options (the same for both suites):
  --stage1 scripted|systemd  the suite to run (tests/vm/run.sh, tests/vm/systemd/run.sh);
                     the other one's runner takes the rest of the command line
  --power-cuts N     SIGKILL instants over the rollback (default $1)
  --refine M         then M more between the last cut that found the old root and the
                     first that found the fresh one (default $2)
  --nested N         nested subvolumes under root for the power-cut image (default 300)
  --jobs J, -j J     VMs run at the same time (default: number of cores, at most 2)
  --keep             keep every disk image (default: only those of failed scenarios
                     and the post-setup bases)
  --skip-power-cuts  the scenarios only: no setup-big, cut-baseline or power cuts
  --only-power-cuts  only setup-big, cut-baseline and the power cuts
  -h, --help         this text
EOF
}

# number OPTION VALUE: VALUE, when it is a whole number
number() {
    [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "$1 takes a whole number, not '${2:-}' (see --help)" >&2; return 2; }
    echo "$2"
}

# parse_options ARGS...: sets CUTS, REFINE (their defaults are the suite's), NESTED, JOBS, KEEP,
# SKIP_CUTS and ONLY_CUTS; exits 2 on a wrong argument. --stage1 anywhere on the command line
# names the suite: when it is not this one, the other suite's runner replaces this process
# (scripts/test.sh runs `tests/vm/run.sh --stage1 systemd`).
# shellcheck disable=SC2034 # NESTED is read by the suites' setup boots
parse_options() {
    local args=() want=$SUITE cuts0=$CUTS refine0=$REFINE
    while [ $# -gt 0 ]; do
        case "$1" in
            --stage1)
                case "${2:-}" in
                    scripted|systemd) want=$2; shift ;;
                    *) echo "--stage1 takes systemd or scripted" >&2; exit 2 ;;
                esac ;;
            *) args+=("$1") ;;
        esac
        shift
    done
    case "$want" in
        "$SUITE") ;;
        scripted) exec "$VMLIB/run.sh" "${args[@]}" ;;
        systemd) exec "$VMLIB/systemd/run.sh" "${args[@]}" ;;
    esac
    NESTED=300 KEEP=0 SKIP_CUTS=0 ONLY_CUTS=0
    JOBS=$(nproc 2>/dev/null || echo 1)
    [ "$JOBS" -gt 2 ] && JOBS=2
    set -- "${args[@]}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --power-cuts) CUTS=$(number "$1" "${2:-}") || exit 2; shift ;;
            --refine) REFINE=$(number "$1" "${2:-}") || exit 2; shift ;;
            --nested) NESTED=$(number "$1" "${2:-}") || exit 2; shift ;;
            --jobs|-j) JOBS=$(number "$1" "${2:-}") || exit 2; shift ;;
            --keep) KEEP=1 ;;
            --skip-power-cuts) SKIP_CUTS=1 ;;
            --only-power-cuts) ONLY_CUTS=1 ;;
            -h|--help) usage "$cuts0" "$refine0"; exit 0 ;;
            *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
        esac
        shift
    done
    [ "$JOBS" -ge 1 ] || { echo "--jobs takes at least 1" >&2; exit 2; }
    [ "$SKIP_CUTS$ONLY_CUTS" != 11 ] ||
        { echo "--skip-power-cuts and --only-power-cuts leave nothing to run" >&2; exit 2; }
}

# ---------------------------------------------------------------- the run
# cannot_run WHY: what the suite cannot do without. Outside CI it says why and skips; with
# CI=true that is a failure (a suite never passes without running).
cannot_run() {
    if [ "${CI:-}" = true ]; then
        echo "FAIL $SUITE stage-1 suite cannot run: $*"
        echo "0 passed, 1 failed"
        exit 2
    fi
    echo "SKIP $SUITE stage-1 suite: $* (with CI=true this is a failure)"
    exit 0
}

# On ^C or kill: stop the VMs this run started (by pid; timeout(1) puts them in their own
# process groups).
stop_vms() {
    local p
    for p in $(cat "$WORK/pids" 2>/dev/null); do kill -TERM "$p" 2>/dev/null; done
}

# begin_run: empty LOGS, IMGS and RES for this run
begin_run() {
    mkdir -p "$WORK" "$CACHE"
    : >"$WORK/pids"
    trap 'stop_vms; exit 130' INT TERM
    rm -rf "$LOGS" "$IMGS" "$RES" "$WORK/cut-duration" # a stale duration would run cuts without a baseline
    mkdir -p "$LOGS" "$IMGS" "$RES"
}

# apt_install PKG...: install the host tools the suite found missing (none: nothing to do)
apt_install() {
    [ $# -gt 0 ] || return 0
    log "installing host tools: $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$@" >"$WORK/apt.log" 2>&1 ||
        { apt-get update >>"$WORK/apt.log" 2>&1 &&
          apt-get install -y --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1; } ||
        fatal "apt-get install $* failed (see $WORK/apt.log)"
}

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

# conclude NAME IMG WHY SAID SEE: with WHY empty, the scenario's PASS line "(SAID)" and, unless
# --keep, its image IMG goes (none when IMG is empty); else its FAIL line "(WHY; see SEE)".
conclude() {
    local name=$1 img=$2 why=$3 said=$4 see=$5
    if [ -z "$why" ]; then
        pass "$name" "($said)"
        [ "$KEEP" = 1 ] || [ -z "$img" ] || rm -f "$img"
    else
        fail "$name" "($why; see $see)"
    fi
}

# verdict LOG CHECK...: tests/vm/report.py judges the boot's report (the checks are listed
# there). Passes with its summary in SAID; fails with what failed in SAID.
verdict() {
    SAID=$(python3 "$VMLIB/report.py" "$@" 2>&1) && return 0
    [ -n "$SAID" ] || SAID=" report.py-failed"
    return 1
}

# Wait (inotify, via tail -f) until the serial log shows a line matching $2.
wait_line() { # serial pattern qemu-pid timeout
    timeout "$4" grep -q -m 1 "$2" < <(tail -F -n +1 --pid="$3" "$1" 2>/dev/null)
}

# ---------------------------------------------------------------- VMs
# vm_boot LOG: a whole boot with the suite's QARGS, up to power-off; killed after 600 s.
vm_boot() {
    timeout -s KILL 600 qemu-system-x86_64 "${QARGS[@]}" </dev/null >"$1.qemu" 2>&1 &
    local pid=$!
    echo $pid >>"$WORK/pids"
    wait $pid
}

# vm_start LOG: a boot with the suite's QARGS in the background; sets PID. qemu itself, not
# under timeout(1): a power cut's SIGKILL must reach qemu.
vm_start() {
    qemu-system-x86_64 "${QARGS[@]}" </dev/null >"$1.qemu" 2>&1 &
    PID=$!
    echo $PID >>"$WORK/pids"
    touch "$1"
}

now() { date +%s.%N; }
secs() { awk "BEGIN { printf \"%.2f\", $1 }"; }

# run "$@" in the background, at most $JOBS at a time
spawn() {
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    watched "$@" &
}

# watched SCENARIO ARGS...: run it, with a FAIL line in $RES until it ends, so that a scenario
# that dies before it says PASS or FAIL (an unset variable: the suites run under set -u) is
# counted as failed, never dropped from the count.
watched() {
    local mark="$RES/died.$BASHPID"
    echo "FAIL $* (died before it said PASS or FAIL; its error is in the output above)" >"$mark"
    "$@"
    rm -f "$mark"
}

# time_rollback LOG: a whole boot with the suite's QARGS (killed after 600 s) and how long its
# rollback took, from START_RE to FINISH_RE on the console: sets DURATION (seconds), or fails
# when either line was not seen.
time_rollback() {
    local l=$1 guard t1='' t2=''
    DURATION=
    vm_start "$l"
    ( sleep 600; kill -9 "$PID" 2>/dev/null ) &
    guard=$!
    wait_line "$l" "$START_RE" "$PID" "$START_WAIT" && t1=$(now)
    wait_line "$l" "$FINISH_RE" "$PID" 600 && t2=$(now)
    wait "$PID"
    kill $guard 2>/dev/null
    [ -n "$t1" ] && [ -n "$t2" ] || return 1
    # shellcheck disable=SC2034 # the suites' sc_cut_baseline
    DURATION=$(secs "$t2 - $t1")
}

# cut_power LOG DELAY: a boot with the suite's QARGS, cut (SIGKILL to qemu) DELAY seconds after
# START_RE on the console. Sets STATE, what the PASS/FAIL line says of the cut; fails when the
# rollback never started.
cut_power() {
    local l=$1 d=$2 t1 started=0
    vm_start "$l"
    if wait_line "$l" "$START_RE" "$PID" "$START_WAIT"; then
        t1=$(now)
        sleep "$d"
        kill -9 "$PID" 2>/dev/null
        STATE="cut $(secs "$(now) - $t1")s after $START_NAME"
        clean "$l" | grep -q "$FINISH_RE" && STATE+=" (after the $ROLLBACK_NAME had finished)"
        started=1
    else
        kill -9 "$PID" 2>/dev/null
        STATE="no $START_NAME line"
    fi
    wait "$PID" 2>/dev/null
    [ $started = 1 ]
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

# ---------------------------------------------------------------- the schedule
# run_scenarios: setup-big (unless --skip-power-cuts) and setup (unless --only-power-cuts) build
# the base images, two at a time; the suite's normal_scenarios then run on copies of setup's,
# sc_cut_baseline on a copy of setup-big's; then the power cuts over the baseline's duration.
# Fewer than MIN_CUTS cuts is a failure (power-cut-count).
run_scenarios() {
    local big_pid=
    log "running VMs, $JOBS at a time; serial logs in $LOGS"
    if [ "$SKIP_CUTS" = 0 ]; then
        spawn sc_setup setup-big big "$IMGS/base-big.img"
        big_pid=$!
    fi
    if [ "$ONLY_CUTS" = 0 ]; then
        spawn sc_setup setup normal "$IMGS/base-normal.img"
        wait $!
        grep -qs '^PASS' "$RES/setup" && normal_scenarios
    fi
    if [ -n "$big_pid" ]; then
        wait "$big_pid"
        grep -qs '^PASS' "$RES/setup-big" && spawn sc_cut_baseline
    fi
    wait
    if [ "$SKIP_CUTS" = 0 ] && [ -s "$WORK/cut-duration" ]; then
        power_cuts "$(cat "$WORK/cut-duration")"
        echo "$TRIED $NOROOT" >"$WORK/power-cut-count"
        [ "$TRIED" -ge "$MIN_CUTS" ] ||
            fail power-cut-count "(only $TRIED power cuts ran; at least $MIN_CUTS are required)"
    fi
}

# summary: the last line, "N passed, N failed"; fails on any failure, or when nothing passed
summary() {
    local passed failed
    passed=$(cat "$RES"/* 2>/dev/null | grep -c '^PASS')
    failed=$(cat "$RES"/* 2>/dev/null | grep -c '^FAIL')
    log "done"
    cat "$RES"/died.* 2>/dev/null
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ] && [ "$passed" -gt 0 ]
}
