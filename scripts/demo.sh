#!/usr/bin/env bash
# The service's main job, end to end on this machine.
#
# Today: the local services, a release build, and `orchestratorm8 config check` on
# configs/configuration.yaml (the Go original's file). The full demo (migrate, add
# domains, launch, simulated stage workers, a workflow to completion) is added as
# further steps in main() below: each step is one function, printed as it runs.
#
# configs/configuration.yaml defaults every ${VAR:-default} to the local services that
# scripts/services.sh provides (127.0.0.1, user postgres without password, guest/guest);
# set those variables to point elsewhere. CPTM8_DEMO_CONFIG selects another file.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

CONFIG="${CPTM8_DEMO_CONFIG:-configs/configuration.yaml}"

BIN="" # the release binary, set by step_build
STEP=0
announce() {
    STEP=$((STEP + 1))
    printf '\n==> demo step %d: %s\n' "$STEP" "$*"
}

step_services() {
    announce "local PostgreSQL and RabbitMQ"
    bash scripts/services.sh
}

step_build() {
    announce "release build of orchestratorm8"
    need_cmd cargo "install Rust (rustup) first; rust-toolchain.toml pins the version"
    cargo build --release -p orchestratorm8
    BIN="$(cargo_target_dir)/release/orchestratorm8"
    [[ -x "$BIN" ]] || die "the build did not produce $BIN"
}

step_config_check() {
    announce "configuration check of $CONFIG (secrets redacted)"
    [[ -f "$CONFIG" ]] || die "configuration file $CONFIG not found (set CPTM8_DEMO_CONFIG)"
    "$BIN" config check --config "$CONFIG"
}

main() {
    step_services
    step_build
    step_config_check
    # Next steps of the full demo go here, e.g. step_migrate, step_domains,
    # step_launch (with a trap that stops the service), step_workers, step_workflow.
    printf '\n'
    log "done"
}

main "$@"
