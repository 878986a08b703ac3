#!/usr/bin/env bash
# Stage-1 boot test of btrfs-rollback: QEMU (TCG), Debian's kernel, LUKS2, an
# initramfs whose /init does what NixOS's scripted stage 1 does, and power cuts.
#
#   tests/vm/run.sh [--stage1 scripted] [OPTIONS]
#   tests/vm/run.sh --stage1 systemd [OPTIONS]   the systemd stage-1 suite instead
#                                                (tests/vm/systemd/run.sh)
#
# Both suites take the same options (parse_options in tests/vm/lib.sh; --help lists them).
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

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/vm/lib.sh
. "$HERE/lib.sh"
SUITE=scripted CUTS=24 REFINE=6 MIN_CUTS=0
parse_options "$@"

REPO=$(cd "$HERE/../.." && pwd)
CACHE=$REPO/target/vm-cache
WORK=$REPO/target/vm
LOGS=$WORK/logs
IMGS=$WORK/images
RES=$WORK/results
T0=$(date +%s)
# The lines /init prints on the console just before starting btrfs-rollback and just after.
START_RE='^RB-START' FINISH_RE='^RB-END' START_WAIT=200 START_NAME=start ROLLBACK_NAME=binary

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
    apt_install "${need[@]}"
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
# outside CI it says why and skips; with CI=true that is a failure (cannot_run).
render_hook() {
    local why
    why=$("$HERE/render-hook.sh" "$WORK/btrfs-rollback-hook" 2>&1 >/dev/null) ||
        cannot_run "rendering the module's hook failed: $why"
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
    local img=$1 serial=$2 QARGS
    shift 2
    rm -f "$serial"
    qemu_args "$img" "$serial" "$@"
    vm_boot "$serial"
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
    local img=$IMGS/rollback.img l=$LOGS/rollback.log v=$LOGS/verify.log s=$(date +%s) why=
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot "$img" "$l" rb.scenario=run
    verdict "$l" rc:0 fresh:post logged:post kmsg:post || why=${SAID# }
    conclude rollback "" "$why" "${SAID# }; $(($(date +%s) - s))s" "$l"
    s=$(date +%s) why=
    boot "$img" "$v" rb.scenario=report
    verdict "$v" fresh:post logged:post || why=${SAID# }
    # the image of both boots goes with the second
    conclude verify "$img" "$why" "next boot:$SAID; $(($(date +%s) - s))s" "$v"
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
    conclude missing-blank "$img" "$why" "rc 1, root untouched; console: \"$msg\"; $(($(date +%s) - s))s" "$l"
}

sc_late() {
    local img=$IMGS/late.img l=$LOGS/late-device.log s=$(date +%s) why=
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot "$img" "$l" rb.scenario=late rb.late=3
    clean "$l" | grep -q '^RB-START dev_present=0' || why+=" device-was-already-there(test-bug)"
    clean "$l" | grep -q '^RB-LATE-UNLOCKED' || why+=" late-unlock-failed"
    verdict "$l" rc:0 fresh:post || why+="$SAID"
    conclude late-device "$img" "$why" "binary waited for /dev/mapper/cryptroot unlocked 3s later; $(($(date +%s) - s))s" "$l"
}

sc_negative() {
    local img=$IMGS/negative.img l=$LOGS/negative-control.log s=$(date +%s) said='' why=
    cp --sparse=always "$IMGS/base-normal.img" "$img"
    boot "$img" "$l" rb.scenario=report
    if ! verdict "$l" mounted:post; then
        why="verify boot did not get as far as mounting root:$SAID"
    elif verdict "$l" fresh:post; then
        why="verify without a rollback said root is fresh: the checks are blind"
    else
        said="verify without a rollback failed as it must:$SAID; $(($(date +%s) - s))s"
    fi
    conclude negative-control "$img" "$why" "$said" "$l"
}

# An uncut rollback of the big image: how long it takes, from the marker /init
# prints just before starting btrfs-rollback to the one it prints after.
sc_cut_baseline() {
    local img=$IMGS/cut-baseline.img l=$LOGS/cut-baseline.log s=$(date +%s) QARGS why=
    cp --sparse=always "$IMGS/base-big.img" "$img"
    rm -f "$l"
    qemu_args "$img" "$l" rb.scenario=run
    time_rollback "$l" || why+=" markers-not-seen"
    verdict "$l" rc:0 fresh:post || why+="$SAID"
    [ -n "$why" ] || echo "$DURATION" >"$WORK/cut-duration"
    conclude cut-baseline "$img" "$why" "uncut rollback of root with $((NESTED + 5)) nested subvolumes: ${DURATION}s from start to exit; boot $(($(date +%s) - s))s" "$l"
}

sc_cut() { # index delay
    local i=$1 d=$2 name img l c QARGS why=
    name=$(printf 'power-cut-%02d' "$i")
    exec 2>>"$LOGS/$name.stderr" # bash's "Killed" notices
    img=$IMGS/$name.img l=$LOGS/$name.log c=$LOGS/$name-after.log
    cp --sparse=always "$IMGS/base-big.img" "$img"
    rm -f "$l"
    qemu_args "$img" "$l" rb.scenario=run
    cut_power "$l" "$d" || why+=" the-cut-boot-never-started-the-binary"
    boot "$img" "$c" rb.scenario=checkrun
    where_cut "$name" "$c" "$d"
    STATE+="$WHERE" why+="$NOROOT_WHY"
    verdict "$c" rc:0 || why+=" next-rollback:$SAID"
    verdict "$c" fresh:post || why+=" not-converged:$SAID"
    conclude "$name" "$img" "${why:+delay ${d}s: $STATE;$why}" "delay ${d}s: $STATE; next rollback converged" "$c"
}

normal_scenarios() {
    spawn sc_rollback
    spawn sc_missing_blank
    spawn sc_late
    spawn sc_negative
}

# ---------------------------------------------------------------- main
begin_run
ensure_tools
build_binary
log "rendering the scripted stage 1's rollback hook from nix/module.nix"
render_hook
fetch_kernel
build_initramfs
run_scenarios
summary
