# examples/disko.nix evaluated with disko's module, our module and a nixpkgs tree
# (nix/check-eval.sh, when DISKO=<disko source> is given: CI has no disko).
{ nixpkgs, module, disko, example }:
let
  lib = import (nixpkgs + "/lib");
  sys = import (nixpkgs + "/nixos") {
    system = "x86_64-linux";
    configuration = { pkgs, ... }: {
      imports = [ (disko + "/module.nix") example module ];
      boot.loader.grub.enable = false;
      boot.initrd.btrfsRollback.enable = true;
      boot.initrd.btrfsRollback.package = pkgs.writeShellScriptBin "btrfs-rollback" "echo stub";
      system.stateVersion = "24.05";
    };
  };
  ours = option: lib.concatMap (d: d.value) (lib.filter (d: d.file == toString module) option.definitionsWithLocations);
in {
  problems = map (a: "assertion: " + a.message) (lib.filter (a: !a.assertion) (ours sys.options.assertions)) ++ map (w: "warning: " + w) (ours sys.options.warnings);
  create = sys.config.disko.devices._create;
  root = { inherit (sys.config.fileSystems."/") device fsType options; };
  luks = sys.config.boot.initrd.luks.devices.cryptroot.device;
}
