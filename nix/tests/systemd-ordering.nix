# systemd stage 1, inspected inside the initrd (testing.initrdBackdoor): the
# rollback unit is ordered after the opened device, after resume from
# hibernation was attempted (a swap partition is the resume device, so
# systemd-hibernate-resume.service is part of the boot), and before / is
# mounted; and it really ran in that order.
let
  common = import ./common.nix;
in
{
  name = "btrfs-rollback-systemd-ordering";

  nodes.machine = common.machine {
    systemdStage1 = true;
    hibernation = true;
    rollbackConfig.testing.initrdBackdoor = true;
  };

  testScript =
    common.testLib { hibernation = true; }
    + ''
      def prop(unit: str, name: str) -> str:
          return machine.get_unit_property(unit, name)


      def timestamp(unit: str, name: str) -> int:
          return int(prop(unit, name + "TimestampMonotonic"))


      prepare_disk(swap=True)
      boot_rollback()

      with subtest("in the initrd: how the unit is ordered"):
          machine.wait_for_unit("initrd.target")
          # boot.resumeDevice puts resume= on the command line, which pulls
          # systemd-hibernate-resume.service into the boot.
          assert f"resume={SWAP_DISK}" in machine.succeed("cat /proc/cmdline")
          after = prop("btrfs-rollback.service", "After").split()
          for unit in ["dev-mapper-cryptroot.device", "local-fs-pre.target", "systemd-hibernate-resume.service"]:
              assert unit in after, f"btrfs-rollback.service is not After={unit}: {after}"
          before = prop("btrfs-rollback.service", "Before").split()
          assert "sysroot.mount" in before, f"btrfs-rollback.service is not Before=sysroot.mount: {before}"
          # A soft dependency: a device that never appears is reported by the unit itself.
          assert "dev-mapper-cryptroot.device" in prop("btrfs-rollback.service", "Wants").split()
          assert "dev-mapper-cryptroot.device" not in prop("btrfs-rollback.service", "BindsTo").split()
          assert prop("btrfs-rollback.service", "TimeoutStartUSec") != "infinity"
          assert prop("btrfs-rollback.service", "DefaultDependencies") == "no"

      with subtest("in the initrd: it ran, after the resume attempt and before / was mounted"):
          assert prop("btrfs-rollback.service", "ActiveState") == "active"
          assert prop("btrfs-rollback.service", "Result") == "success"
          # A oneshot without RemainAfterExit goes back to inactive when done; if its
          # condition failed it never left inactive, but the check is timestamped.
          resume_done = max(
              timestamp("systemd-hibernate-resume.service", "Condition"),
              timestamp("systemd-hibernate-resume.service", "InactiveEnter"),
          )
          rollback_started = timestamp("btrfs-rollback.service", "InactiveExit")
          rollback_done = timestamp("btrfs-rollback.service", "ActiveEnter")
          root_mounting = timestamp("sysroot.mount", "InactiveExit")
          assert resume_done > 0, "systemd-hibernate-resume.service was not part of this boot"
          assert resume_done <= rollback_started, (
              f"rollback started at {rollback_started}, before resume was done at {resume_done}"
          )
          assert 0 < rollback_done <= root_mounting, (
              f"/ started mounting at {root_mounting}, before the rollback was done at {rollback_done}"
          )

      with subtest("stage 2 runs on the fresh root"):
          machine.switch_root()
          assert_booted_from_root()
    '';
}
