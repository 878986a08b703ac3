{
  description = "Crash-safe 'erase your darlings' rollback of a btrfs root subvolume, for NixOS stage 1";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.btrfs-rollback;
        btrfs-rollback = pkgs.pkgsStatic.callPackage ./nix/package.nix { };
      });

      overlays.default = final: _prev: {
        btrfs-rollback = final.pkgsStatic.callPackage ./nix/package.nix { };
      };

      nixosModules = {
        default = self.nixosModules.btrfs-rollback;
        btrfs-rollback =
          { lib, pkgs, ... }:
          {
            imports = [ ./nix/module.nix ];
            boot.initrd.btrfsRollback.package = lib.mkDefault (
              self.packages.${pkgs.stdenv.hostPlatform.system}.btrfs-rollback
                or (pkgs.pkgsStatic.callPackage ./nix/package.nix { })
            );
          };
      };

      checks = forAllSystems (
        pkgs:
        let
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.btrfs-rollback;
          # The same sources and vendored crates, built for the build platform
          # (clippy and rustfmt come from the same nixpkgs as rustc there).
          native = pkgs.callPackage ./nix/package.nix { };
        in
        {
          inherit package;

          # What `--deny warnings` sees depends on clippy's version: a newer nixpkgs
          # brings new lints and would fail this check on code nobody changed. Up to
          # the version .ci/run lints with (Debian's toolchain there: 1.95), every
          # warning fails; with a newer clippy only the correctness and suspicious
          # groups do, and the rest is printed.
          clippy =
            let
              lintedWith = "1.95";
              strict = lib.versionAtLeast lintedWith (lib.versions.majorMinor (lib.getVersion pkgs.clippy));
              lints =
                if strict then
                  "--deny warnings"
                else
                  "--warn warnings --deny clippy::correctness --deny clippy::suspicious";
            in
            native.overrideAttrs (old: {
              pname = "${old.pname}-clippy";
              nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
              # No runHook postBuild: cargoInstallPostBuildHook expects a release build.
              buildPhase = ''
                echo "clippy ${lib.getVersion pkgs.clippy}: ${lints}"
                cargo clippy --offline --all-targets -- ${lints}
              '';
              doCheck = false;
              installPhase = ''
                touch $out
              '';
            });

          rustfmt = pkgs.runCommand "btrfs-rollback-rustfmt" { nativeBuildInputs = [ pkgs.rustfmt ]; } ''
            cd ${native.src}
            find . -name '*.rs' -print0 | xargs -0 rustfmt --check --edition ${(lib.importTOML ./Cargo.toml).package.edition}
            touch $out
          '';
        }
        // lib.mapAttrs' (name: lib.nameValuePair "vm-${name}") (
          import ./nix/tests {
            inherit pkgs;
            module = self.nixosModules.default;
          }
        )
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ (pkgs.callPackage ./nix/package.nix { }) ];
          packages = [
            pkgs.btrfs-progs
            pkgs.clippy
            pkgs.cryptsetup
            pkgs.nixfmt
            pkgs.rust-analyzer
            pkgs.rustfmt
          ];
        };
      });

      # nixfmt is the RFC 166 (nixfmt-rfc-style) formatter; nixos-unstable
      # dropped the nixfmt-rfc-style alias.
      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
