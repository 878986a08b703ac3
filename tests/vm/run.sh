#!/usr/bin/env bash
# Stage-1 boot test of btrfs-rollback: QEMU (TCG), Debian's kernel, LUKS2, an
# initramfs whose /init does what NixOS's scripted stage 1 does, and power cuts.
#
#   tests/vm/run.sh --stage1 systemd [ARGS...]   the systemd stage-1 suite instead:
#                    tests/vm/systemd/run.sh ARGS... (see its --help)
#   tests/vm/run.sh [--stage1 scripted] [--power-cuts N] [--refine M] [--nested N] [--jobs J] [--keep] [--skip-power-cuts]
#
#   --power-cuts N   number of SIGKILL instants over the rollback (default 24)
#   --refine M       then M more between the last cut that found the old root and
#                    the first that found the fresh one (default 6)
#   --nested N       nested subvolumes under root for the power-cut image (default 300)
#   --jobs J         VMs run at the same time (default: number of cores, at most 2)
#   --keep           keep every disk image (default: only those of failed scenarios)
#
# Environment:
#   BTRFS_ROLLBACK_BIN=path   put this program in the initramfs instead of
#                             building the crate (e.g. tests/vm/standin/naive-snippet.sh)
#
# /init runs the NixOS module's own hook, rendered from nix/module.nix (tests/vm/render-hook.sh,
# with nix-instantiate against the nixpkgs of scripts/nixpkgs.sh; without one the suite skips,
# and fails under CI=true).
#
# Downloads and the unpacked kernel are cached in target/vm-cache/; the
# initramfs, disk images and serial logs of the last run are in target/vm/.
# Prints PASS/FAIL per scenario and a last line "N passed, N failed"; exits
# non-zero on any failure.
set -uo pipefail

# --stage1 systemd|scripted, anywhere on the command line
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --stage1)
            case "${2:-}" in
                systemd) shift 2; exec "$(dirname "$0")/systemd/run.sh" "${args[@]}" "$@" ;;
                scripted) shift 2 ;;
                *) echo "--stage1 takes systemd or scripted" >&2; exit 2 ;;
            esac ;;
        *) args+=("$1"); shift ;;
    esac
done
set -- "${args[@]}"

CUTS=24
REFINE=6
NESTED=300
KEEP=0
SKIP_CUTS=0
JOBS=$(nproc 2>/dev/null || echo 1)
[ "$JOBS" -gt 2 ] && JOBS=2
while [ $# -gt 0 ]; do
    case "$1" in
        --power-cuts) CUTS=$2; shift ;;
        --refine) REFINE=$2; shift ;;
        --nested) NESTED=$2; shift ;;
        --jobs|-j) JOBS=$2; shift ;;
        --keep) KEEP=1 ;;
        --skip-power-cuts) SKIP_CUTS=1 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=$REPO/target/vm-cache
WORK=$REPO/target/vm
LOGS=$WORK/logs
IMGS=$WORK/images
RES=$WORK/results
T0=$(date +%s)
# shellcheck source=tests/vm/lib.sh
. "$HERE/lib.sh"

