# The flake's outputs with a nixpkgs tree in place of its input (a flake cannot
# fetch offline): nix/check-eval.sh instantiates the checks and reads the clippy
# check's lint flags.
{ nixpkgs }:
let
  input = {
    lib = import (nixpkgs + "/lib");
    legacyPackages = input.lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (
      system: import nixpkgs { inherit system; }
    );
    outPath = nixpkgs;
  };
  flake = (import ../flake.nix).outputs {
    self = flake // { outPath = ../.; };
    nixpkgs = input;
  };
in
flake
