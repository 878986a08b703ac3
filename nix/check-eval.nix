# The evaluation cases of nix/check-eval.sh: NixOS systems built from the
# README's layout plus one change each, evaluated (never built) against a
# nixpkgs tree. Each case says what our module must report (nothing, or an
# assertion or warning containing some words) and which rendered texts (the
# scripted hook, the unit, its scripts, the configuration file) must contain
# or lack which strings. check-eval.sh evaluates them a few at a time and
# judges the JSON this returns.
#
#   nix-instantiate --eval --strict --json nix/check-eval.nix \
#     --arg nixpkgs PATH --arg names '[ "systemd" ]'
{
  nixpkgs,
  module ? ./module.nix,
  # The cases to evaluate (null: only list their names, cheaply).
  names ? null,
}:

let
  lib = import (nixpkgs + "/lib");
  opt = "boot.initrd.btrfsRollback";

  system =
    extra:
    import (nixpkgs + "/nixos") {
      system = "x86_64-linux";
      configuration =
        { lib, pkgs, ... }:
        {
          imports = [
            module
            extra
          ];
          boot.loader.grub.enable = false;
          boot.initrd.luks.devices.cryptroot.device = "/dev/disk/by-partlabel/luks";
          fileSystems."/".device = lib.mkDefault "/dev/mapper/cryptroot";
          fileSystems."/".fsType = lib.mkDefault "btrfs";
          fileSystems."/".options = [
            "subvol=root"
            "compress=zstd"
            "noatime"
          ];
          fileSystems."/persist" = {
            device = lib.mkDefault "/dev/mapper/cryptroot";
            fsType = "btrfs";
            options = lib.mkDefault [ "subvol=persist" ];
            neededForBoot = true;
          };
          fileSystems."/nix" = {
            device = "/dev/mapper/cryptroot";
            fsType = "btrfs";
            options = [
              "subvol=nix"
              "noatime"
            ];
          };
          boot.initrd.btrfsRollback.enable = true;
          boot.initrd.btrfsRollback.package = pkgs.writeShellScriptBin "btrfs-rollback" "echo stub";
          system.stateVersion = "24.05";
        };
    };

  # Only what our module reports: its own definitions of assertions and
  # warnings (the rest of NixOS is not under test, and cheaper left alone).
  ours =
    option:
    lib.concatMap (d: d.value) (
      lib.filter (d: d.file == toString module) option.definitionsWithLocations
    );
  problems =
    sys:
    map (a: "assertion: " + a.message) (lib.filter (a: !a.assertion) (ours sys.options.assertions))
    ++ map (w: "warning: " + w) (ours sys.options.warnings);

  systemd = {
    boot.initrd.systemd.enable = true;
  };
  readmeConfig = ''
    # boot.initrd.btrfsRollback: the defaults of btrfs-rollback; the boot's run gets the same values as flags.
    blank = root-blank
    device = /dev/mapper/cryptroot
    log = rollback.log
    root = root
    wait = 10
  '';
  readmeArgs = ''"run" "--device" "/dev/mapper/cryptroot" "--root" "root" "--blank" "root-blank" "--log" "rollback.log" "--wait" "10"'';
  unitOf = sys: sys.config.boot.initrd.systemd.units."btrfs-rollback.service".text;
  serviceOf = sys: sys.config.boot.initrd.systemd.services.btrfs-rollback;

  # name = { config; expect = "clean" | { assertion | warning = [ words ]; };
  #          renders = sys: { label = { text; has ? [ ]; lacks ? [ ]; }; }; }
  cases = {
    # ---- the README layout, rendered -------------------------------------
    scripted = {
      config = { };
      expect = "clean";
      renders = sys: {
        "postResumeCommands" = {
          text = sys.config.boot.initrd.postResumeCommands;
          has = [
            "\nbtrfs-rollback 'run' '--device' '/dev/mapper/cryptroot' '--root' 'root' '--blank' 'root-blank' '--log' 'rollback.log' '--wait' '10'\n"
            "rollbackStatus=$?"
            ''if [ "$rollbackStatus" -eq 3 ]; then''
            "echo 'btrfs-rollback: OLD ROOT NOT FULLY DELETED (exit status 3): the fresh root from root-blank is in place"
            "echo '<12>btrfs-rollback: OLD ROOT NOT FULLY DELETED (exit status 3)"
            "> /dev/kmsg"
            ''echo "btrfs-rollback: ROOT NOT ROLLED BACK (exit status $rollbackStatus): $rollbackState. "'Booting the previous root (boot.initrd.btrfsRollback.onFailure = "continue").''
            "1|2) rollbackState='subvolume root on /dev/mapper/cryptroot was left untouched'"
          ];
          lacks = [
            "\n  fail\n"
            "<3>"
            "timeout)"
          ];
          runs = [
            {
              setE = false;
              env.FAKE_STATUS = "3";
              stdout = ''
                btrfs-rollback: OLD ROOT NOT FULLY DELETED (exit status 3): the fresh root from root-blank is in place, but parts of the old root are still on /dev/mapper/cryptroot; the next boot tries again. What is left: the lines above, rollback.log on the top-level volume, and btrfs-rollback list.
              '';
            }
            {
              setE = false;
              env.FAKE_STATUS = "2";
              stdout = ''
                btrfs-rollback: ROOT NOT ROLLED BACK (exit status 2): subvolume root on /dev/mapper/cryptroot was left untouched. Booting the previous root (boot.initrd.btrfsRollback.onFailure = "continue"). Log: rollback.log on the top-level volume of /dev/mapper/cryptroot, and journalctl -b.
              '';
            }
          ];
        };
        "extraUtilsCommands" = {
          text = sys.config.boot.initrd.extraUtilsCommands;
          has = [ "copy_bin_and_libs /nix/store/" ];
        };
        "extraUtilsCommandsTest" = {
          text = sys.config.boot.initrd.extraUtilsCommandsTest;
          has = [ "/bin/btrfs-rollback --version" ];
        };
        "initrd /etc/btrfs-rollback.conf" = {
          text = sys.config.boot.initrd.extraFiles."/etc/btrfs-rollback.conf".source.text;
          equals = readmeConfig;
        };
        "system /etc/btrfs-rollback.conf" = {
          text = sys.config.environment.etc."btrfs-rollback.conf".text;
          equals = readmeConfig;
        };
        "environment.systemPackages" = {
          text = lib.concatMapStringsSep " " (p: p.name) sys.config.environment.systemPackages;
          has = [ "btrfs-rollback" ];
        };
      };
    };
    scripted-stop = {
      config = {
        boot.initrd.btrfsRollback.onFailure = "stop";
      };
      expect = "clean";
      renders = sys: {
        "postResumeCommands" = {
          text = sys.config.boot.initrd.postResumeCommands;
          has = [
            ''Stopping the boot (boot.initrd.btrfsRollback.onFailure = "stop")''
            "\n  fail\n"
          ];
          # FAKE_STATUS: the exit status of check-eval.sh's stand-in btrfs-rollback; stage
          # 1's `fail` is a function that prints "fail called". Stage 1 runs without set -e.
          runs = [
            {
              setE = false;
              env.FAKE_STATUS = "1";
              stdout = ''
                btrfs-rollback: ROOT NOT ROLLED BACK (exit status 1): subvolume root on /dev/mapper/cryptroot was left untouched. Stopping the boot (boot.initrd.btrfsRollback.onFailure = "stop"). Log: rollback.log on the top-level volume of /dev/mapper/cryptroot, and journalctl -b.
                fail called
              '';
            }
            {
              setE = false;
              env.FAKE_STATUS = "0";
              stdout = "";
            }
          ];
        };
      };
    };
    systemd = {
      config = systemd;
      expect = "clean";
      renders = sys: {
        "btrfs-rollback.service" = {
          text = unitOf sys;
          has = [
            # A device that never appears: a soft dependency, so the unit runs and reports.
            "\nWants=dev-mapper-cryptroot.device\n"
            "\nAfter=dev-mapper-cryptroot.device local-fs-pre.target systemd-hibernate-resume.service\n"
            "\nBefore=sysroot.mount initrd-root-fs.target shutdown.target\n"
            "\nDefaultDependencies=false\n"
            "/bin/btrfs-rollback\" ${readmeArgs}\n"
            "\nType=oneshot\n"
            "\nRemainAfterExit=true\n"
            "\nSuccessExitStatus=3\n"
            # waitSeconds 10 + timeoutSeconds 300
            "\nTimeoutStartSec=310s\n"
            "\nExecStartPost=/nix/store/"
            "\nExecStopPost=/nix/store/"
            "\nStandardOutput=journal+console\n"
            "\nWantedBy=initrd.target\n"
          ];
          lacks = [
            "BindsTo="
            "Requires="
            "RequiredBy="
          ];
        };
        "its ExecStopPost (postStop)" = {
          text = (serviceOf sys).postStop;
          has = [
            ''if [ "$SERVICE_RESULT" != success ]; then''
            ''if [ "$SERVICE_RESULT" = timeout ]; then''
            "rollbackStatus=\${EXIT_STATUS:-$SERVICE_RESULT}"
            "timeout) rollbackState='btrfs-rollback did not finish within 310 s (boot.initrd.btrfsRollback.waitSeconds + boot.initrd.btrfsRollback.timeoutSeconds) and was stopped"
            ''echo "<3>btrfs-rollback: ROOT NOT ROLLED BACK (exit status $rollbackStatus): $rollbackState. "'Booting the previous root''
          ];
          # Run by bash with the environment systemd gives ExecStopPost=.
          runs = [
            {
              env = {
                SERVICE_RESULT = "exit-code";
                EXIT_CODE = "exited";
                EXIT_STATUS = "1";
              };
              stdout = ''
                <3>btrfs-rollback: ROOT NOT ROLLED BACK (exit status 1): subvolume root on /dev/mapper/cryptroot was left untouched. Booting the previous root (boot.initrd.btrfsRollback.onFailure = "continue"). Log: rollback.log on the top-level volume of /dev/mapper/cryptroot, and journalctl -b.
              '';
            }
            {
              env = {
                SERVICE_RESULT = "timeout";
                EXIT_CODE = "killed";
                EXIT_STATUS = "TERM";
              };
              stdout = ''
                <3>btrfs-rollback: ROOT NOT ROLLED BACK (exit status timeout): btrfs-rollback did not finish within 310 s (boot.initrd.btrfsRollback.waitSeconds + boot.initrd.btrfsRollback.timeoutSeconds) and was stopped; subvolume root on /dev/mapper/cryptroot is either the previous root or a fresh snapshot of root-blank. Booting the previous root (boot.initrd.btrfsRollback.onFailure = "continue"). Log: rollback.log on the top-level volume of /dev/mapper/cryptroot, and journalctl -b.
              '';
            }
            {
              env = {
                SERVICE_RESULT = "success";
                EXIT_CODE = "exited";
                EXIT_STATUS = "3";
              };
              stdout = "";
            }
          ];
        };
        "its ExecStartPost (postStart)" = {
          text = (serviceOf sys).postStart;
          has = [
            ''if [ "$(systemctl show --property=ExecMainStatus --value btrfs-rollback.service || true)" = 3 ]; then''
            "echo '<4>btrfs-rollback: OLD ROOT NOT FULLY DELETED (exit status 3): the fresh root from root-blank is in place, but parts of the old root are still on /dev/mapper/cryptroot; the next boot tries again."
          ];
          # FAKE_MAIN_STATUS: what check-eval.sh's stand-in systemctl prints for ExecMainStatus.
          runs = [
            {
              env.FAKE_MAIN_STATUS = "3";
              stdout = ''
                <4>btrfs-rollback: OLD ROOT NOT FULLY DELETED (exit status 3): the fresh root from root-blank is in place, but parts of the old root are still on /dev/mapper/cryptroot; the next boot tries again. What is left: the lines above, rollback.log on the top-level volume, and btrfs-rollback list.
              '';
            }
            {
              env.FAKE_MAIN_STATUS = "0";
              stdout = "";
            }
            {
              # systemctl fails: nothing said, and ExecStartPost does not fail the unit.
              env.FAKE_MAIN_STATUS = "fail";
              stdout = "";
            }
          ];
        };
        "initrd /etc/btrfs-rollback.conf" = {
          text = sys.config.boot.initrd.systemd.contents."/etc/btrfs-rollback.conf".text;
          equals = readmeConfig;
        };
        "system /etc/btrfs-rollback.conf" = {
          text = sys.config.environment.etc."btrfs-rollback.conf".text;
          equals = readmeConfig;
        };
        "the binary in the initrd" = {
          text =
            lib.concatStringsSep " " (map toString sys.config.boot.initrd.systemd.storePaths)
            + " extraBin=${sys.config.boot.initrd.systemd.extraBin.btrfs-rollback}";
          has = [
            "-btrfs-rollback/bin/btrfs-rollback "
            "extraBin=/nix/store/"
          ];
        };
      };
    };
    systemd-stop = {
      config = {
        imports = [ systemd ];
        boot.initrd.btrfsRollback.onFailure = "stop";
        boot.initrd.systemd.emergencyAccess = true;
      };
      expect = "clean";
      renders = sys: {
        "requiredBy" = {
          text = toString sys.config.boot.initrd.systemd.units."btrfs-rollback.service".requiredBy;
          equals = "sysroot.mount";
        };
        "its ExecStopPost (postStop)" = {
          text = (serviceOf sys).postStop;
          has = [ ''Stopping the boot (boot.initrd.btrfsRollback.onFailure = "stop")'' ];
          runs = [
            {
              env = {
                SERVICE_RESULT = "exit-code";
                EXIT_CODE = "exited";
                EXIT_STATUS = "1";
              };
              stdout = ''
                <3>btrfs-rollback: ROOT NOT ROLLED BACK (exit status 1): subvolume root on /dev/mapper/cryptroot was left untouched. Stopping the boot (boot.initrd.btrfsRollback.onFailure = "stop"). Log: rollback.log on the top-level volume of /dev/mapper/cryptroot, and journalctl -b.
              '';
            }
          ];
        };
      };
    };
    # Every setting reaches the flags, the timeout and the configuration file alike.
    systemd-settings = {
      config = {
        imports = [ systemd ];
        boot.initrd.luks.devices = lib.mkForce { crypt.device = "/dev/disk/by-partlabel/luks"; };
        fileSystems."/".device = "/dev/mapper/crypt";
        fileSystems."/".options = lib.mkForce [ "subvol=@" ];
        fileSystems."/persist".device = "/dev/mapper/crypt";
        fileSystems."/nix".device = lib.mkForce "/dev/mapper/crypt";
        boot.initrd.btrfsRollback = {
          device = "/dev/mapper/crypt";
          rootSubvolume = "@";
          blankSnapshot = "@blank";
          logFile = "logs/rollback.log";
          waitSeconds = 5;
          timeoutSeconds = 60;
          keepOldRoots = 10;
          keepDays = 30;
        };
      };
      expect = "clean";
      config-file = true;
      renders = sys: {
        "btrfs-rollback.service" = {
          text = unitOf sys;
          has = [
            ''"run" "--device" "/dev/mapper/crypt" "--root" "@" "--blank" "@blank" "--log" "logs/rollback.log" "--wait" "5" "--keep-old-roots" "10" "--keep-days" "30"''
            "\nWants=dev-mapper-crypt.device\n"
            "\nTimeoutStartSec=65s\n"
          ];
        };
        "system /etc/btrfs-rollback.conf" = {
          text = sys.config.environment.etc."btrfs-rollback.conf".text;
          equals = ''
            # boot.initrd.btrfsRollback: the defaults of btrfs-rollback; the boot's run gets the same values as flags.
            blank = @blank
            device = /dev/mapper/crypt
            keep-days = 30
            keep-old-roots = 10
            log = logs/rollback.log
            root = @
            wait = 5
          '';
        };
      };
    };

    # ---- what users get wrong: assertions and warnings -------------------
    subvol-slash-root = {
      config.fileSystems."/".options = lib.mkForce [ "subvol=/root" ];
      expect = "clean";
    };
    root-ext4 = {
      config.fileSystems."/" = lib.mkForce {
        device = "/dev/mapper/cryptroot";
        fsType = "ext4";
      };
      expect.assertion = [ ''fileSystems."/".fsType is "ext4"'' ];
    };
    root-other-subvolume = {
      config.fileSystems."/".options = lib.mkForce [ "subvol=@" ];
      expect.assertion = [
        "subvol=root"
        "${opt}.rootSubvolume"
      ];
    };
    root-without-subvol = {
      config.fileSystems."/".options = lib.mkForce [ "compress=zstd" ];
      expect.assertion = [ ''Add "subvol=root" to fileSystems."/".options'' ];
    };
    root-other-device = {
      config.fileSystems."/".device = "/dev/mapper/other";
      expect.assertion = [
        ''${opt}.device is "/dev/mapper/cryptroot" but fileSystems."/".device is "/dev/mapper/other"''
      ];
    };
    root-dm-name-link = {
      config.fileSystems."/".device = "/dev/disk/by-id/dm-name-cryptroot";
      expect = "clean";
    };
    root-by-uuid = {
      config.fileSystems."/".device = "/dev/disk/by-uuid/0f3c8a2e-5b1d-4c47-9e8b-6a1f2d3c4b5a";
      expect.warning = [ "cannot check statically" ];
    };
    root-by-label = {
      config.fileSystems."/" = lib.mkForce {
        label = "nixos";
        fsType = "btrfs";
        options = [ "subvol=root" ];
      };
      expect.warning = [ "/dev/disk/by-label/nixos" ];
    };
    root-dm-node = {
      config.fileSystems."/".device = "/dev/dm-0";
      expect.warning = [
        "cannot check statically"
        "/dev/dm-0"
      ];
    };
    # One node, two names: LVM's /dev/VG/LV and device-mapper's /dev/mapper/VG-LV.
    lvm-names = {
      config = {
        boot.initrd.btrfsRollback.device = "/dev/root_vg/root";
        fileSystems."/".device = "/dev/mapper/root_vg-root";
        fileSystems."/persist".device = "/dev/root_vg/root";
        fileSystems."/nix".device = lib.mkForce "/dev/root_vg/root";
      };
      expect = "clean";
    };
    lvm-names-with-hyphens = {
      config = {
        boot.initrd.btrfsRollback.device = "/dev/mapper/my--vg-root--lv";
        fileSystems."/".device = "/dev/my-vg/root-lv";
      };
      expect = "clean";
    };
    lvm-other-volume = {
      config = {
        boot.initrd.btrfsRollback.device = "/dev/root_vg/root";
        fileSystems."/".device = "/dev/mapper/root_vg-home";
      };
      expect.assertion = [
        ''${opt}.device is "/dev/root_vg/root" but fileSystems."/".device is "/dev/mapper/root_vg-home"''
      ];
    };
    root-subvolid = {
      config.fileSystems."/".options = lib.mkForce [ "subvolid=256" ];
      expect.warning = [ "Subvolume ids change at every rollback" ];
    };
    # File systems inside the erased subvolume.
    persist-inside-root = {
      config.fileSystems."/persist".options = [ "subvol=root/persist" ];
      expect.assertion = [
        ''fileSystems."/persist" mounts subvol=root/persist of /dev/mapper/cryptroot''
        ''inside ${opt}.rootSubvolume = "root"''
        "erased with the root at every boot"
      ];
    };
    home-inside-root = {
      config.fileSystems."/home" = {
        device = "/dev/mapper/cryptroot";
        fsType = "btrfs";
        options = [ "subvol=/root/home" ];
      };
      expect.assertion = [ ''fileSystems."/home" mounts subvol=root/home of /dev/mapper/cryptroot'' ];
    };
    persist-inside-root-lvm-name = {
      config = {
        boot.initrd.btrfsRollback.device = "/dev/root_vg/root";
        fileSystems."/".device = "/dev/root_vg/root";
        fileSystems."/persist".device = "/dev/mapper/root_vg-root";
        fileSystems."/persist".options = [ "subvol=//root//persist" ];
      };
      expect.assertion = [ ''fileSystems."/persist" mounts subvol=root/persist'' ];
    };
    inside-root-by-uuid = {
      config.fileSystems."/persist".device = "/dev/disk/by-uuid/0f3c8a2e-5b1d-4c47-9e8b-6a1f2d3c4b5a";
      config.fileSystems."/persist".options = [ "subvol=root/persist" ];
      expect.warning = [
        ''fileSystems."/persist" mounts subvol=root/persist''
        "cannot be compared"
      ];
    };
    similar-names-are-not-inside = {
      config = {
        fileSystems."/persist".options = [ "subvol=root-persist" ];
        fileSystems."/other" = {
          device = "/dev/mapper/otherdisk";
          fsType = "btrfs";
          options = [ "subvol=root/data" ];
        };
      };
      expect = "clean";
    };
    nested-root-subvolume = {
      config = {
        boot.initrd.btrfsRollback.rootSubvolume = "a/root";
        fileSystems."/".options = lib.mkForce [ "subvol=a/root" ];
      };
      expect.assertion = [ ''${opt}.rootSubvolume = "a/root" must be a single path component'' ];
    };
    blank-dotdot = {
      config.boot.initrd.btrfsRollback.blankSnapshot = "..";
      expect.assertion = [ ''${opt}.blankSnapshot = ".." must be a single path component'' ];
    };
    blank-is-root = {
      config.boot.initrd.btrfsRollback.blankSnapshot = "root";
      expect.assertion = [ ''are both "root"'' ];
    };
    blank-leading-dash = {
      config.boot.initrd.btrfsRollback.blankSnapshot = "-x";
      expect.assertion = [ ''no leading "-"'' ];
    };
    log-inside-root = {
      config.boot.initrd.btrfsRollback.logFile = "root/rollback.log";
      expect.assertion = [ ''${opt}.logFile = "root/rollback.log"'' ];
    };
    log-outside-volume = {
      config.boot.initrd.btrfsRollback.logFile = "../rollback.log";
      expect.assertion = [ ''without ".."'' ];
    };
    log-absolute-in-run = {
      config.boot.initrd.btrfsRollback.logFile = "/run/btrfs-rollback.log";
      expect = "clean";
    };
    device-uuid-spec = {
      config = {
        boot.initrd.btrfsRollback.device = "UUID=0f3c8a2e";
        fileSystems."/".device = "UUID=0f3c8a2e";
      };
      expect.assertion = [ "must be an absolute device path" ];
    };
    mapper-without-luks-entry = {
      config = {
        boot.initrd.btrfsRollback.device = "/dev/mapper/crypt";
        fileSystems."/".device = "/dev/mapper/crypt";
      };
      expect.warning = [ ''boot.initrd.luks.devices has no entry named "crypt"'' ];
    };
    # Leftover hand-written rollbacks, in every place the guides put them.
    leftover-post-device-commands = {
      config.boot.initrd.postDeviceCommands = lib.mkAfter ''
        btrfs subvolume delete /mnt/root
        btrfs subvolume snapshot /mnt/root-blank /mnt/root
      '';
      expect.warning = [
        "boot.initrd.postDeviceCommands still contains what looks like a hand-written rollback"
      ];
    };
    leftover-post-resume-commands = {
      config.boot.initrd.postResumeCommands = lib.mkAfter ''
        mkdir /btrfs_tmp
        mount /dev/root_vg/root /btrfs_tmp
        btrfs subvolume delete /btrfs_tmp/root
      '';
      expect.warning = [
        "boot.initrd.postResumeCommands still contains what looks like a hand-written rollback"
      ];
    };
    leftover-systemd-unit = {
      config = {
        imports = [ systemd ];
        boot.initrd.systemd.services.rollback = {
          wantedBy = [ "initrd.target" ];
          before = [ "sysroot.mount" ];
          serviceConfig.Type = "oneshot";
          script = ''
            mount -t btrfs -o subvolid=5 /dev/mapper/cryptroot /mnt
            btrfs subvolume delete /mnt/root
            btrfs subvolume snapshot /mnt/root-blank /mnt/root
          '';
        };
      };
      expect.warning = [
        "boot.initrd.systemd.services.rollback still contains what looks like a hand-written rollback"
      ];
    };
    leftover-systemd-exec-start = {
      config = {
        imports = [ systemd ];
        boot.initrd.systemd.services.wipe-root.serviceConfig.ExecStart = "/bin/btrfs subvolume snapshot /mnt/root-blank /mnt/root";
      };
      expect.warning = [ "boot.initrd.systemd.services.wipe-root still contains" ];
    };
    stop-without-emergency-access = {
      config = {
        imports = [ systemd ];
        boot.initrd.btrfsRollback.onFailure = "stop";
      };
      expect.warning = [ "boot.initrd.systemd.emergencyAccess is false" ];
    };
    no-root-file-system = {
      config.fileSystems = lib.mkForce { };
      expect.assertion = [ ''fileSystems."/" is not defined'' ];
    };
  };

  evaluate =
    name:
    let
      case = cases.${name};
      sys = system case.config;
    in
    {
      inherit name;
      inherit (case) expect;
      problems = problems sys;
      renders = lib.mapAttrs (_: r: {
        text = r.text;
        has = r.has or [ ];
        lacks = r.lacks or [ ];
        equals = r.equals or null;
        runs = r.runs or [ ];
      }) ((case.renders or (_: { })) sys);
      # The configuration file, for check-eval.sh to feed to the real binary.
      config-file =
        if case.config-file or false then sys.config.environment.etc."btrfs-rollback.conf".text else null;
    };
in
if names == null then lib.attrNames cases else map evaluate names
