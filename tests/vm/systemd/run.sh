#!/usr/bin/env bash
# Stage-1 boot test of btrfs-rollback under systemd in stage 1: QEMU (TCG), Debian trixie's
# kernel and systemd 257 in a dracut initrd, LUKS2 opened by systemd-cryptsetup from crypttab, a
# swap device for resume, and btrfs-rollback.service rendered from nix/module.nix.
#
#   tests/vm/run.sh --stage1 systemd [OPTIONS]   (or tests/vm/systemd/run.sh [OPTIONS])
#
# The same options as the scripted suite (parse_options in tests/vm/lib.sh; --help lists
# them); fewer than 10 power cuts in all is a failure here.
#
# Environment: BTRFS_ROLLBACK_BIN=path (a program to test instead of the crate's build, put at
# the unit's ExecStart path), DEBIAN_MIRROR (for the trixie chroot), RB_VM_WORK (the directory
# for this run's files instead of target/vm-systemd, to run two at once).
#
# Caches (chroot, base initrd) in target/vm-cache/systemd/; initrds, images, logs and results of
# the last run in target/vm-systemd/. Prints PASS/FAIL per scenario and "N passed, N failed";
# exits non-zero on any failure.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
VMDIR=$(cd "$HERE/.." && pwd)
# shellcheck source=tests/vm/lib.sh
. "$VMDIR/lib.sh"
SUITE=systemd CUTS=10 REFINE=2 MIN_CUTS=10
parse_options "$@"

REPO=$(cd "$HERE/../../.." && pwd)
CACHE=$REPO/target/vm-cache/systemd
WORK=${RB_VM_WORK:-$REPO/target/vm-systemd}
LOGS=$WORK/logs
IMGS=$WORK/images
RES=$WORK/results
T0=$(date +%s)
# The Starting/Finished lines systemd prints on the console for the unit (systemd.show_status=1;
# the unit name is in color).
START_RE='Starting .*btrfs-rollback\.service' FINISH_RE='Finished .*btrfs-rollback\.service'
START_WAIT=400 START_NAME=Starting ROLLBACK_NAME=unit

# The btrfs file system's UUID (mkfs.btrfs -U in the setup boot), for the by-uuid scenario, and
# one that no device has, for the device that never appears.
FSUUID=5f1e0c2a-7b3d-4e8f-9a61-2c4d6e8f0a1b
NOUUID=00000000-dead-4bad-8bad-000000000000

ensure_tools() {
    local need=()
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    command -v cryptsetup >/dev/null || need+=(cryptsetup-bin)
    command -v nix-instantiate >/dev/null || need+=(nix-bin)
    command -v cpio >/dev/null || need+=(cpio)
    command -v zstd >/dev/null || need+=(zstd)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v mkswap >/dev/null || need+=(util-linux)
    command -v python3 >/dev/null || need+=(python3)
    apt_install "${need[@]}"
}

