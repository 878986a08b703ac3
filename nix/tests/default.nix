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
in
{
  scripted-stage-1 = runTest ./scripted.nix;
  systemd-stage-1 = runTest ./systemd.nix;
  systemd-ordering = runTest ./systemd-ordering.nix;
  systemd-hibernate = runTest ./systemd-hibernate.nix;
  missing-blank-scripted = runTest (import ./missing-blank.nix { systemdStage1 = false; });
  missing-blank-systemd = runTest (import ./missing-blank.nix { systemdStage1 = true; });
}
