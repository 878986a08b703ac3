# btrfs-rollback. Call it from pkgsStatic (the flake does) for a static musl
# binary: the initrd needs no libraries for it, and its store path does not
# depend on the nixpkgs revision of the system that imports the module.
{
  lib,
  installShellFiles,
  rustPlatform,
  stdenv,
}:

let
  manifest = (lib.importTOML ../Cargo.toml).package;
  canRunGen = stdenv.buildPlatform.canExecute stdenv.hostPlatform;
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

  nativeBuildInputs = [ installShellFiles ];

  # The man page and the bash/zsh/fish completions, generated from the clap definition by
  # btrfs-rollback-gen (feature `gen`). It is built by a second cargo call after the binary,
  # so that bin/btrfs-rollback (what goes into the initrd) is exactly the plain release
  # build: building both in one call would unify clap's features (clap_mangen enables `env`).
  # The generator runs on the build machine, so only where that can run the host's code.
  postBuild = lib.optionalString canRunGen ''
    cargo build -j $NIX_BUILD_CORES --frozen --target ${stdenv.hostPlatform.rust.rustcTargetSpec} \
      --features gen --bin btrfs-rollback-gen
  '';

  postInstall = lib.optionalString canRunGen ''
    gen=$(find target -path '*/debug/btrfs-rollback-gen' -type f | head -n 1)
    "$gen" generated
    installManPage generated/btrfs-rollback.1
    installShellCompletion --cmd btrfs-rollback \
      --bash generated/btrfs-rollback.bash \
      --zsh generated/_btrfs-rollback \
      --fish generated/btrfs-rollback.fish
  '';

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
