# Shared by the VM tests: a machine that boots twice over.
#
# The base system boots from the VM's own disk (vda) and prepares an empty
# disk the way the README tells a user to: LUKS2 with a key file, btrfs,
# subvolumes root, persist and nix, and the read-only snapshot root-blank.
# The specialisation "rollback" is the system under test: it opens that disk
# in stage 1, runs the module, and mounts subvol=root as /. `boot_rollback()`
# makes systemd-boot start it from then on.
let
  # The test disks, in the order QEMU attaches them: vda is the VM's own disk,
  # then the store image (hibernation only: a 9p store does not survive a
  # resume), then emptyDiskImages.
  disks =
    hibernation:
    if hibernation then
      {
        luks = "/dev/vdc";
        swap = "/dev/vdd";
      }
    else
      {
        luks = "/dev/vdb";
        swap = null;
      };

  keyFile = builtins.toFile "btrfs-rollback-test-luks.key" ''
    mQINBGVpbGVzdCBrZXkgZmlsZSBmb3IgdGhlIGJ0cmZzLXJvbGxiYWNrIFZNIHRlc3Rz
    LCBub3QgYSBzZWNyZXQ6IGl0IG9ubHkgdW5sb2NrcyBhIHRocm93LWF3YXkgZGlzay4K
  '';
