#!/usr/bin/env bash
# Mutation testing (docs/TESTING.md): cargo-mutants changes the code (a `+` into a `-`,
# a function body into `Default::default()`, a `<` into `<=`...) and runs the tests of
# the crate; a mutant the tests do not notice ("missed") is an assertion missing.
#
#   scripts/mutants.sh [SCOPE...]        SCOPE: model8 config8 engine amqp8 (default: all,
#                                        one after the other, never in parallel)
#   scripts/mutants.sh --in-diff [BASE]  only the mutants on lines the change touched
#                                        since the merge base with BASE (default main),
#                                        in the scoped files; what scripts/test.sh runs
#   scripts/mutants.sh --list [SCOPE...] list the mutants, run nothing
#
# Scopes (what runs on a 2-core machine in minutes, not hours):
#   model8    crates/model8 whole (pure types and decoders), its own tests
#   config8   config8's pure parsing: duration.rs, env.rs (overrides), expand.rs
#             (${VAR}), secret.rs; its unit tests, load and fuzz_duration (not
#             fuzz_loader, 90 s a run, nor the file-watching tests)
#   engine    controller8's engine decisions: engine/backoff.rs, engine/pipeline.rs,
#             engine/timeouts.rs (retry or fail), role.rs; the unit tests of engine::
#             and role:: (in-memory store and broker, paused clock)
#   amqp8     amqp8's redelivery and routing logic: redelivery.rs, dispatch.rs,
#             headers.rs; amqp8's unit tests (--lib)
# Mutants that cannot be killed (equivalent ones) are excluded by .cargo/mutants.toml,
# each with the reason. Output: target/mutants/<scope>/mutants.out (caught.txt,
# missed.txt, timeout.txt, unviable.txt). Exit status: non-zero when a mutant was missed
# or timed out.
#
# cargo-mutants is installed (once) from crates.io into target/tools/cargo-mutants,
# at the version pinned below. Environment: CPTM8_MUTANTS_JOBS (default 1),
# CPTM8_MUTANTS_TIMEOUT (seconds per test run, default 120), CPTM8_SKIP_MUTANTS=1 makes
# --in-diff a no-op (scripts/test.sh).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

MUTANTS_VERSION="27.1.0"
JOBS="${CPTM8_MUTANTS_JOBS:-1}"
TIMEOUT="${CPTM8_MUTANTS_TIMEOUT:-120}"
ALL_SCOPES=(model8 config8 engine amqp8)

# ensure_cargo_mutants: print the path of cargo-mutants, installing it first when the
# pinned version is not in target/tools/cargo-mutants.
ensure_cargo_mutants() {
    local root="$REPO_ROOT/target/tools/cargo-mutants"
    local bin="$root/bin/cargo-mutants"
    if [[ -x "$bin" ]] && "$bin" mutants --version 2>/dev/null | grep -qF "$MUTANTS_VERSION"; then
        echo "$bin"
        return 0
    fi
    log "tools: installing cargo-mutants $MUTANTS_VERSION from crates.io into $root" >&2
    cargo install --locked --quiet --root "$root" --version "$MUTANTS_VERSION" cargo-mutants >&2 ||
        die "cargo install cargo-mutants $MUTANTS_VERSION failed"
    echo "$bin"
}

# scope_args SCOPE: the cargo-mutants arguments of SCOPE (package, files, test filter).
scope_args() {
    case "$1" in
    model8) echo "--package model8" ;;
    config8)
        echo "--package config8 --test-package config8" \
            "$(for f in $(scope_files config8); do printf -- '--file %s ' "$f"; done)" \
            "-- --lib --test fuzz_duration --test load"
        ;;
    engine)
        echo "--package controller8 --test-package controller8" \
            "$(for f in $(scope_files engine); do printf -- '--file %s ' "$f"; done)" \
            "-- --lib -- engine:: role::"
        ;;
    amqp8)
        echo "--package amqp8 --test-package amqp8" \
            "$(for f in $(scope_files amqp8); do printf -- '--file %s ' "$f"; done)" \
            "-- --lib"
        ;;
    *) die "unknown scope '$1' (one of: ${ALL_SCOPES[*]})" ;;
    esac
}