# One initrd per variant of the unit: the dracut base, then an overlay archive (the kernel
# unpacks concatenated cpio archives in order, later files replacing earlier ones) with the
# rendered unit, the binary at its ExecStart path, the test's guest files, the key and fstab.
#   make_initrd NAME ON_FAILURE DEVICE ROOT_DEVICE
# NAME "none": no rollback unit at all (setup boots, the negative control). systemd.mask= on the
# kernel command line cannot mask a unit in /etc/systemd/system, where NixOS puts it.
make_initrd() {
    local name=$1 on_failure=$2 device=$3 rootdev=$4 d=$WORK/initrd-$1 exe
    rm -rf "$d" && mkdir -p "$d"
    local o=$d/overlay
    cp -a "$HERE/guest/." "$o/"
    if [ "$name" != none ]; then
        "$HERE/render-unit.sh" "$d/render" --on-failure "$on_failure" --device "$device" \
            >"$d/render.log" 2>&1 || { cat "$d/render.log"; return 1; }
        cp -a "$d/render/tree/." "$o/"
        exe=$(cat "$d/render/exec-start")
        install -D -m 755 "$BIN" "$o$exe"
        # NixOS also links it into the initrd's /bin (boot.initrd.systemd.extraBin).
        mkdir -p "$o/usr/bin" && ln -sf "$exe" "$o/usr/bin/btrfs-rollback"
        cp "$d/render/tree/etc/systemd/system/btrfs-rollback.service" "$WORK/btrfs-rollback-$name.service"
    fi
    install -m 644 "$VMDIR/guest.sh" "$o/rb/guest.sh"
    install -m 400 "$WORK/cryptroot.key" "$o/etc/cryptroot.key"
    # NixOS's initrd fstab (filesystems.nix, initrdFstab) has fileSystems."/" as "/" and hands it
    # to systemd-fstab-generator as SYSTEMD_SYSROOT_FSTAB, which Debian's systemd does not pass to
    # generators: the initrd's own /etc/fstab with the mount point under /sysroot makes the same
    # sysroot.mount (part of initrd-root-fs.target). btrfs gets no fsck (0 0), as in NixOS.
    echo "$rootdev /sysroot btrfs subvol=root 0 0" >"$o/etc/fstab"
    if [ "$name" = never ]; then
        # systemd waits 90 s for a device by default; 30 s for this one keeps the suite short
        # (not systemd.default_device_timeout_sec=: under load /dev/vda itself can take 20 s).
        local unit
        unit=$(cat "$d/render/device-unit")
        mkdir -p "$o/etc/systemd/system/$unit.d"
        printf '[Unit]\nJobRunningTimeoutSec=30\n' >"$o/etc/systemd/system/$unit.d/timeout.conf"
    fi
    (cd "$o" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) >"$d/overlay.cpio" || return 1
    cat "$BASE_INITRD" "$d/overlay.cpio" >"$WORK/initrd-$name.cpio"
}

new_swap() { # path: the resume device, a swap area without a hibernation image
    rm -f "$1"
    truncate -s 32M "$1"
    mkswap -q "$1" >/dev/null || fatal "mkswap failed"
}

# The swap area (the resume device) is shared by all VMs, read-only: resume only reads it.
# no_timer_check: on a loaded host, TCG is too slow for the kernel's IO-APIC timer check, which
# then panics before /init ("IO-APIC + timer doesn't work"); the check tests the emulator.
qemu_args() { # initrd img swap log kernel-args...: sets QARGS
    local initrd=$WORK/initrd-$1.cpio img=$2 swap=$3 l=$4
    shift 4
    QARGS=(-accel tcg -cpu max -m 768 -smp 1 -nodefaults -no-user-config -display none
        -monitor none -no-reboot -kernel "$KERNEL" -initrd "$initrd"
        -serial "file:$l" -serial "file:$l.report" -serial "file:$l.journal"
        -drive "file=$img,format=raw,if=virtio,cache=writethrough"
        -drive "file=$swap,format=raw,if=virtio,readonly=on"
        -append "console=ttyS0 panic=-1 no_timer_check quiet systemd.show_status=1 rd.udev.log_level=3 resume=/dev/vdb $*")
}

boot() { # initrd img log kernel-args...: a whole boot, up to power-off
    local initrd=$1 img=$2 l=$3 QARGS
    shift 3
    rm -f "$l" "$l.report" "$l.journal"
    qemu_args "$initrd" "$img" "$IMGS/swap.img" "$l" "$@"
    vm_boot "$l"
}

# judge LOG CHECKS...: the journal checks of judge.py; sets WHY to what failed
judge() {
    local l=$1
    shift
    JUDGED=
    WHY=$(python3 "$HERE/judge.py" "$l.report" "$@" 2>&1) || { [ -n "$WHY" ] || WHY=" judge-failed"; return 1; }
    JUDGED=$WHY
    WHY=
}

