#!/usr/bin/env bash
# Build the base systemd initrd and fetch the kernel for the systemd stage-1 suite, from
# Debian trixie (systemd 257, systemd-cryptsetup, dracut, kernel 6.12) in a chroot.
#
#   tests/vm/systemd/initrd.sh CACHE_DIR
#
# Prints two lines on stdout: "kernel PATH" and "initrd PATH" (an uncompressed newc cpio, so
# the runner can append its own overlay archive to it). Everything else goes to stderr.
#
# The chroot (debootstrap --variant=minbase trixie + the packages below, ~3 min the first time)
# lives in CACHE_DIR/trixie and is reused; the initrd is rebuilt only when this script or the
# chroot's packages change. Needs root (debootstrap, chroot, mount); one run at a time (flock).
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

cache=$(mkdir -p "${1:?usage: initrd.sh CACHE_DIR}" && cd "$1" && pwd)
root=$cache/trixie
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
setup_version=1
# systemd-sysv: dracut's systemd module installs poweroff/reboot/halt from it.
packages=(linux-image-amd64 dracut systemd systemd-sysv systemd-cryptsetup cryptsetup-bin
          btrfs-progs udev kmod)

log() { echo "initrd.sh: $*" >&2; }
die() { echo "initrd.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount)"

exec 9>"$cache/trixie.lock"
flock 9

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mount_chroot() {
  local d
  for d in dev proc; do
    mkdir -p "$root/$d"
    # Holding the lock, a mount already there is a leftover of a killed run: adopt it.
    if ! mountpoint -q "$root/$d"; then
      if [ $d = dev ]; then mount --bind /dev "$root/dev"; else mount -t proc proc "$root/proc"; fi
    fi
    mounted+=("$root/$d")
  done
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
}

in_chroot() {
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}

if [ ! -f "$root/.ready" ] || [ "$(cat "$root/.ready")" != $setup_version ]; then
  t0=$SECONDS
  if [ -d "$root/debootstrap" ]; then # an interrupted debootstrap: start over
    awk -v r="$root" 'index($2, r "/") == 1 { exit 1 }' /proc/mounts ||
      die "$root is half-made and has mounts under it; unmount them"
    log "removing the half-made chroot $root"
    rm -rf --one-file-system "$root"
  fi
  if [ ! -x "$root/usr/bin/apt-get" ]; then
    if ! command -v debootstrap >/dev/null; then
      log "installing debootstrap on the host"
      apt-get install -y -q debootstrap >&2 || { apt-get update -q >&2 && apt-get install -y -q debootstrap >&2; }
    fi
    log "debootstrap trixie into $root"
    debootstrap --variant=minbase trixie "$root" "$mirror" >&2
  fi
  mount_chroot
  # The kernel's postinst runs dracut for the chroot's own /boot (hostonly, and it may fail
  # before systemd-sysv is there): not the initrd used here, so do not let it run.
  mkdir -p "$root/etc/dracut.conf.d"
  log "installing ${packages[*]} in the chroot"
  in_chroot apt-get update -q >&2
  in_chroot sh -c 'INITRD=No apt-get install -y -q --no-install-recommends "$@"' sh "${packages[@]}" >&2 ||
    in_chroot apt-get install -y -q --no-install-recommends "${packages[@]}" >&2
  in_chroot apt-get clean
  echo $setup_version >"$root/.ready"
  log "chroot ready in $((SECONDS - t0)) s"
fi

kver=$(ls "$root/lib/modules" | sort -V | tail -n 1)
[ -n "$kver" ] && [ -f "$root/boot/vmlinuz-$kver" ] || die "no kernel in $root/boot"

# What dracut puts in (the NixOS systemd initrd has the same parts, from nixpkgs instead):
# systemd as /init, udev, journald, the cryptsetup and hibernate-resume generators, emergency.service
# (a minimal dracut lacks it unless systemd-emergency is asked for), btrfs and dm-crypt.
# Not dracut-systemd: its hooks (dracut-cmdline, dracut-initqueue, ...) have no NixOS counterpart.
modules="bash systemd systemd-initrd systemd-udevd systemd-journald systemd-modules-load
systemd-tmpfiles systemd-cryptsetup systemd-emergency udev-rules kernel-modules dm crypt btrfs
resume base fs-lib"
drivers="virtio_blk dm_crypt btrfs xts aesni_intel crc32c_intel"
# The guest scripts' tools (report, setup): the binary under test is added by the runner.
tools="btrfs mkfs.btrfs dd find sort md5sum cut tr wc head tail grep sed mkdir rmdir mount umount
ls dmesg journalctl systemctl cat sync sleep date blkid mountpoint findmnt sulogin"

key=$( { cat "$0"; in_chroot dpkg-query -W; echo "$kver"; } | sha256sum | cut -c1-16)
out=$cache/initrd-$key.cpio
if [ ! -s "$out" ]; then
  mount_chroot
  log "dracut for $kver"
  # shellcheck disable=SC2086
  in_chroot dracut --force --quiet --no-hostonly --no-hostonly-cmdline --no-early-microcode \
    --no-compress --kver "$kver" -m "$(echo $modules)" --drivers "$(echo $drivers)" \
    --install "$(echo $tools)" /tmp/initrd.cpio >"$cache/dracut.log" 2>&1 ||
    { tail -n 20 "$cache/dracut.log" >&2; die "dracut failed (see $cache/dracut.log)"; }
  rm -f "$cache"/initrd-*.cpio
  mv "$root/tmp/initrd.cpio" "$out.tmp" && mv "$out.tmp" "$out"
fi
# Boot the uncompressed ELF vmlinux (PVH entry, as tests/vm/run.sh does) when it can be cut out
# of the bzImage (zstd in trixie): no decompression under emulation.
kernel=$root/boot/vmlinuz-$kver
vmlinux=$cache/vmlinux-$kver
if [ ! -s "$vmlinux" ] && command -v zstd >/dev/null; then
  off=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$kernel" | head -n 1 | cut -d: -f1)
  if [ -n "$off" ]; then
    tail -c +$((off + 1)) "$kernel" | zstd -dc >"$vmlinux.tmp" 2>/dev/null || true # trailing data after the frame
    if [ "$(head -c 4 "$vmlinux.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
      mv "$vmlinux.tmp" "$vmlinux"
    fi
    rm -f "$vmlinux.tmp"
  fi
fi
[ -s "$vmlinux" ] && [ "${RB_KERNEL:-vmlinux}" = vmlinux ] && kernel=$vmlinux
echo "kernel $kernel"
echo "initrd $out"
