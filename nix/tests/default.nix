# The VM tests, one scenario per file. `module` is the NixOS module under
# test with its package set (the flake passes nixosModules.default).
{ pkgs, module }:

let
  runTest =
    test:
    pkgs.testers.runNixOSTest {
      imports = [ test ];
      # Every test boots three or four times, through UEFI and LUKS.
      globalTimeout = 20 * 60;
      extraBaseModules.imports = [ module ];
    };
  # nixpkgs deprecated the scripted stage 1 in 26.05 and plans to remove it.
  hasScriptedStage1 = builtins.pathExists (pkgs.path + "/nixos/modules/system/boot/stage-1-init.sh");
in
{
  systemd-stage-1 = runTest ./systemd.nix;
  systemd-ordering = runTest ./systemd-ordering.nix;
  missing-blank-systemd = runTest (import ./missing-blank.nix { systemdStage1 = true; });
}
# As nixpkgs' own hibernate tests: x86_64 only.
// pkgs.lib.optionalAttrs pkgs.stdenv.hostPlatform.isx86_64 {
  systemd-hibernate = runTest ./systemd-hibernate.nix;
}
// pkgs.lib.optionalAttrs hasScriptedStage1 {
  scripted-stage-1 = runTest ./scripted.nix;
  missing-blank-scripted = runTest (import ./missing-blank.nix { systemdStage1 = false; });
}
