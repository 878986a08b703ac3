# Sourced by tests/vm/render-hook.sh and tests/vm/systemd/render-unit.sh, which evaluate
# nix/module.nix in a NixOS system (nix-instantiate --eval, nothing is built). Expects $repo
# (the checkout); sets $nixpkgs to scripts/nixpkgs.sh's tree (exit 3 without one, or without
# nix-instantiate) and, unless the caller has one, a throwaway NIX_CONF_DIR that keeps Nix
# offline and off the build users.
nixpkgs=$("$repo/scripts/nixpkgs.sh")
command -v nix-instantiate >/dev/null || { echo "$(basename "$0"): nix-instantiate missing (apt-get install nix-bin)" >&2; exit 3; }
if [ -z "${NIX_CONF_DIR:-}" ]; then
  NIX_CONF_DIR=$(mktemp -d)
  export NIX_CONF_DIR
  trap 'rm -rf "$NIX_CONF_DIR"' EXIT
  printf 'build-users-group =\nexperimental-features = nix-command flakes\nsubstituters =\nsandbox = false\n' >"$NIX_CONF_DIR/nix.conf"
fi
