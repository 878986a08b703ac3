# The NixOS system both stage-1 suites render the module from (tests/vm/render-hook.sh for the
# scripted stage 1, tests/vm/systemd/render-unit.sh for systemd's), evaluated with
# nix-instantiate --eval: nothing is built. LUKS as "cryptroot" on /dev/vda, fileSystems."/" on
# `device` (subvol=root), the module enabled with a stub package (only its store path is used);
# `settings` is a module with what the suite sets on top. Gives the evaluated system and the
# messages of its failing assertions.
{ nixpkgs, module, systemdStage1, device ? "/dev/mapper/cryptroot", settings ? { } }:
let
  system = import "${nixpkgs}/nixos" {
    system = "x86_64-linux";
    configuration = { pkgs, ... }: {
      imports = [ module settings ];
      boot.loader.grub.enable = false;
      boot.initrd.systemd.enable = systemdStage1;
      boot.initrd.luks.devices.cryptroot.device = "/dev/vda";
      fileSystems."/" = { inherit device; fsType = "btrfs"; options = [ "subvol=root" ]; };
      boot.initrd.btrfsRollback.enable = true;
      boot.initrd.btrfsRollback.package = pkgs.writeShellScriptBin "btrfs-rollback" "echo stub";
      system.stateVersion = "24.05";
    };
  };
in
{
  inherit (system) config pkgs;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) system.config.assertions);
}
