# Scripted stage 1 (boot.initrd.systemd.enable = false): the rollback runs
# from postResumeCommands, erases / with its nested subvolumes at every boot,
# keeps /persist, and logs to the kernel log and the top-level rollback.log.
let
  common = import ./common.nix;
in
{
  name = "btrfs-rollback-scripted-stage-1";

  nodes.machine = common.machine { systemdStage1 = false; };

  testScript =
    common.testLib { }
    + ''
      with subtest("first boot of the rollback system: / is a fresh subvol=root"):
          prepare_disk()
          boot_rollback()
          assert_booted_from_root()
          assert_rollback_logged(0)
          assert_settings_known()

      with subtest("a reboot erases / and the subvolumes nested in it, and keeps /persist"):
          write_darlings()
          lines = log_lines()
          machine.shutdown()
          machine.start()
          assert_booted_from_root()
          assert_darlings_gone()
          assert_rollback_logged(lines)
    '';
}
