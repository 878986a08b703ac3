# btrfs-rollback. Call it from pkgsStatic (the flake does) for a static musl
# binary: the initrd needs no libraries for it, and its store path does not
# depend on the nixpkgs revision of the system that imports the module.
{
  lib,
  rustPlatform,
  stdenv,
}:

let
  manifest = (lib.importTOML ../Cargo.toml).package;
in
rustPlatform.buildRustPackage {
  pname = manifest.name;
  inherit (manifest) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      (lib.fileset.maybeMissing ../tests)
      (lib.fileset.maybeMissing ../examples)
      (lib.fileset.maybeMissing ../README.md)
      (lib.fileset.maybeMissing ../rustfmt.toml)
      (lib.fileset.maybeMissing ../.rustfmt.toml)
      (lib.fileset.maybeMissing ../clippy.toml)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # Unprivileged tests only: the privileged tier needs root and loop devices,
  # and skips without root unless CI is set (then it must run, and would fail
  # here). The sandbox has no CI variable unless the caller's env leaks in.
  # A static build also runs tests/static_binary.rs on the binary just built.
  preCheck =
    ''
      unset CI
    ''
    + lib.optionalString stdenv.hostPlatform.isStatic ''
      export BTRFS_ROLLBACK_STATIC_BIN=$(find target -path '*/release/btrfs-rollback' -type f | head -n 1)
    '';

  meta = {
    description = manifest.description;
    license = lib.licenses.mit;
    mainProgram = "btrfs-rollback";
    platforms = lib.platforms.linux;
  };
}
