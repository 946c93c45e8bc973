#!/usr/bin/env bash
# The service's main job, end to end on this machine.
#
# Today: the local services, a release build, and `orchestratorm8 config check` on
# configs/configuration.yaml (the Go original's file). The full demo (migrate, add
# domains, launch, simulated stage workers, a workflow to completion) is added as
# further steps in main() below: each step is one function, printed as it runs.
#
# Environment: the ${VAR}s of the Go configuration file default to the local services
# (127.0.0.1, user postgres without password, guest/guest); set them to override.
# CPTM8_DEMO_CONFIG selects another configuration file.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

CONFIG="${CPTM8_DEMO_CONFIG:-configs/configuration.yaml}"

# The placeholders of the Go configuration template, pointed at the local services.
: "${POSTGRESQL_HOSTNAME:=127.0.0.1}" "${POSTGRESQL_DB:=cptm8}" "${POSTGRESQL_USERNAME:=postgres}"
: "${POSTGRESQL_PASSWORD:=}" "${RABBITMQ_HOSTNAME:=127.0.0.1}" "${RABBITMQ_USERNAME:=guest}"
: "${RABBITMQ_PASSWORD:=guest}" "${ASMM8_URL:=http://127.0.0.1:8000}" "${NAABUM8_URL:=http://127.0.0.1:8001}"
: "${KATANAM8_URL:=http://127.0.0.1:8002}" "${NUM8_URL:=http://127.0.0.1:8003}"
: "${ORCHESTRATORM8_API_TOKEN:=}"
export POSTGRESQL_HOSTNAME POSTGRESQL_DB POSTGRESQL_USERNAME POSTGRESQL_PASSWORD RABBITMQ_HOSTNAME \
    RABBITMQ_USERNAME RABBITMQ_PASSWORD ASMM8_URL NAABUM8_URL KATANAM8_URL NUM8_URL ORCHESTRATORM8_API_TOKEN

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
}

step_config_check() {
    announce "configuration check of $CONFIG (secrets redacted)"
    [[ -f "$CONFIG" ]] || die "configuration file $CONFIG not found (set CPTM8_DEMO_CONFIG)"
    cargo run --release -q -p orchestratorm8 -- config check --config "$CONFIG"
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