in
{
  inherit keyFile;

  # The node. `systemdStage1` picks the kind of stage 1 of the system under
  # test; `hibernation` adds a swap disk used as resume device and moves the
  # store to an image; `rollbackConfig` is merged into the specialisation.
  machine =
    {
      systemdStage1,
      hibernation ? false,
      rollbackConfig ? { },
    }:
    {
      config,
      lib,
      pkgs,
      ...
    }:
    {
      virtualisation = {
        emptyDiskImages = [ 1024 ] ++ lib.optional hibernation (2 * config.virtualisation.memorySize);
        useBootLoader = true;
        useEFIBoot = true;
        # The system under test boots from the LUKS disk, which holds no Nix
        # store: share the host's, or (hibernation) attach an image of it.
        mountHostNixStore = !hibernation;
        useNixStoreImage = hibernation;
        writableStore = lib.mkIf hibernation false;
        # The test script formats the disk with it (a store image holds only this).
        additionalPaths = [ keyFile ];
      };
      boot.loader.systemd-boot.enable = true;
      boot.loader.efi.canTouchEfiVariables = true;
      boot.supportedFilesystems.btrfs = true;
      boot.initrd.systemd.enable = systemdStage1;
      boot.initrd.systemd.emergencyAccess = systemdStage1;

      environment.systemPackages = [
        pkgs.btrfs-progs
        pkgs.cryptsetup
      ];

      specialisation.rollback.configuration = {
        imports = [ rollbackConfig ];

        boot.initrd.luks.devices = lib.mkVMOverride {
          cryptroot = {
            device = (disks hibernation).luks;
            keyFile = "/etc/cryptroot.key";
          };
        };
        boot.initrd.secrets."/etc/cryptroot.key" = keyFile;

        virtualisation.rootDevice = "/dev/mapper/cryptroot";
        virtualisation.fileSystems = {
          "/" = {
            fsType = lib.mkForce "btrfs";
            options = [ "subvol=root" ];
          };
          "/persist" = {
            device = "/dev/mapper/cryptroot";
            fsType = "btrfs";
            options = [ "subvol=persist" ];
            neededForBoot = true;
          };
          # The store (9p share or image) mounts on top.
          "/nix" = {
            device = "/dev/mapper/cryptroot";
            fsType = "btrfs";
            options = [ "subvol=nix" ];
          };
        };

        swapDevices = lib.mkIf hibernation (lib.mkOverride 0 [ { device = (disks hibernation).swap; } ]);
        boot.resumeDevice = lib.mkIf hibernation (disks hibernation).swap;

        boot.initrd.btrfsRollback.enable = true;
      };
    };

  # Python helpers for the test scripts.
  testLib =
    {
      hibernation ? false,
    }:
    ''
    import re

    LUKS_DISK = "${(disks hibernation).luks}"
    SWAP_DISK = "${toString (disks hibernation).swap}"

    def prepare_disk(blank: bool = True, swap: bool = False) -> None:
        """In the base system: lay out the LUKS disk as the README says."""
        machine.wait_for_unit("multi-user.target")
        machine.succeed(
            "cryptsetup luksFormat --type luks2 --batch-mode --iter-time=1 "
            "--key-file ${keyFile} " + LUKS_DISK,
            f"cryptsetup open --key-file ${keyFile} {LUKS_DISK} cryptroot",
            "mkfs.btrfs --quiet /dev/mapper/cryptroot",
            "mkdir -p /mnt/top",
            "mount -t btrfs -o subvolid=5 /dev/mapper/cryptroot /mnt/top",
            "btrfs subvolume create /mnt/top/root",
            "btrfs subvolume create /mnt/top/persist",
            "btrfs subvolume create /mnt/top/nix",
            "echo kept > /mnt/top/persist/kept",
        )
        if blank:
            machine.succeed("btrfs subvolume snapshot -r /mnt/top/root /mnt/top/root-blank")
        if swap:
            machine.succeed(f"mkswap {SWAP_DISK}")
        machine.succeed(
            "umount /mnt/top",
            "cryptsetup close cryptroot",
        )


    def boot_rollback() -> None:
        """Make the specialisation the default boot entry and reboot into it."""
        machine.succeed(
            "bootctl set-default nixos-generation-1-specialisation-rollback.conf",
            "sync",
        )
        machine.shutdown()
        machine.start()


    def on_top_level(command: str) -> str:
        """Run `command` in /mnt/top, the top-level volume (subvolid 5) of the booted system."""
        return machine.succeed(
            "mkdir -p /mnt/top",
            "mount -t btrfs -o subvolid=5 /dev/mapper/cryptroot /mnt/top",
            f"cd /mnt/top && {command}; status=$?; cd /; umount /mnt/top; exit $status",
        )


    def log_lines() -> int:
        return int(on_top_level("cat rollback.log | wc -l").strip())


    def assert_booted_from_root() -> None:
        machine.wait_for_unit("multi-user.target")
        source = machine.succeed("findmnt --noheadings --output SOURCE,FSTYPE /").strip()
        assert re.fullmatch(r"/dev/mapper/cryptroot\[/root\]\s+btrfs", source), f"/ is {source!r}"


    def assert_settings_known() -> None:
        """The booted system has the binary and the boot's settings: `list` needs no flags."""
        conf = machine.succeed("cat /etc/btrfs-rollback.conf")
        assert "device = /dev/mapper/cryptroot" in conf, conf
        listing = machine.succeed("btrfs-rollback list")
        assert "root-blank" in listing, listing


    def write_darlings() -> None:
        """State that a rollback must erase, and state it must keep."""
        machine.succeed(
            "echo darling > /darling",
            "mkdir -p /var/lib/darling && echo darling > /var/lib/darling/file",
            "btrfs subvolume create /nested",
            "echo darling > /nested/file",
            "btrfs subvolume create /nested/deeper",
            "echo darling > /nested/deeper/file",
            "echo kept > /persist/kept-too",
            "sync",
        )


    def assert_darlings_gone() -> None:
        machine.fail("test -e /darling")
        machine.fail("test -e /var/lib/darling")
        machine.fail("test -e /nested")
        machine.succeed(
            "grep -qx kept /persist/kept",
            "grep -qx kept /persist/kept-too",
        )
        # An independent oracle: btrfs-progs on the top-level volume. systemd-tmpfiles
        # may have made root/var/lib/{machines,portables} again in this boot.
        listing = on_top_level("btrfs subvolume list .")
        paths = [line.split(" path ")[-1] for line in listing.strip().splitlines()]
        top = sorted(p for p in paths if "/" not in p)
        assert top == ["nix", "persist", "root", "root-blank"], f"top-level subvolumes: {paths}"
        assert not [p for p in paths if p.startswith("root/nested")], f"nested left: {paths}"
        assert "ro=true" in on_top_level("btrfs property get -ts root-blank ro")


    def assert_darlings_kept() -> None:
        machine.succeed(
            "grep -qx darling /darling",
            "grep -qx darling /var/lib/darling/file",
            "grep -qx darling /nested/file",
            "grep -qx darling /nested/deeper/file",
            "grep -qx kept /persist/kept",
            "grep -qx kept /persist/kept-too",
        )


    def assert_rollback_logged(lines_before: int) -> None:
        """This boot's run is in the kernel log, the journal and the top-level rollback.log."""
        assert "btrfs-rollback" in machine.succeed("dmesg"), "no btrfs-rollback line in the kernel log"
        journal = machine.succeed("journalctl --boot --no-pager")
        assert "btrfs-rollback" in journal, "no btrfs-rollback line in journalctl -b"
        assert "ROOT NOT ROLLED BACK" not in journal, "the rollback reported a failure"
        lines = log_lines()
        assert lines > lines_before, f"rollback.log did not grow ({lines_before} -> {lines} lines)"
  '';
}