# scope_files SCOPE: the source files SCOPE mutates (for --in-diff).
scope_files() {
    case "$1" in
    model8) echo "crates/model8/src" ;;
    config8) echo "crates/config8/src/duration.rs crates/config8/src/env.rs crates/config8/src/expand.rs crates/config8/src/secret.rs" ;;
    engine) echo "crates/controller8/src/engine/backoff.rs crates/controller8/src/engine/pipeline.rs crates/controller8/src/engine/timeouts.rs crates/controller8/src/role.rs" ;;
    amqp8) echo "crates/amqp8/src/redelivery.rs crates/amqp8/src/dispatch.rs crates/amqp8/src/headers.rs" ;;
    esac
}

run_scope() {
    local bin="$1" scope="$2"
    shift 2
    local out="$REPO_ROOT/target/mutants/$scope"
    mkdir -p "$out"
    local args
    read -r -a args <<<"$(scope_args "$scope")"
    # Arguments after `--` go to cargo test; ours must come before them.
    local pre=() post=() seen=0 a
    for a in "${args[@]}"; do
        if [[ "$a" == "--" ]] && ((!seen)); then
            seen=1
        elif ((seen)); then
            post+=("$a")
        else
            pre+=("$a")
        fi
    done
    log "$scope: cargo mutants ${pre[*]} $* (jobs $JOBS, timeout ${TIMEOUT}s)"
    local rc=0
    "$bin" mutants --no-shuffle --jobs "$JOBS" --timeout "$TIMEOUT" --output "$out" \
        "${pre[@]}" "$@" ${post[@]+-- "${post[@]}"} || rc=$?
    summarize "$scope" "$out/mutants.out/outcomes.json"
    return "$rc"
}

# summarize SCOPE OUTCOMES_JSON: one line with the counts and the caught ratio
# (caught / (caught + missed + timeout); unviable mutants do not count).
summarize() {
    [[ -f "$2" ]] || return 0
    python3 - "$1" "$2" <<'PY' | sed "s/^/$SCRIPT_NAME: /"
import json, sys
d = json.load(open(sys.argv[2]))
c, m, t, u = (d.get(k, 0) for k in ("caught", "missed", "timeout", "unviable"))
viable = c + m + t
ratio = f"{100 * c / viable:.0f}%" if viable else "n/a"
print(f"{sys.argv[1]}: {d.get('total_mutants', 0)} mutants: {c} caught, {m} missed, "
      f"{t} timeout, {u} unviable; caught ratio {ratio}")
PY
}

main() {
    local list=0 in_diff=0 base=main
    local scopes=()
    while (($#)); do
        case "$1" in
        --list) list=1 ;;
        --in-diff)
            in_diff=1
            if [[ $# -gt 1 && "$2" != -* && ! " ${ALL_SCOPES[*]} " =~ \ $2\  ]]; then
                base="$2"
                shift
            fi
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d'
            return 0
            ;;
        *) scopes+=("$1") ;;
        esac
        shift
    done
    ((${#scopes[@]})) || scopes=("${ALL_SCOPES[@]}")

    if ((in_diff)) && [[ "${CPTM8_SKIP_MUTANTS:-}" == "1" ]]; then
        log "skipped (CPTM8_SKIP_MUTANTS=1)"
        return 0
    fi
    local scope
    for scope in "${scopes[@]}"; do
        scope_args "$scope" >/dev/null
    done

    # --in-diff: the diff of each scope's files since the merge base; a scope whose
    # files did not change costs nothing (cargo-mutants is not even installed).
    local -A diffs=()
    if ((in_diff)); then
        local merge_base
        if ! merge_base="$(git merge-base HEAD "$base" 2>/dev/null)"; then
            log "no merge base between HEAD and '$base' (a shallow clone?); nothing to compare, skipped"
            return 0
        fi
        for scope in "${scopes[@]}"; do
            local diff="$REPO_ROOT/target/mutants/$scope.diff"
            mkdir -p "$(dirname "$diff")"
            # shellcheck disable=SC2046 # one path per word, by design
            git diff "$merge_base" -- $(scope_files "$scope") >"$diff"
            if [[ -s "$diff" ]]; then
                diffs[$scope]="$diff"
            else
                log "$scope: no change since the merge base with $base in its files; nothing to mutate"
            fi
        done
        ((${#diffs[@]})) || return 0
    fi

    local bin rc=0
    bin="$(ensure_cargo_mutants)"
    for scope in "${scopes[@]}"; do
        if ((list)); then
            run_scope "$bin" "$scope" --list || rc=1
        elif ((in_diff)); then
            [[ -n "${diffs[$scope]:-}" ]] || continue
            run_scope "$bin" "$scope" --in-diff "${diffs[$scope]}" || rc=1
        else
            run_scope "$bin" "$scope" || rc=1
        fi
    done
    return "$rc"
}

main "$@"
