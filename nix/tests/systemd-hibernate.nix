# systemd stage 1 and hibernation: resuming must not roll back (the hibernated
# kernel still has the old root mounted: deleting it underneath corrupts the
# file system), and the next cold boot must.
let
  common = import ./common.nix;
in
{
  name = "btrfs-rollback-systemd-hibernate";

  nodes.machine = common.machine {
    systemdStage1 = true;
    hibernation = true;
    rollbackConfig = {
      # As in nixpkgs' nixos/tests/hibernate.nix: keep the test backdoor across
      # the sleep.
      systemd.services.backdoor.conflicts = [ "sleep.target" ];
      powerManagement.resumeCommands = "systemctl --no-block restart backdoor.service";
    };
  };

  testScript =
    common.testLib { hibernation = true; }
    + ''
      def assert_btrfs_healthy() -> None:
          machine.fail("dmesg | grep -Ei 'BTRFS (error|critical)|transid verify failed|corrupt'")
          machine.succeed("btrfs scrub start -B /persist")


      with subtest("boot the rollback system and leave state in /"):
          prepare_disk(swap=True)
          boot_rollback()
          assert_booted_from_root()
          write_darlings()
          machine.succeed(
              "mkdir /run/test",
              "mount -t ramfs -o size=1m ramfs /run/test",
              "echo not persisted to disk > /run/test/suspended",
          )
          lines = log_lines()

      with subtest("hibernate and resume: no rollback"):
          machine.execute("systemctl hibernate >&2 &", check_return=False)
          machine.wait_for_shutdown()
          machine.start()
          # Resumed, not booted: the RAM-only file is back.
          machine.succeed("grep 'not persisted to disk' /run/test/suspended")
          assert_darlings_kept()
          machine.succeed("echo after-resume > /after-resume", "sync")
          assert_btrfs_healthy()

      with subtest("the next cold boot rolls back"):
          machine.crash()
          machine.start()
          assert_booted_from_root()
          assert_darlings_gone()
          machine.fail("test -e /after-resume")
          assert_rollback_logged(lines)
          assert_btrfs_healthy()
    '';
}