# ---------------------------------------------------------------- scenarios
sc_setup() { # name layout image
    local name=$1 layout=$2 img=$3 l=$LOGS/$1.log s=$(date +%s)
    new_disk "$img"
    boot none "$img" "$l" rb.scenario=setup rb.layout="$layout" rb.nested="$NESTED" rb.fsuuid=$FSUUID
    local want=5
    [ "$layout" = big ] && want=$((5 + NESTED))
    if verdict "$l.report" setup:$want; then
        pass "$name" "(layout $layout:$SAID; $(($(date +%s) - s))s)"
    else
        fail "$name" "(setup did not build the layout:$SAID; see $l*)"
    fi
}

# rollback_ok NAME VARIANT: a boot that must roll back and boot the fresh root
rollback_ok() {
    local name=$1 variant=$2 img=$IMGS/$1.img l=$LOGS/$1.log s=$(date +%s) why=
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot "$variant" "$img" "$l" rb.scenario=run
    verdict "$l.report" fresh:post logged:post reached:final sysroot:fresh || why+="$SAID"
    local said=$SAID
    judge "$l" order rollback-ran-ok in-journal || why+="$WHY"
    conclude "$name" "$img" "$why" "${said# };$JUDGED; $(($(date +%s) - s))s" "$l*"
}

sc_missing_blank() { # NAME VARIANT (continue|stop)
    local name=$1 variant=$2 img=$IMGS/$1.img l=$LOGS/$1.log s=$(date +%s) why= msg
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot "$variant" "$img" "$l" rb.scenario=run rb.preop=delblank
    # untouched: the old root whole (stale marker, 5 nested) and the blank gone, as before the boot
    if [ "$variant" = continue ]; then
        verdict "$l.report" preop untouched:post reached:final sysroot:old || why+="$SAID"
        judge "$l" rollback-failed-1 not-rolled-back:continue || why+="$WHY"
    else
        verdict "$l.report" preop untouched:post reached:emergency sysroot:none || why+="$SAID"
        judge "$l" rollback-failed-1 not-rolled-back:stop emergency || why+="$WHY"
    fi
    conclude "$name" "$img" "$why" "onFailure=$variant: root untouched;$JUDGED; $(($(date +%s) - s))s" "$l*"
}

# The rollback's device never appears (a wrong by-uuid name): the module must say so.
sc_never() {
    local name=device-never-appears img=$IMGS/never.img l=$LOGS/device-never-appears.log s=$(date +%s) why=
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot never "$img" "$l" rb.scenario=run
    verdict "$l.report" old-root:post reached:final || why+="$SAID"
    judge "$l" not-rolled-back-device:/dev/disk/by-uuid/$NOUUID || why+="$WHY"
    conclude "$name" "$img" "$why" "btrfs-rollback's device /dev/disk/by-uuid/$NOUUID never appeared;$JUDGED; $(($(date +%s) - s))s" "$l*"
}

sc_negative() {
    local img=$IMGS/negative.img l=$LOGS/negative-control.log s=$(date +%s) said='' why=
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot none "$img" "$l" rb.scenario=run
    if ! verdict "$l.report" mounted:post; then
        why="the boot did not get as far as mounting root:$SAID"
    elif verdict "$l.report" fresh:post; then
        why="a boot without the rollback said root is fresh: the checks are blind"
    elif said=$SAID && judge "$l" order; then
        why="a boot without the rollback passed the order check: it is blind"
    else
        said="a boot without the unit fails the checks as it must:$said$WHY; $(($(date +%s) - s))s"
    fi
    conclude negative-control "$img" "$why" "$said" "$l*"
}