# ---------------------------------------------------------------- host tools
ensure_tools() {
    local need=()
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    command -v cryptsetup >/dev/null || need+=(cryptsetup-bin)
    { command -v btrfs && command -v mkfs.btrfs; } >/dev/null || need+=(btrfs-progs)
    command -v depmod >/dev/null || need+=(kmod)
    command -v cpio >/dev/null || need+=(cpio)
    command -v xz >/dev/null || need+=(xz-utils)
    command -v python3 >/dev/null || need+=(python3)
    command -v nix-instantiate >/dev/null || need+=(nix-bin)
    command -v zstd >/dev/null || need+=(zstd)
    if ! BB=$(command -v busybox) || ! is_static "$BB"; then
        need+=(busybox-static)
    fi
    if [ ${#need[@]} -gt 0 ]; then
        log "installing host tools: ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1 ||
            { apt-get update >>"$WORK/apt.log" 2>&1 &&
              apt-get install -y --no-install-recommends "${need[@]}" >>"$WORK/apt.log" 2>&1; } ||
            fatal "apt-get install ${need[*]} failed (see $WORK/apt.log)"
    fi
    BB=$(command -v busybox)
    is_static "$BB" || fatal "$BB is not static (install busybox-static)"
}

# ---------------------------------------------------------------- kernel
fetch_kernel() {
    mkdir -p "$CACHE/kernel"
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        pkg=$(ls "$CACHE/kernel" 2>/dev/null | sed -n 's/^\(linux-image-[^_]*\)_.*\.deb$/\1/p' | sort -V | tail -n 1)
    fi
    if [ -z "$pkg" ]; then
        apt-get update >"$WORK/apt.log" 2>&1
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    fi
    [ -n "$pkg" ] || fatal "cannot resolve linux-image-amd64"
    if ! ls "$CACHE/kernel/${pkg}"_*.deb >/dev/null 2>&1; then
        log "downloading $pkg"
        (cd "$CACHE/kernel" && apt-get download "$pkg") >"$WORK/download.log" 2>&1 ||
            fatal "apt-get download $pkg failed (see $WORK/download.log)"
    fi
    local deb
    deb=$(ls "$CACHE/kernel/${pkg}"_*.deb | sort -V | tail -n 1)
    KROOT=$CACHE/kernel/$(basename "$deb" .deb)
    if [ ! -e "$KROOT/.done" ]; then
        log "unpacking $(basename "$deb")"
        rm -rf "$KROOT" && mkdir -p "$KROOT"
        dpkg-deb -x "$deb" "$KROOT" || fatal "dpkg-deb -x failed"
        KVER=$(ls "$KROOT/lib/modules")
        depmod -b "$KROOT" "$KVER" || fatal "depmod failed"
        # Boot the uncompressed ELF vmlinux (PVH entry) when it can be cut out
        # of the bzImage: saves the decompression under emulation.
        local vmlinuz=$KROOT/boot/vmlinuz-$KVER off
        off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -n 1 | cut -d: -f1)
        if [ -n "$off" ]; then
            tail -c +$((off + 1)) "$vmlinuz" | xz -dc >"$KROOT/vmlinux" 2>/dev/null
            [ "$(head -c 4 "$KROOT/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] || rm -f "$KROOT/vmlinux"
        fi
        touch "$KROOT/.done"
    fi
    KVER=$(ls "$KROOT/lib/modules")
    if [ -s "$KROOT/vmlinux" ] && [ "${RB_KERNEL:-vmlinux}" = vmlinux ]; then
        KERNEL=$KROOT/vmlinux
    else
        KERNEL=$KROOT/boot/vmlinuz-$KVER
    fi
    log "kernel $KVER ($(basename "$KERNEL"))"
}

# ---------------------------------------------------------------- initramfs
copy_with_libs() { # host-binary dest-in-initramfs
    local src=$1 dst=$2 lib
    install -D -m 755 "$src" "$IR$dst"
    for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*') /lib/x86_64-linux-gnu/libgcc_s.so.1; do
        [ -e "$IR$lib" ] && continue
        [ -e "$lib" ] || continue
        install -D -m 755 "$(readlink -f "$lib")" "$IR$lib"
    done
}

build_initramfs() {
    IR=$WORK/initramfs
    rm -rf "$IR"
    mkdir -p "$IR"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,mnt-top,mnt-root}
    install -m 755 "$BB" "$IR/bin/busybox"
    local a
    for a in $("$BB" --list-full); do
        [ "$a" = bin/busybox ] && continue
        mkdir -p "$IR/$(dirname "$a")"
        ln -sf /bin/busybox "$IR/$a"
    done
    rm -f "$IR/bin/sh" && ln -s busybox "$IR/bin/sh"
    for a in cryptsetup btrfs mkfs.btrfs; do
        rm -f "$IR/sbin/$a" "$IR/bin/$a" "$IR/usr/bin/$a" "$IR/usr/sbin/$a"
        copy_with_libs "$(command -v $a)" "/sbin/$a"
    done
    rm -f "$IR"/{bin,sbin,usr/bin,usr/sbin}/btrfs-rollback
    install -m 755 "$BIN" "$IR/bin/btrfs-rollback"
    install -m 755 "$HERE/init" "$IR/init"
    install -m 644 "$WORK/btrfs-rollback-hook" "$IR/etc/btrfs-rollback-hook"
    install -m 644 "$HERE/guest.sh" "$IR/guest.sh"
    mknod "$IR/dev/console" c 5 1 2>/dev/null
    # kernel modules, in dependency order
    local mods="virtio_pci virtio_blk dm_mod dm_crypt cryptd aesni_intel xts algif_skcipher af_alg crc32c_intel btrfs"
    local m f
    : >"$IR/etc/modules.list"
    for m in $mods; do
        for f in $(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}'); do
            f=${f#"$KROOT"}
            grep -qxF "$f" "$IR/etc/modules.list" && continue
            install -D -m 644 "$KROOT$f" "$IR$f"
            echo "$f" >>"$IR/etc/modules.list"
        done
    done
    [ -s "$WORK/cryptroot.key" ] || head -c 64 /dev/urandom >"$WORK/cryptroot.key"
    install -m 400 "$WORK/cryptroot.key" "$IR/etc/cryptroot.key"
    (cd "$IR" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$WORK/initrd.cpio" ||
        fatal "cpio failed"
    INITRD=$WORK/initrd.cpio
    log "initramfs $(du -h "$INITRD" | cut -f1), $(wc -l <"$IR/etc/modules.list") modules"
}

# ---------------------------------------------------------------- the module's hook
# /init runs the module's own postResumeCommands snippet (tests/vm/render-hook.sh), so the
# command line is the module's. Without a nixpkgs to render it from, the suite cannot run:
# outside CI it says why and skips; with CI=true that is a failure.
render_hook() {
    local why
    if ! why=$("$HERE/render-hook.sh" "$WORK/btrfs-rollback-hook" 2>&1 >/dev/null); then
        if [ "${CI:-}" = true ]; then
            echo "FAIL scripted stage-1 suite cannot run: rendering the module's hook failed: $why"
            echo "0 passed, 1 failed"
            exit 2
        fi
        echo "SKIP scripted stage-1 suite: rendering the module's hook failed: $why (with CI=true this is a failure)"
        exit 0
    fi
}

# ---------------------------------------------------------------- VM helpers
# no_timer_check: on a loaded host, TCG is too slow for the kernel's IO-APIC timer check, which
# then panics before /init ("IO-APIC + timer doesn't work"); the check tests the emulator.
qemu_args() { # img serial-log kernel-args...: sets QARGS
    local img=$1 serial=$2
    shift 2
    QARGS=(-accel tcg -cpu max -m 512 -smp 1 -nodefaults -no-user-config -display none \
        -monitor none -no-reboot -kernel "$KERNEL" -initrd "$INITRD" \
        -serial "file:$serial" \
        -drive "file=$img,format=raw,if=virtio,cache=writethrough" \
        -append "console=ttyS0 panic=-1 no_timer_check quiet $*")
}

boot() { # img serial-log kernel-args...: a whole boot, up to power-off
    local img=$1 serial=$2
    shift 2
    rm -f "$serial"
    local QARGS
    qemu_args "$img" "$serial" "$@"
    timeout -s KILL 600 qemu-system-x86_64 "${QARGS[@]}" </dev/null >"$serial.qemu" 2>&1 &
    local pid=$!
    echo $pid >>"$WORK/pids"
    wait $pid
}

# ---------------------------------------------------------------- scenarios
# Each boot writes one report (tests/vm/guest.sh); `verdict LOG CHECK...` (tests/vm/lib.sh)
# judges it with tests/vm/report.py, where the checks are.
sc_setup() { # name layout image
    local name=$1 layout=$2 img=$3 l=$LOGS/$1.log s=$(date +%s)
    new_disk "$img"
    boot "$img" "$l" rb.scenario=setup rb.layout="$layout" rb.nested="$NESTED"
    local want=5
    [ "$layout" = big ] && want=$((5 + NESTED))
    if verdict "$l" setup:$want; then
        pass "$name" "(layout $layout:$SAID; $(($(date +%s) - s))s)"
    else
        fail "$name" "(setup did not build the layout:$SAID; see $l)"
    fi
}

sc_rollback() {
    local img=$IMGS/rollback.img l=$LOGS/rollback.log v=$LOGS/verify.log s=$(date +%s)
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot "$img" "$l" rb.scenario=run
    if verdict "$l" rc:0 fresh:post logged:post kmsg:post; then pass rollback "(${SAID# }; $(($(date +%s) - s))s)"
    else fail rollback "(${SAID# }; see $l)"; fi
    s=$(date +%s)
    boot "$img" "$v" rb.scenario=report
    if verdict "$v" fresh:post logged:post; then pass verify "(next boot:$SAID; $(($(date +%s) - s))s)"
    else fail verify "(${SAID# }; see $v)"; fi
}

sc_missing_blank() {
    local img=$IMGS/missing-blank.img l=$LOGS/missing-blank.log s=$(date +%s) why= msg
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot "$img" "$l" rb.scenario=run rb.preop=delblank
    verdict "$l" rc:1 untouched:post || why+="$SAID"
    # the binary's own words on the console, between the markers
    msg=$(clean "$l" | sed -n '/^RB-START/,/^RB-END/p' | grep -v '^RB-' | grep -v '^\[ *[0-9.]*\]' |
        grep -i 'blank' | grep -i -E 'error|not exist|missing|not found|no such' | head -n 1)
    [ -n "$msg" ] || why+=" no-message-naming-the-blank-on-the-console"
    # and the module's own words after it (its hook's failure message)
    clean "$l" | grep -q '^btrfs-rollback: ROOT NOT ROLLED BACK (exit status 1): ' ||
        why+=" no-ROOT-NOT-ROLLED-BACK-message-from-the-module's-hook"
    if [ -z "$why" ]; then pass missing-blank "(rc 1, root untouched; console: \"$msg\"; $(($(date +%s) - s))s)"
    else fail missing-blank "($why; see $l)"; fi
}

sc_late() {
    local img=$IMGS/late.img l=$LOGS/late-device.log s=$(date +%s) why=
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot "$img" "$l" rb.scenario=late rb.late=3
    clean "$l" | grep -q '^RB-START dev_present=0' || why+=" device-was-already-there(test-bug)"
    clean "$l" | grep -q '^RB-LATE-UNLOCKED' || why+=" late-unlock-failed"
    verdict "$l" rc:0 fresh:post || why+="$SAID"
    if [ -z "$why" ]; then pass late-device "(binary waited for /dev/mapper/cryptroot unlocked 3s later; $(($(date +%s) - s))s)"
    else fail late-device "($why; see $l)"; fi
}

sc_negative() {
    local img=$IMGS/negative.img l=$LOGS/negative-control.log s=$(date +%s)
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot "$img" "$l" rb.scenario=report
    if ! verdict "$l" mounted:post; then
        fail negative-control "(verify boot did not get as far as mounting root:$SAID; see $l)"
    elif verdict "$l" fresh:post; then
        fail negative-control "(verify without a rollback said root is fresh: the checks are blind; see $l)"
    else
        pass negative-control "(verify without a rollback failed as it must:$SAID; $(($(date +%s) - s))s)"
    fi
}

# An uncut rollback of the big image: how long it takes, from the marker /init
# prints just before starting btrfs-rollback to the one it prints after.
sc_cut_baseline() {
    local img=$IMGS/cut-baseline.img l=$LOGS/cut-baseline.log s=$(date +%s) why= pid t1 t2
    cp --sparse=always "$IMGS/base-big.img" "$img"
    rm -f "$l"
    local QARGS
    qemu_args "$img" "$l" rb.scenario=run
    qemu-system-x86_64 "${QARGS[@]}" </dev/null >"$l.qemu" 2>&1 &
    pid=$!
    echo $pid >>"$WORK/pids"
    touch "$l"
    wait_line "$l" '^RB-START' $pid 200 && t1=$(now)
    wait_line "$l" '^RB-END' $pid 600 && t2=$(now)
    ( sleep 300; kill -9 $pid 2>/dev/null ) &
    local guard=$!
    wait $pid
    kill $guard 2>/dev/null
    [ -n "${t1:-}" ] && [ -n "${t2:-}" ] || why+=" markers-not-seen"
    verdict "$l" rc:0 fresh:post || why+="$SAID"
    if [ -z "$why" ]; then
        secs "$t2 - $t1" >"$WORK/cut-duration"
        pass cut-baseline "(uncut rollback of root with $((NESTED + 5)) nested subvolumes: $(cat "$WORK/cut-duration")s from start to exit; boot $(($(date +%s) - s))s)"
    else
        fail cut-baseline "($why; see $l)"
    fi
}

sc_cut() { # index delay
    local i=$1 d=$2 name img l c pid state why= t1
    name=$(printf 'power-cut-%02d' "$i")
    exec 2>>"$LOGS/$name.stderr" # bash's "Killed" notices
    img=$IMGS/$name.img l=$LOGS/$name.log c=$LOGS/$name-after.log
    cp --sparse=always "$IMGS/base-big.img" "$img"
    rm -f "$l"
    local QARGS
    qemu_args "$img" "$l" rb.scenario=run
    qemu-system-x86_64 "${QARGS[@]}" </dev/null >"$l.qemu" 2>&1 &
    pid=$!
    echo $pid >>"$WORK/pids"
    touch "$l"
    if wait_line "$l" '^RB-START' $pid 200; then
        t1=$(now)
        sleep "$d"
        kill -9 $pid 2>/dev/null
        state="cut $(secs "$(now) - $t1")s after start"
        clean "$l" | grep -q '^RB-END' && state+=" (after the binary had exited)"
    else
        kill -9 $pid 2>/dev/null
        state="no start marker"
        why+=" the-cut-boot-never-started-the-binary"
    fi
    wait $pid 2>/dev/null
    boot "$img" "$c" rb.scenario=checkrun
    where_cut "$name" "$c" "$d"
    state+="$WHERE" why+="$NOROOT_WHY"
    verdict "$c" rc:0 || why+=" next-rollback:$SAID"
    verdict "$c" fresh:post || why+=" not-converged:$SAID"
    if [ -z "$why" ]; then pass "$name" "(delay ${d}s: $state; next rollback converged)"
    else fail "$name" "(delay ${d}s: $state;$why; see $c)"; fi
    if [ -z "$why" ] && [ "$KEEP" = 0 ]; then rm -f "$img"; fi
}

# ---------------------------------------------------------------- main
mkdir -p "$WORK" "$CACHE"
: >"$WORK/pids"
# On ^C or kill: stop the VMs this run started (by pid; timeout(1) puts them
# in their own process groups).
cleanup() {
    local p
    for p in $(cat "$WORK/pids" 2>/dev/null); do kill -TERM "$p" 2>/dev/null; done
}
trap 'cleanup; exit 130' INT TERM
rm -rf "$LOGS" "$IMGS" "$RES" "$WORK/cut-duration" # a stale duration would run cuts without a baseline
mkdir -p "$LOGS" "$IMGS" "$RES"
ensure_tools
build_binary
log "rendering the scripted stage 1's rollback hook from nix/module.nix"
render_hook
fetch_kernel
build_initramfs
log "running VMs, $JOBS at a time; serial logs in $LOGS"

big_pid=
if [ "$SKIP_CUTS" = 0 ]; then
    spawn sc_setup setup-big big "$IMGS/base-big.img"
    big_pid=$!
fi
spawn sc_setup setup normal "$IMGS/base-normal.img"
wait $!
if grep -qs '^PASS' "$RES/setup"; then
    spawn sc_rollback
    spawn sc_missing_blank
    spawn sc_late
    spawn sc_negative
fi
if [ -n "$big_pid" ]; then
    wait "$big_pid"
    grep -qs '^PASS' "$RES/setup-big" && spawn sc_cut_baseline
fi
wait
if [ "$SKIP_CUTS" = 0 ] && [ -s "$WORK/cut-duration" ]; then
    power_cuts "$(cat "$WORK/cut-duration")"
    echo "$TRIED $NOROOT" >"$WORK/power-cut-count"
fi

if [ "$KEEP" = 0 ]; then
    # keep the images of failed scenarios (and the bases) for debugging
    for f in rollback:rollback missing-blank:missing-blank late-device:late negative-control:negative cut-baseline:cut-baseline; do
        grep -qs '^PASS' "$RES/${f%%:*}" && rm -f "$IMGS/${f#*:}.img"
    done
fi
passed=$(cat "$RES"/* 2>/dev/null | grep -c '^PASS')
failed=$(cat "$RES"/* 2>/dev/null | grep -c '^FAIL')
log "done"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
