{
  config,
  lib,
  options,
  pkgs,
  utils,
  ...
}:

let
  cfg = config.boot.initrd.btrfsRollback;
  opt = "boot.initrd.btrfsRollback";
  useSystemd = config.boot.initrd.systemd.enable;
  # nixpkgs deprecated the scripted stage 1 in 26.05 and plans to remove it:
  # define and read its options only where they exist (and are not the
  # invisible stubs of lib.mkRemovedOptionModule, which throw when read).
  scriptedAvailable =
    options.boot.initrd ? postResumeCommands
    && (options.boot.initrd.postResumeCommands.visible or true) != false;

  # The one invocation both kinds of stage 1 run (the VM tests mirror it).
  # Exit status: 0 rolled back; 1 refused or failed before the swap, root
  # untouched; 2 usage error; 3 fresh root in place, cleanup of the old one
  # failed (the next boot finishes it). 0 and 3 are a successful boot.
  args = [
    "run"
    "--device"
    cfg.device
    "--root"
    cfg.rootSubvolume
    "--blank"
    cfg.blankSnapshot
    "--log"
    cfg.logFile
    "--wait"
    (toString cfg.waitSeconds)
  ]
  ++ lib.optionals (cfg.keepOldRoots != null) [
    "--keep-old-roots"
    (toString cfg.keepOldRoots)
  ]
  ++ lib.optionals (cfg.keepDays != null) [
    "--keep-days"
    (toString cfg.keepDays)
  ]
  ++ cfg.extraArgs;

  policyText = ''${opt}.onFailure = "${cfg.onFailure}"'';

  # What the person at the console reads after a failed rollback, in both
  # kinds of stage 1: shell lines that read `$rollbackStatus`, the exit status of
  # btrfs-rollback (or systemd's result when it did not exit).
  #
  # In the unit (`inUnit`), the line starts with "<3>": an error in the journal
  # (systemd reads kernel-style priority prefixes on a unit's stdout), and a
  # start timeout has its own words.
  esc = lib.escapeShellArg;
  failureMessage =
    inUnit:
    let
      prefix = lib.optionalString inUnit "<3>";
      nextStep =
        if cfg.onFailure == "continue" then
          "Booting the previous root (${policyText})."
        else
          "Stopping the boot (${policyText}).";
    in
    [
      ''case "$rollbackStatus" in''
      "  1|2) rollbackState=${esc "subvolume ${cfg.rootSubvolume} on ${cfg.device} was left untouched"} ;;"
    ]
    ++ lib.optional inUnit "  timeout) rollbackState=${
      esc "btrfs-rollback did not finish within ${toString startTimeout} s (${opt}.waitSeconds + ${opt}.timeoutSeconds) and was stopped; subvolume ${cfg.rootSubvolume} on ${cfg.device} is either the previous root or a fresh snapshot of ${cfg.blankSnapshot}"
    } ;;"
    ++ [
      "  *) rollbackState=${
        esc "btrfs-rollback ended abnormally; subvolume ${cfg.rootSubvolume} on ${cfg.device} is either the previous root or a fresh snapshot of ${cfg.blankSnapshot}"
      } ;;"
      "esac"
      ''echo "${prefix}btrfs-rollback: ROOT NOT ROLLED BACK (exit status $rollbackStatus): $rollbackState. "${
        esc "${nextStep} Log: ${cfg.logFile} on the top-level volume of ${cfg.device}, and journalctl -b."
      }''
    ];

  # Exit status 3: the fresh root is in place, but (part of) the old one is
  # still on the disk; the binary said what, the next boot retries. A warning at
  # every boot until it is gone, never a silent success.
  cleanupMessage = "btrfs-rollback: OLD ROOT NOT FULLY DELETED (exit status 3): the fresh ${cfg.rootSubvolume} from ${cfg.blankSnapshot} is in place, but parts of the old root are still on ${cfg.device}; the next boot tries again. What is left: the lines above, ${cfg.logFile} on the top-level volume, and btrfs-rollback list.";

  # The unit's start timeout: the wait for the device, then the rollback. With
  # 5,000 nested subvolumes a rollback takes about a second; the margin is for
  # slow disks and a nearly full file system.
  startTimeout = cfg.waitSeconds + cfg.timeoutSeconds;

  # The booted system's and the initrd's /etc/btrfs-rollback.conf: the
  # defaults of `btrfs-rollback list|diff|restore|run`, the same values the
  # boot's run gets as flags.
  configText =
    lib.concatStrings (
      lib.mapAttrsToList (key: value: "${key} = ${toString value}\n") (
        {
          device = cfg.device;
          root = cfg.rootSubvolume;
          blank = cfg.blankSnapshot;
          log = cfg.logFile;
          wait = cfg.waitSeconds;
        }
        // lib.optionalAttrs (cfg.keepOldRoots != null) { keep-old-roots = cfg.keepOldRoots; }
        // lib.optionalAttrs (cfg.keepDays != null) { keep-days = cfg.keepDays; }
      )
    );
  configFileText =
    "# boot.initrd.btrfsRollback: the defaults of btrfs-rollback; the boot's run gets the same values as flags.\n"
    + configText;
  configFile = pkgs.writeText "btrfs-rollback.conf" configFileText;
  indentLines = prefix: lines: lib.concatMapStrings (line: prefix + line + "\n") lines;

  # The scripted stage 1's snippet (postResumeCommands, after the resume attempt).
  scriptedSnippet =
    ''
      # boot.initrd.btrfsRollback: exit status 0 and 3 are a rolled-back root.
      btrfs-rollback ${lib.escapeShellArgs args}
      rollbackStatus=$?
      if [ "$rollbackStatus" -eq 3 ]; then
        echo ${esc cleanupMessage}
        echo ${esc "<12>${cleanupMessage}"} > /dev/kmsg || true
      elif [ "$rollbackStatus" -ne 0 ]; then
    ''
    + indentLines "  " (failureMessage false ++ lib.optional (cfg.onFailure == "stop") "fail")
    + ''
      fi
    '';

  # Hand-written rollbacks, as the usual guides have them: in the scripted
  # hooks (the impermanence README uses postResumeCommands, the seed guide
  # postDeviceCommands) and, since systemd stage 1 became the default, in a unit.
  # (Not the bare blank name: a name like "root" is in nixpkgs' own hooks.)
  leftoverPatterns = [
    "btrfs subvolume delete"
    "btrfs subvolume snapshot"
    "btrfs subvol delete"
    "btrfs subvol snapshot"
  ];
  looksLikeRollback = text: lib.any (pattern: lib.hasInfix pattern text) leftoverPatterns;
  leftoverHooks = map (name: "boot.initrd.${name}") (
    lib.filter (
      name:
      looksLikeRollback (
        # Our own snippet is not a leftover.
        lib.replaceStrings [ scriptedSnippet ] [ "" ] (config.boot.initrd.${name} or "")
      )
    ) (
      lib.optionals scriptedAvailable [
        "preLVMCommands"
        "postDeviceCommands"
        "postResumeCommands"
        "postMountCommands"
      ]
    )
  );
  leftoverUnits = lib.optionals useSystemd (
    lib.mapAttrsToList (name: _: "boot.initrd.systemd.services.${name}") (
      lib.filterAttrs (
        name: svc:
        name != "btrfs-rollback"
        && looksLikeRollback (
          lib.concatStringsSep "\n" (
            [
              (svc.script or "")
              (svc.preStart or "")
              (svc.postStart or "")
            ]
            ++ lib.toList (svc.serviceConfig.ExecStartPre or [ ])
            ++ lib.toList (svc.serviceConfig.ExecStart or [ ])
          )
        )
      ) config.boot.initrd.systemd.services
    )
  );
  leftovers = leftoverHooks ++ leftoverUnits;

  # The root file system and how it names its device and subvolume.
  fsDevice =
    fs:
    if fs.device != null then
      fs.device
    else if fs.label != null then
      "/dev/disk/by-label/${fs.label}"
    else
      null;
  rootFs = config.fileSystems."/" or null;
  rootDevice = if rootFs == null then null else fsDevice rootFs;
  rootOptions = if rootFs == null then [ ] else rootFs.options;

  # Device names that can be compared without knowing the disk; equal after
  # canonicalDevice means the same node:
  #   /dev/disk/by-id/dm-name-NAME is /dev/mapper/NAME;
  #   /dev/VG/LV (LVM's link) is /dev/mapper/VG-LV, "-" in VG and LV doubled.
  # udev's by-uuid/by-label/by-partuuid/... links, /dev/dm-N and UUID=/LABEL=
  # specs cannot be compared (a warning, not an assertion).
  notVolumeGroups = [
    "mapper"
    "disk"
    "md"
    "block"
    "char"
    "bus"
    "bcache"
    "zvol"
    "input"
    "net"
    "pts"
    "shm"
    "snd"
    "dri"
  ];
  lvmName =
    device:
    let
      parts = lib.splitString "/" device;
      vg = lib.elemAt parts 2;
      lv = lib.elemAt parts 3;
    in
    if
      lib.length parts == 4
      && lib.head parts == ""
      && lib.elemAt parts 1 == "dev"
      && vg != ""
      && lv != ""
      && !(lib.elem vg notVolumeGroups)
    then
      { inherit vg lv; }
    else
      null;
  dmEscape = lib.replaceStrings [ "-" ] [ "--" ];
  canonicalDevice =
    device:
    let
      lvm = lvmName device;
    in
    if lib.hasPrefix "/dev/disk/by-id/dm-name-" device then
      "/dev/mapper/" + lib.removePrefix "/dev/disk/by-id/dm-name-" device
    else if lvm != null then
      "/dev/mapper/${dmEscape lvm.vg}-${dmEscape lvm.lv}"
    else
      device;
  comparableDevice =
    device:
    let
      d = canonicalDevice device;
    in
    lib.hasPrefix "/dev/" d && !(lib.hasPrefix "/dev/disk/" d) && !(lib.hasPrefix "/dev/dm-" d);
  devicesComparable =
    rootDevice != null && comparableDevice rootDevice && comparableDevice cfg.device;
  sameDevice = canonicalDevice rootDevice == canonicalDevice cfg.device;

  # Other btrfs file systems whose subvolume lies inside the root subvolume
  # (subvol=root/persist, subvol=/root/home): erased at every boot. btrfs reads
  # subvol= relative to the top-level volume; "/" and "//" change nothing.
  subvolOf =
    fs:
    let
      given = lib.filter (lib.hasPrefix "subvol=") fs.options;
    in
    if given == [ ] then
      null
    else
      lib.concatStringsSep "/" (
        lib.filter (c: c != "" && c != ".") (lib.splitString "/" (lib.removePrefix "subvol=" (lib.last given)))
      );
  insideRoot =
    fs:
    let
      subvol = subvolOf fs;
    in
    subvol != null && lib.hasPrefix "${cfg.rootSubvolume}/" subvol;
  # On the rolled-back file system for sure, or maybe (names that cannot be compared).
  onRollbackDevice =
    fs:
    let
      d = fsDevice fs;
    in
    d != null && (d == rootDevice || d == cfg.device || canonicalDevice d == canonicalDevice cfg.device);
  maybeOnRollbackDevice =
    fs:
    let
      d = fsDevice fs;
    in
    d == null || !(comparableDevice d) || !(comparableDevice cfg.device);
  otherBtrfs = lib.filter (fs: fs.mountPoint != "/" && fs.fsType == "btrfs") (
    lib.attrValues config.fileSystems
  );
  nestedMessage = fs: ''
    ${opt}: fileSystems."${fs.mountPoint}" mounts subvol=${subvolOf fs} of ${toString (fsDevice fs)},
    which lies inside ${opt}.rootSubvolume = "${cfg.rootSubvolume}": it is erased with the
    root at every boot. Make it a subvolume of its own directly under the top-level volume
    (e.g. subvol=${lib.last (lib.splitString "/" (subvolOf fs))}: create it, move the data over, and change
    fileSystems."${fs.mountPoint}".options).
  '';

  subvolOptions = lib.filter (o: lib.hasPrefix "subvol=" o) rootOptions;
  subvolidOptions = lib.filter (o: lib.hasPrefix "subvolid=" o) rootOptions;
  subvolOk = lib.any (
    o:
    lib.elem o [
      "subvol=${cfg.rootSubvolume}"
      "subvol=/${cfg.rootSubvolume}"
    ]
  ) subvolOptions;

  # The LUKS mapping the device should be; not asked of LVM names (an LV inside
  # a LUKS container has its own name).
  mapperName =
    let
      d = canonicalDevice cfg.device;
    in
    if
      lib.hasPrefix "/dev/mapper/" d
      && lvmName cfg.device == null
      && (rootDevice == null || lvmName rootDevice == null)
    then
      lib.removePrefix "/dev/mapper/" d
    else
      null;

  # A name directly under the top-level volume. A leading "-" would read as a
  # flag on the command line.
  isComponent =
    name:
    name != "" && name != "." && name != ".." && !(lib.hasInfix "/" name) && !(lib.hasPrefix "-" name);
  componentMessage = option: value: ''
    ${opt}.${option} = "${value}" must be a single path component (a subvolume directly
    under the top-level volume, subvolid 5): no "/", not "", "." or "..", no leading "-".
    Use e.g. "root".
  '';

  logComponents = lib.splitString "/" cfg.logFile;
  logFileOk =
    if lib.hasPrefix "/" cfg.logFile then
      true
    else
      cfg.logFile != ""
      && !(lib.hasPrefix "-" cfg.logFile)
      && !(lib.elem ".." logComponents)
      && !(lib.elem (lib.head logComponents) [
        cfg.rootSubvolume
        cfg.blankSnapshot
      ]);

  deviceUnit = "${utils.escapeSystemdPath cfg.device}.device";
