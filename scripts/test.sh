#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run):
#   services   scripts/services.sh: local PostgreSQL and RabbitMQ up (integration tests
#              use the real services)
#   lockfile   Cargo.lock matches the manifests (the Docker build uses --locked)
#   fmt        cargo fmt --all -- --check
#   clippy     cargo clippy --workspace --all-targets -- -D warnings
#   boundaries controller8 builds without any implementation of db8/amqp8, and each
#              implementation feature of db8 and amqp8 builds on its own
#   test       cargo test --workspace --all-targets --no-fail-fast
#   doctest    cargo test --workspace --doc --no-fail-fast
#   doc        cargo doc --workspace --no-deps with RUSTDOCFLAGS="-D warnings"
#   browser    scripts/browser.sh: the console in headless Chromium (playwright-core)
#              and schemathesis against the live server's OpenAPI document, on the
#              real binary, PostgreSQL and RabbitMQ (installs chromium with apt-get
#              and playwright-core with npm when missing)
#   deploy     scripts/validate-manifests.sh: Kubernetes overlays rendered and validated
#              offline, each overlay's configuration loaded by the built binary, the
#              Dockerfile and compose file linted, every script shellchecked
#   mutants    scripts/mutants.sh --in-diff main: mutation testing (cargo-mutants) of the
#              lines this branch changed since its merge base with main, in the scoped
#              pure modules (docs/TESTING.md); nothing to do on main itself.
#              CPTM8_SKIP_MUTANTS=1 skips it (the summary says so)
#   fault      scripts/fault.sh --quick: the fault-injection suite (docs/FAULTS.md),
#              3 kill -9 rounds; it restarts and stops the local RabbitMQ and
#              PostgreSQL, so it runs last, alone. Needs root (rabbitmqctl,
#              pg_ctlcluster). CPTM8_SKIP_FAULT=1 skips it (the summary says so).
# Every step runs even when an earlier one failed (but services), and the script exits
# non-zero when any failed, naming them.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

if [[ "${CI:-}" == "true" ]]; then
    # A clean clone builds once: incremental artefacts would only cost time and disk.
    export CARGO_INCREMENTAL=0
fi

need_cmd cargo "install Rust (rustup) first; rust-toolchain.toml pins the version"

FAILED=()
SUMMARY=()

# step NAME CMD...: run CMD as step NAME, timing it and recording a failure. CMD must
# return its failure, never exit (no `die` inside a step).
step() {
    local name="$1"
    shift
    local start rc=0
    start="$(now_ms)"
    printf '\n==> %s: %s\n' "$name" "$*"
    "$@" || rc=$?
    if ((rc == 0)); then
        SUMMARY+=("$(printf '  %-9s ok      %6ss' "$name" "$(elapsed_s "$start")")")
    else
        SUMMARY+=("$(printf '  %-9s FAILED  %6ss  (exit %d)' "$name" "$(elapsed_s "$start")" "$rc")")
        FAILED+=("$name")
    fi
    return 0
}

lockfile_step() {
    if ! cargo metadata --locked --format-version 1 >/dev/null; then
        warn "Cargo.lock is out of date: run a cargo build and commit Cargo.lock"
        return 1
    fi
    echo "Cargo.lock is up to date"
}

boundaries_step() {
    cargo check -p controller8 --lib &&
        cargo check -p db8 --lib --no-default-features --features postgres &&
        cargo check -p db8 --lib --no-default-features --features memory &&
        cargo check -p amqp8 --lib --no-default-features --features rabbitmq &&
        cargo check -p amqp8 --lib --no-default-features --features memory
}

deploy_step() {
    local bin
    bin="$(cargo_target_dir)/debug/orchestratorm8"
    if [[ -x "$bin" ]]; then
        ORCHESTRATORM8_BIN="$bin" bash scripts/validate-manifests.sh
    else
        warn "$bin was not built (test step failed?): overlay configurations not loaded"
        bash scripts/validate-manifests.sh
        return 1
    fi
}

main() {
    local start
    start="$(now_ms)"
    log "$(cargo --version), $(rustc --version)"
    step services bash scripts/services.sh
    if [[ " ${FAILED[*]} " == *" services "* ]]; then
        die "PostgreSQL/RabbitMQ are not available; not running the tests"
    fi
    step lockfile lockfile_step
    step fmt cargo fmt --all -- --check
    step clippy cargo clippy --workspace --all-targets -- -D warnings
    step boundaries boundaries_step
    step test cargo test --workspace --all-targets --no-fail-fast
    step doctest cargo test --workspace --doc --no-fail-fast
    step doc env RUSTDOCFLAGS="${RUSTDOCFLAGS:+$RUSTDOCFLAGS }-D warnings" cargo doc --workspace --no-deps
    step browser bash scripts/browser.sh
    step deploy deploy_step
    if [[ "${CPTM8_SKIP_MUTANTS:-}" == "1" ]]; then
        SUMMARY+=("$(printf '  %-9s SKIPPED (CPTM8_SKIP_MUTANTS=1)' mutants)")
    else
        step mutants bash scripts/mutants.sh --in-diff main
    fi
    if [[ "${CPTM8_SKIP_FAULT:-}" == "1" ]]; then
        SUMMARY+=("$(printf '  %-9s SKIPPED (CPTM8_SKIP_FAULT=1)' fault)")
    else
        step fault bash scripts/fault.sh --quick
    fi

    printf '\n%s: summary (%ss in all)\n' "$SCRIPT_NAME" "$(elapsed_s "$start")"
    printf '%s\n' "${SUMMARY[@]}"
    if ((${#FAILED[@]} > 0)); then
        die "failed steps: ${FAILED[*]}"
    fi
    log "every step succeeded"
}

main "$@"
