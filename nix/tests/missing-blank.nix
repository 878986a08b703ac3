# No root-blank on the disk: btrfs-rollback refuses (exit status 1) before it
# touches anything, and with the default onFailure = "continue" the machine
# boots the previous root, says so, and deletes nothing, boot after boot.
{ systemdStage1 }:
let
  common = import ./common.nix;
  kind = if systemdStage1 then "systemd" else "scripted";
in
{
  name = "btrfs-rollback-missing-blank-${kind}-stage-1";

  nodes.machine = common.machine { inherit systemdStage1; };

  testScript =
    common.testLib { }
    + ''
      def assert_refused() -> None:
          assert "ROOT NOT ROLLED BACK" in machine.succeed("journalctl --boot --no-pager"), (
              "the failed rollback was not reported"
          )
          # The binary's own kernel log lines (prefix "btrfs-rollback:") name what is missing.
          kmsg = [line for line in machine.succeed("dmesg").splitlines() if "btrfs-rollback:" in line]
          assert any("root-blank" in line for line in kmsg), f"no kernel log line names root-blank: {kmsg}"


      def assert_nothing_deleted() -> None:
          listing = on_top_level("btrfs subvolume list .")
          paths = [line.split(" path ")[-1] for line in listing.strip().splitlines()]
          assert "root-blank" not in paths, f"a root-blank appeared: {paths}"
          for path in ["root", "persist", "nix", "root/nested", "root/nested/deeper"]:
              assert path in paths, f"{path} is gone: {paths}"


      with subtest("without root-blank the boot goes on with the previous root"):
          prepare_disk(blank=False)
          boot_rollback()
          assert_booted_from_root()
          assert_refused()

      with subtest("and nothing is deleted at the next boot either"):
          write_darlings()
          machine.shutdown()
          machine.start()
          assert_booted_from_root()
          assert_refused()
          assert_darlings_kept()
          assert_nothing_deleted()
    '';
}