in
{
  options.boot.initrd.btrfsRollback = {
    enable = lib.mkEnableOption ''
      rolling the btrfs root back at every boot ("erase your darlings"): in stage 1,
      after the LUKS unlock and after resume from hibernation, btrfs-rollback deletes
      subvolume {option}`boot.initrd.btrfsRollback.rootSubvolume` with every subvolume
      nested in it and replaces it with a fresh snapshot of the read-only
      {option}`boot.initrd.btrfsRollback.blankSnapshot`.
      Works with the scripted stage 1 and with systemd in stage 1, and replaces a
      hand-written rollback in {option}`boot.initrd.postDeviceCommands`
    '';

    package = lib.mkOption {
      type = lib.types.package;
      default =
        pkgs.btrfs-rollback or (throw ''
          ${opt}.package is not set and pkgs has no btrfs-rollback. Import the module
          as the btrfs-rollback flake's nixosModules.default (it sets the package), add the
          flake's overlays.default to nixpkgs.overlays, or set ${opt}.package, e.g. to
          pkgs.pkgsStatic.callPackage "''${btrfs-rollback-source}/nix/package.nix" { }.
        '');
      defaultText = lib.literalExpression "pkgs.btrfs-rollback";
      description = ''
        The btrfs-rollback package. The flake's `nixosModules.default` sets it to the
        flake's static build with `lib.mkDefault`; the flake's `overlays.default` provides
        `pkgs.btrfs-rollback`. A statically linked build is preferred: the scripted stage 1
        copies the binary into the initrd with its libraries, systemd's stage 1 with its
        closure.
      '';
    };

    device = lib.mkOption {
      type = lib.types.str;
      default = "/dev/mapper/cryptroot";
      example = "/dev/disk/by-uuid/0f3c8a2e-5b1d-4c47-9e8b-6a1f2d3c4b5a";
      description = ''
        The block device holding the btrfs file system, as it is named once opened: for a
        root on LUKS, the mapped device of the entry in {option}`boot.initrd.luks.devices`
        (`/dev/mapper/<name>`). It must be the device of `fileSystems."/"`. With systemd in
        stage 1 the rollback unit wants this device's unit and starts after it; if the device
        never appears, the unit still runs when systemd gives up waiting, and btrfs-rollback
        reports the missing device (exit status 1, see
        {option}`boot.initrd.btrfsRollback.onFailure`).
      '';
    };

    rootSubvolume = lib.mkOption {
      type = lib.types.str;
      default = "root";
      description = ''
        The subvolume mounted as `/` (`subvol=root` in `fileSystems."/".options`), directly
        under the top-level volume. It is deleted at every boot, with every subvolume nested
        in it, and replaced by a snapshot of
        {option}`boot.initrd.btrfsRollback.blankSnapshot`.
      '';
    };

    blankSnapshot = lib.mkOption {
      type = lib.types.str;
      default = "root-blank";
      description = ''
        The read-only snapshot, directly under the top-level volume, that every boot starts
        from. Take it once, right after creating an empty root:
        `btrfs subvolume snapshot -r /mnt/root /mnt/root-blank`.
        If it is missing, btrfs-rollback refuses and leaves the root untouched; see
        {option}`boot.initrd.btrfsRollback.onFailure`.
      '';
    };

    logFile = lib.mkOption {
      type = lib.types.str;
      default = "rollback.log";
      example = "/run/btrfs-rollback.log";
      description = ''
        File that every run appends to. A relative path is on the top-level volume
        (subvolid 5, outside the root subvolume, so it survives the rollback); read it with
        `mount -o subvolid=5 /dev/mapper/cryptroot /mnt && cat /mnt/rollback.log`.
        An absolute path is in the initrd: `/run/…` is carried over into the booted system
        (until the next boot), anything else is lost at switch-root.
      '';
    };

    waitSeconds = lib.mkOption {
      type = lib.types.ints.unsigned;
      default = 10;
      description = ''
        How long btrfs-rollback waits for {option}`boot.initrd.btrfsRollback.device` to
        appear before it gives up (exit status 1, root untouched). With systemd in stage 1
        the unit starts once the device's unit is up or systemd stopped waiting for it
        (after `DefaultDeviceTimeoutSec`, 90 s), so this is the last few seconds of grace.
      '';
    };

    timeoutSeconds = lib.mkOption {
      type = lib.types.ints.positive;
      default = 300;
      description = ''
        systemd stage 1: how long the rollback may take once the device is there. The unit's
        `TimeoutStartSec` is this plus {option}`boot.initrd.btrfsRollback.waitSeconds`; when
        it is hit, systemd stops btrfs-rollback and the console and journal say
        `btrfs-rollback: ROOT NOT ROLLED BACK (exit status timeout): …` (then
        {option}`boot.initrd.btrfsRollback.onFailure` applies). A rollback is crash-safe, so
        the root is either the previous one or a fresh snapshot. Even 5,000 nested
        subvolumes take about a second; the margin is for slow disks and a full file system.
        The scripted stage 1 has no timeout.
      '';
    };

    keepOldRoots = lib.mkOption {
      type = lib.types.nullOr lib.types.ints.positive;
      default = null;
      example = 10;
      description = ''
        Keep old roots instead of deleting them: each boot's old root, with every subvolume
        nested in it, is moved to `old_roots/<its creation time>` on the top-level volume, and
        at most this many are kept (the newest always). `null` (the default) deletes the old
        root, unless {option}`boot.initrd.btrfsRollback.keepDays` is set. See what the next
        boot erases with `btrfs-rollback diff`, and bring an old root back with
        `btrfs-rollback restore NAME` (names from `btrfs-rollback list`).
      '';
    };

    keepDays = lib.mkOption {
      type = lib.types.nullOr lib.types.ints.positive;
      default = null;
      example = 30;
      description = ''
        Keep old roots (as {option}`boot.initrd.btrfsRollback.keepOldRoots` does) for this many
        days after they were retired (replaced); older ones are pruned at boot, the newest never. With
        both options set, an old root goes when it is past either limit.
      '';
    };

    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "--verbose" ];
      description = ''
        Extra arguments appended to
        `btrfs-rollback run --device … --root … --blank … --log … --wait …`.
      '';
    };

    onFailure = lib.mkOption {
      type = lib.types.enum [
        "continue"
        "stop"
      ];
      default = "continue";
      description = ''
        What a failed rollback does to the boot. btrfs-rollback fails only before it
        touches anything (exit status 1, or 2 for a usage error): the root subvolume is
        then exactly as the previous boot left it. A fresh root whose old copy could not be
        cleaned up (exit status 3) is a success; the next run finishes the cleanup.

        - `"continue"` (default): say so loudly on the console and in the journal, and
          boot the previous, untouched root. The machine stays usable (and reachable to
          fix), at the cost of one boot with the state of the last one.
        - `"stop"`: do not boot the previous root. Scripted stage 1: stage 1's `fail`
          prompt (reboot, or a shell with `boot.shell_on_fail`; a panic with
          `boot.panic_on_fail`). systemd stage 1: `sysroot.mount` requires the rollback
          unit, so the boot goes to `emergency.target` (set
          {option}`boot.initrd.systemd.emergencyAccess` to get a shell there).
      '';
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = rootFs != null;
            message = ''
              ${opt}.enable is set but fileSystems."/" is not defined. Mount subvolume
              "${cfg.rootSubvolume}" of ${cfg.device} as "/":
                fileSystems."/" = { device = "${cfg.device}"; fsType = "btrfs"; options = [ "subvol=${cfg.rootSubvolume}" ]; };
            '';
          }
          {
            assertion = rootFs != null -> rootFs.fsType == "btrfs";
            message = ''
              ${opt}: fileSystems."/".fsType is "${rootFs.fsType or ""}", but the rollback only
              works for a btrfs root. Set fileSystems."/".fsType = "btrfs" (with
              options = [ "subvol=${cfg.rootSubvolume}" ]), or disable ${opt}.
            '';
          }
          {
            assertion = rootFs != null && devicesComparable -> sameDevice;
            message = ''
              ${opt}.device is "${cfg.device}" but fileSystems."/".device is
              "${toString rootDevice}": the rollback would replace a subvolume on a different
              file system than the one mounted as "/". Set ${opt}.device = "${toString rootDevice}",
              or fileSystems."/".device = "${cfg.device}".
            '';
          }
          {
            assertion = rootFs != null && rootFs.fsType == "btrfs" -> subvolOk || subvolidOptions != [ ];
            message = ''
              ${opt}: fileSystems."/".options must mount the rolled-back subvolume, with
              "subvol=${cfg.rootSubvolume}" (or "subvol=/${cfg.rootSubvolume}"), but they are
              [ ${lib.concatMapStringsSep " " (o: ''"${o}"'') rootOptions} ].
              ${
                if subvolOptions == [ ] then
                  ''Without subvol= the file system's default subvolume is mounted, whatever it is. Add "subvol=${cfg.rootSubvolume}" to fileSystems."/".options.''
                else
                  ''Change it to "subvol=${cfg.rootSubvolume}", or set ${opt}.rootSubvolume to the subvolume you mount.''
              }
            '';
          }
          {
            assertion = isComponent cfg.rootSubvolume;
            message = componentMessage "rootSubvolume" cfg.rootSubvolume;
          }
          {
            assertion = isComponent cfg.blankSnapshot;
            message = componentMessage "blankSnapshot" cfg.blankSnapshot;
          }
          {
            assertion = cfg.rootSubvolume != cfg.blankSnapshot;
            message = ''
              ${opt}.rootSubvolume and ${opt}.blankSnapshot are both "${cfg.rootSubvolume}":
              the blank snapshot must be a separate, read-only subvolume, e.g. "root-blank".
            '';
          }
          {
            assertion = logFileOk;
            message = ''
              ${opt}.logFile = "${cfg.logFile}" must be a path relative to the top-level
              volume, without ".." or a leading "-", and outside "${cfg.rootSubvolume}" and
              "${cfg.blankSnapshot}" (a log inside the root would be erased with it); or an
              absolute path in the initrd. Use e.g. "rollback.log".
            '';
          }
          {
            assertion = lib.hasPrefix "/" cfg.device;
            message = ''
              ${opt}.device = "${cfg.device}" must be an absolute device path such as
              "/dev/mapper/cryptroot" (UUID=… and LABEL=… are not accepted: use
              /dev/disk/by-uuid/… or /dev/disk/by-label/…).
            '';
          }
          {
            assertion = !useSystemd -> scriptedAvailable;
            message = ''
              ${opt}: this nixpkgs has no scripted stage 1 (boot.initrd.postResumeCommands does
              not exist). Use systemd in stage 1: boot.initrd.systemd.enable = true.
            '';
          }
        ]
        ++ map (fs: {
          assertion = onRollbackDevice fs -> !(insideRoot fs);
          message = nestedMessage fs;
        }) otherBtrfs
        ++ [
          {
            assertion = config.boot.initrd.enable;
            message = ''
              ${opt}.enable needs an initrd (boot.initrd.enable = true): the rollback runs in
              stage 1, before the root is mounted.
            '';
          }
        ];

        # `btrfs-rollback list|diff|restore|run` on the booted system, with the
        # boot's settings as their defaults.
        environment.systemPackages = [ cfg.package ];
        environment.etc."btrfs-rollback.conf".text = configFileText;

        warnings =
          lib.optional (rootFs != null && rootDevice != null && lib.hasPrefix "/" cfg.device && !devicesComparable) ''
            ${opt}: cannot check statically that ${opt}.device ("${cfg.device}") is the
            device of fileSystems."/" ("${rootDevice}"): one of them is a /dev/disk/by-* link or
            /dev/dm-N.
            Make sure both name the same opened btrfs device (for a root on LUKS:
            "/dev/mapper/<name of the boot.initrd.luks.devices entry>"), or the rollback
            resets a different file system than the one mounted as "/".
          ''
          ++ lib.optional (rootFs != null && !subvolOk && subvolidOptions != [ ]) ''
            ${opt}: fileSystems."/" is mounted by ${lib.head subvolidOptions}. Subvolume ids
            change at every rollback (the root is a new snapshot each boot), so this mounts
            the wrong subvolume from the second boot on. Use "subvol=${cfg.rootSubvolume}"
            instead.
          ''
          ++
            lib.optional
              (
                mapperName != null
                && config.boot.initrd.luks.devices != { }
                && !(config.boot.initrd.luks.devices ? ${mapperName})
              )
              ''
                ${opt}.device is "${cfg.device}" but boot.initrd.luks.devices has no entry
                named "${mapperName}" (it has: ${lib.concatStringsSep ", " (lib.attrNames config.boot.initrd.luks.devices)}).
                Unless ${cfg.device} is created another way (LVM, a custom unit), set
                ${opt}.device = "/dev/mapper/<name of the LUKS entry>".
              ''
          ++ map (fs: ''
            ${lib.removeSuffix "\n" (nestedMessage fs)}
            (A warning, not an error: ${toString (fsDevice fs)} cannot be compared with ${opt}.device
            = "${cfg.device}" statically; if they are the same file system, this is an error.)
          '') (lib.filter (fs: insideRoot fs && !(onRollbackDevice fs) && maybeOnRollbackDevice fs) otherBtrfs)
          ++ lib.optional (leftovers != [ ]) ''
            ${opt} is enabled, but ${lib.concatStringsSep " and " leftovers} still
            ${if lib.length leftovers == 1 then "contains" else "contain"} what looks like a hand-written rollback (btrfs subvolume
            delete/snapshot). Running both erases the root twice, and a
            hand-written rollback usually runs before resume from hibernation. Remove the old
            snippet (the block with "btrfs subvolume delete" in your impermanence module) or unit.
          ''
          ++
            lib.optional (useSystemd && cfg.onFailure == "stop" && lib.elem config.boot.initrd.systemd.emergencyAccess [ false null ])
              ''
                ${opt}.onFailure = "stop" sends a failed rollback to emergency.target, but
                boot.initrd.systemd.emergencyAccess is false, so there is no shell there: the
                machine just waits. Set boot.initrd.systemd.emergencyAccess (true, or a hashed
                password), or use onFailure = "continue".
              '';
      }

      # Scripted stage 1: after LUKS (preLVMCommands/postDeviceCommands) and after
      # the resume attempt, before the root is mounted.
      (lib.mkIf (!useSystemd) (
        lib.optionalAttrs scriptedAvailable {
          boot.initrd.extraUtilsCommands = ''
            copy_bin_and_libs ${cfg.package}/bin/btrfs-rollback
          '';
          boot.initrd.extraUtilsCommandsTest = ''
            $out/bin/btrfs-rollback --version
          '';
          boot.initrd.postResumeCommands = lib.mkAfter scriptedSnippet;
          # For the failure prompt's shell: the same defaults as the boot's run.
          boot.initrd.extraFiles."/etc/btrfs-rollback.conf".source = configFile;
        }
      ))

      # systemd stage 1: a oneshot between the opened device and sysroot.mount.
      (lib.mkIf useSystemd {
        boot.initrd.systemd.storePaths = [ "${cfg.package}/bin/btrfs-rollback" ];
        # For a rescue shell in the initrd: the same binary, by name.
        boot.initrd.systemd.extraBin.btrfs-rollback = "${cfg.package}/bin/btrfs-rollback";
        # ... with the boot's settings as its defaults.
        boot.initrd.systemd.contents."/etc/btrfs-rollback.conf".text = configFileText;

        boot.initrd.systemd.services.btrfs-rollback = {
          description = "Roll back btrfs subvolume ${cfg.rootSubvolume} to ${cfg.blankSnapshot}";
          wantedBy = [ "initrd.target" ];
          # "stop": a failed rollback fails sysroot.mount (dependency), and with
          # it initrd-root-fs.target, whose OnFailure= is emergency.target.
          requiredBy = lib.optional (cfg.onFailure == "stop") "sysroot.mount";
          # A soft dependency: if the device never appears, systemd's device job
          # times out and the unit still runs, so btrfs-rollback (--wait) reports
          # the missing device and onFailure applies. (BindsTo=/Requires= would
          # fail the unit as a dependency: no ExecStopPost, no message.)
          wants = [ deviceUnit ];
          after = [
            deviceUnit
            "local-fs-pre.target"
            # systemd >= 255 (nixpkgs 24.05 and later). Resume must have been
            # attempted first: rolling back under a hibernated system corrupts it.
            # (Older systemd's systemd-hibernate-resume@.service was also ordered
            # before local-fs-pre.target.)
            "systemd-hibernate-resume.service"
          ];
          before = [
            "sysroot.mount"
            "initrd-root-fs.target"
            "shutdown.target"
          ];
          conflicts = [ "shutdown.target" ];
          unitConfig = {
            DefaultDependencies = false;
            AssertPathExists = "/etc/initrd-release";
          };
          serviceConfig = {
            Type = "oneshot";
            RemainAfterExit = true;
            ExecStart = utils.escapeSystemdExecArgs ([ "${cfg.package}/bin/btrfs-rollback" ] ++ args);
            # Fresh root in place, only the cleanup of the old one failed.
            SuccessExitStatus = 3;
            # Type=oneshot has no start timeout by default: a hang would be a boot
            # that never ends. When hit: SIGTERM, then ExecStopPost says so.
            TimeoutStartSec = "${toString startTimeout}s";
            StandardOutput = "journal+console";
            StandardError = "journal+console";
          };
          # Exit status 3 counts as success, so ExecStopPost does not run for it
          # (RemainAfterExit): ExecStartPost asks systemd for the status and makes
          # it a warning ("<4>": journal priority) at every boot.
          postStart = ''
            if [ "$(systemctl show --property=ExecMainStatus --value btrfs-rollback.service || true)" = 3 ]; then
              echo ${esc "<4>${cleanupMessage}"}
            fi
          '';
          # ExecStopPost: runs after a failed start too, with $SERVICE_RESULT
          # ("exit-code", "timeout", "signal", ...).
          postStop =
            ''
              if [ "$SERVICE_RESULT" != success ]; then
                if [ "$SERVICE_RESULT" = timeout ]; then
                  rollbackStatus=timeout
                else
                  rollbackStatus=''${EXIT_STATUS:-$SERVICE_RESULT}
                fi
            ''
            + indentLines "  " (failureMessage true)
            + ''
              fi
            '';
        };
      })
    ]
  );
}
