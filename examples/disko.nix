# The seed guide's disk layout (Encrypted Setups) for disko, ready for btrfs-rollback:
# GPT with an EFI system partition and one LUKS2 partition (partlabel "luks", opened as
# "cryptroot"), holding btrfs with the subvolumes root (/), persist (/persist) and nix
# (/nix), and the read-only snapshot root-blank of the still empty root, taken by
# postCreateHook right after disko creates the subvolumes.
#
# Import it next to disko's module and the btrfs-rollback module:
#   modules = [ inputs.disko.nixosModules.disko ./disko.nix
#               inputs.btrfs-rollback.nixosModules.default ];
# and install with `disko --mode disko ./disko.nix` (or disko-install). The module's
# defaults (device /dev/mapper/cryptroot, root, root-blank) match this layout, so
# `boot.initrd.btrfsRollback.enable = true;` is all it needs. disko mounts the root with
# subvol=/root, which the module accepts.
{
  disko.devices.disk.main = {
    type = "disk";
    # The whole disk disko formats: change it to yours (ls -l /dev/disk/by-id).
    device = "/dev/nvme0n1";
    content = {
      type = "gpt";
      partitions = {
        ESP = {
          size = "1G";
          type = "EF00";
          content = {
            type = "filesystem";
            format = "vfat";
            mountpoint = "/boot";
            mountOptions = [ "umask=0077" ];
          };
        };
        luks = {
          size = "100%";
          label = "luks";
          content = {
            type = "luks";
            name = "cryptroot";
            settings.allowDiscards = true;
            content = {
              type = "btrfs";
              extraArgs = [
                "-L"
                "nixos"
                "-f"
              ];
              subvolumes = {
                "/root" = {
                  mountpoint = "/";
                  mountOptions = [
                    "compress=zstd"
                    "noatime"
                  ];
                };
                "/persist" = {
                  mountpoint = "/persist";
                  mountOptions = [
                    "compress=zstd"
                    "noatime"
                  ];
                };
                "/nix" = {
                  mountpoint = "/nix";
                  mountOptions = [
                    "compress=zstd"
                    "noatime"
                  ];
                };
              };
              # Runs once, after the subvolumes exist and before anything is written to
              # root: the blank every boot starts from. $device is this btrfs device
              # (/dev/mapper/cryptroot). Read-only (-r): btrfs-rollback refuses a
              # writable blank.
              postCreateHook = ''
                (
                  MNTPOINT=$(mktemp -d)
                  mount -t btrfs -o subvolid=5 "$device" "$MNTPOINT"
                  trap 'umount "$MNTPOINT"; rm -rf "$MNTPOINT"' EXIT
                  if ! btrfs subvolume show "$MNTPOINT/root-blank" >/dev/null 2>&1; then
                    btrfs subvolume snapshot -r "$MNTPOINT/root" "$MNTPOINT/root-blank"
                  fi
                )
              '';
            };
          };
        };
      };
    };
  };

  # impermanence links from /persist early in the boot.
  fileSystems."/persist".neededForBoot = true;
}
