#!/usr/bin/env bash
# Static checks only, no services needed: rustfmt, clippy, and the deployment checks of
# scripts/validate-manifests.sh (Kubernetes manifests, Dockerfile, compose file,
# and every script through shellcheck). Exits non-zero when any of them fails.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

need_cmd cargo "install Rust (rustup) first; rust-toolchain.toml pins the version"
failed=()

boundaries() {
    cargo check -p controller8 --lib &&
        cargo check -p db8 --lib --no-default-features --features postgres &&
        cargo check -p db8 --lib --no-default-features --features memory &&
        cargo check -p amqp8 --lib --no-default-features --features rabbitmq &&
        cargo check -p amqp8 --lib --no-default-features --features memory
}
log "cargo fmt --all -- --check"
cargo fmt --all -- --check || failed+=(fmt)
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || failed+=(clippy)
# The boundaries the compiler enforces (docs/ARCHITECTURE.md): controller8 builds with
# no implementation of db8 or amqp8, and each implementation builds on its own.
log "boundaries: controller8 without implementations; db8/amqp8 feature by feature"
boundaries || failed+=(boundaries)
log "scripts/validate-manifests.sh"
bash scripts/validate-manifests.sh || failed+=(manifests)
((${#failed[@]} == 0)) || die "failed: ${failed[*]}"
log "clean"
