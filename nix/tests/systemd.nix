# systemd stage 1: the rollback runs as btrfs-rollback.service between the
# opened LUKS device and sysroot.mount, erases / with its nested subvolumes
# at every boot, keeps /persist, and logs to the journal, the kernel log and
# the top-level rollback.log.
let
  common = import ./common.nix;
in
{
  name = "btrfs-rollback-systemd-stage-1";

  nodes.machine = common.machine { systemdStage1 = true; };

  testScript =
    common.testLib { }
    + ''
      def assert_unit_ran() -> None:
          # systemd-analyze fails ("Bootup is not yet finished") until every boot job is done.
          analyze = machine.wait_until_succeeds("systemd-analyze", timeout=300)
          assert "(initrd)" in analyze, "not booted with systemd in stage 1"
          output = machine.succeed(
              "journalctl --boot --quiet --no-pager --output=cat _SYSTEMD_UNIT=btrfs-rollback.service"
          )
          assert output.strip() != "", "btrfs-rollback.service wrote nothing to the journal"


      with subtest("first boot of the rollback system: / is a fresh subvol=root"):
          prepare_disk()
          boot_rollback()
          assert_booted_from_root()
          assert_unit_ran()
          assert_rollback_logged(0)
          assert_settings_known()

      with subtest("a reboot erases / and the subvolumes nested in it, and keeps /persist"):
          write_darlings()
          lines = log_lines()
          machine.shutdown()
          machine.start()
          assert_booted_from_root()
          assert_darlings_gone()
          assert_unit_ran()
          assert_rollback_logged(lines)
    '';
}
