#!/usr/bin/env bash
# Check a configuration file as the service would load it, without touching any server:
#   bash scripts/check.sh [CONFIG]     (default: configs/configuration.yaml)
# Prints the effective configuration with secrets redacted; exits 2 when it is invalid.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

need_cmd cargo "install Rust (rustup) first; rust-toolchain.toml pins the version"
config="${1:-configs/configuration.yaml}"
exec cargo run -q -p orchestratorm8 -- config check --config "$config"