sc_cut_baseline() {
    local img=$IMGS/cut-baseline.img l=$LOGS/cut-baseline.log s=$(date +%s) QARGS why=
    cp --sparse=always "$IMGS/base-big.img" "$img"
    rm -f "$l" "$l.report" "$l.journal"
    qemu_args continue "$img" "$IMGS/swap.img" "$l" rb.scenario=run
    time_rollback "$l" || why+=" start/finish-not-seen-on-the-console"
    verdict "$l.report" fresh:post || why+="$SAID"
    judge "$l" order rollback-ran-ok || why+="$WHY"
    [ -n "$why" ] || echo "$DURATION" >"$WORK/cut-duration"
    conclude cut-baseline "$img" "$why" "uncut rollback of root with $((NESTED + 5)) nested subvolumes: ${DURATION}s from Starting to Finished on the console; boot $(($(date +%s) - s))s" "$l*"
}

sc_cut() { # index delay
    local i=$1 d=$2 name img l c QARGS why=
    name=$(printf 'power-cut-%02d' "$i")
    exec 2>>"$LOGS/$name.stderr" # bash's "Killed" notices
    img=$IMGS/$name.img l=$LOGS/$name.log c=$LOGS/$name-after.log
    cp --sparse=always "$IMGS/base-big.img" "$img"
    rm -f "$l" "$l.report" "$l.journal"
    qemu_args continue "$img" "$IMGS/swap.img" "$l" rb.scenario=run
    cut_power "$l" "$d" || why+=" the-cut-boot-never-started-the-unit"
    boot continue "$img" "$c" rb.scenario=checkrun
    where_cut "$name" "$c.report" "$d"
    STATE+="$WHERE" why+="$NOROOT_WHY"
    verdict "$c.report" fresh:post sysroot:fresh || why+=" not-converged:$SAID"
    judge "$c" order rollback-ran-ok || why+="$WHY"
    conclude "$name" "$img" "${why:+delay ${d}s: $STATE;$why}" "delay ${d}s: $STATE; next boot's rollback converged" "$c*"
}

normal_scenarios() {
    spawn rollback_ok rollback continue
    spawn rollback_ok by-uuid byuuid
    spawn sc_missing_blank missing-blank-continue continue
    spawn sc_missing_blank missing-blank-stop stop
    spawn sc_never
    spawn sc_negative
}

# ---------------------------------------------------------------- main
[ "$(id -u)" = 0 ] || cannot_run "needs root (apt-get, debootstrap, chroot, cryptsetup luksFormat)"
why=$("$REPO/scripts/nixpkgs.sh" 2>&1 >/dev/null) ||
    cannot_run "no nixpkgs to render the unit from nix/module.nix: $why"
begin_run
ensure_tools
build_binary
log "trixie chroot, kernel and base initrd (cached in $CACHE)"
out=$("$HERE/initrd.sh" "$CACHE" 2>"$WORK/initrd.log") ||
    { tail -n 20 "$WORK/initrd.log"; fatal "building the systemd initrd failed (see $WORK/initrd.log)"; }
KERNEL=$(sed -n 's/^kernel //p' <<<"$out")
BASE_INITRD=$(sed -n 's/^initrd //p' <<<"$out")
log "kernel $(basename "$KERNEL"), base initrd $(du -h "$BASE_INITRD" | cut -f1)"
[ -s "$WORK/cryptroot.key" ] || head -c 64 /dev/urandom >"$WORK/cryptroot.key"
log "rendering btrfs-rollback.service from nix/module.nix (4 variants)"
make_initrd none - - /dev/mapper/cryptroot &&
    make_initrd continue continue /dev/mapper/cryptroot /dev/mapper/cryptroot &&
    make_initrd stop stop /dev/mapper/cryptroot /dev/mapper/cryptroot &&
    make_initrd byuuid continue /dev/disk/by-uuid/$FSUUID /dev/disk/by-uuid/$FSUUID &&
    make_initrd never continue /dev/disk/by-uuid/$NOUUID /dev/mapper/cryptroot ||
    fatal "rendering the unit failed (see $WORK/initrd-*/render.log)"
new_swap "$IMGS/swap.img"
log "serial logs: *.log console, *.log.report, *.log.journal"
run_scenarios
summary
