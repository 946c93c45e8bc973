#!/usr/bin/env bash
# Fault-injection suite (docs/FAULTS.md): the real orchestratorm8 binary against the
# local PostgreSQL and RabbitMQ while they restart, stop, raise a memory alarm, or while
# the service is killed with -9 at random points.
#
#   bash scripts/fault.sh [--quick] [--rounds N] [--seed N] [FILTER...]   (= just fault ...)
#
#   FILTER     run only the tests whose name contains one of these words
#   --quick    the CI subset: 3 kill -9 rounds instead of 20 (every other fault as is)
#   --rounds N kill -9 rounds (default 20; env FAULT_KILL_ROUNDS)
#   --seed N   seed of the kill -9 test's random kill points (env FAULT_SEED); every run
#              prints the seed it used
#   --list     list the tests (the FILTERs select) and exit
#
# The orchestrator logs of every test are copied to target/fault/<test>/ (env
# FAULT_LOGS_DIR overrides); a failed test's are also kept where it says.
#
# The tests are #[ignore]d in the normal test suite (they stop the shared services);
# this script runs them one at a time (--ignored --test-threads=1). Tests that stop or
# alarm a service hold the EXCLUSIVE lock on /tmp/cptm8-services.lock (other test runs
# wait), and restore the service in a drop guard, also when they fail. A run interrupted
# by a signal runs no destructor, so this script restores everything again at the end,
# whatever happened: under the exclusive lock, it starts the RabbitMQ application and
# PostgreSQL when they are down and puts the memory watermark it found back, then runs
# scripts/services.sh.
#
# Needs root (or a user allowed to run rabbitmqctl and pg_ctlcluster), the PostgreSQL
# cluster serving port 5432 (found with pg_lsclusters, passed to the tests as
# CPTM8_PG_CLUSTER="<version> <name>"), and what scripts/services.sh sets up.
#
# Exit status: 0 when every selected test ran and passed, 1 when one failed (the tests
# are named), 2 on a usage error, a FILTER selecting no test among them.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

LOCK_FILE=/tmp/cptm8-services.lock
TESTS=(fault_broker fault_postgres fault_kill fault_fast_worker fault_ring fault_chain)
export PATH="$PATH:/usr/sbin:/sbin"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

# --- restoring the services -----------------------------------------------------------
watermark_file() { echo "/tmp/cptm8-fault-watermark"; }

# "<version> <name>" of the Debian PostgreSQL cluster on port 5432 (e.g. "15 main").
pg_cluster() {
    if [[ -n "${CPTM8_PG_CLUSTER:-}" ]]; then
        echo "$CPTM8_PG_CLUSTER"
        return
    fi
    pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2; exit }'
}

# Called (as `fault.sh --restore`) under the exclusive lock, with the lock's descriptor
# closed, so that no daemon started here inherits it.
restore_services() {
    local wm
    if ! rabbitmq-diagnostics -q check_running >/dev/null 2>&1 &&
        rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        log "restoring: rabbitmqctl start_app"
        rabbitmqctl -q start_app </dev/null >/dev/null 2>&1 || warn "rabbitmqctl start_app failed"
    fi
    wm="$(cat "$(watermark_file)" 2>/dev/null || true)"
    if [[ "$wm" =~ ^0?\.[0-9]+$ ]]; then
        rabbitmqctl -q set_vm_memory_high_watermark "$wm" </dev/null >/dev/null 2>&1 ||
            warn "could not put the RabbitMQ memory watermark back to $wm"
    fi
    if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
        local cluster
        read -r -a cluster <<<"$(pg_cluster)"
        if ((${#cluster[@]} != 2)); then
            warn "restoring: no PostgreSQL cluster on port 5432 in pg_lsclusters; start it by hand"
            return
        fi
        log "restoring: pg_ctlcluster ${cluster[*]} start"
        pg_ctlcluster --skip-systemctl-redirect "${cluster[@]}" start </dev/null >/dev/null 2>&1 ||
            warn "pg_ctlcluster ${cluster[*]} start failed"
    fi
}

if [[ "${1:-}" == "--restore" ]]; then
    restore_services
    exit 0
fi

restore() {
    local rc=$?
    trap - EXIT INT TERM
    if command -v flock >/dev/null 2>&1; then
        flock -x -o -w 600 "$LOCK_FILE" bash "${BASH_SOURCE[0]}" --restore ||
            warn "could not take $LOCK_FILE within 600 s to restore the services"
    else
        bash "${BASH_SOURCE[0]}" --restore
    fi
    bash scripts/services.sh >/dev/null || warn "scripts/services.sh failed: check PostgreSQL and RabbitMQ"
    exit "$rc"
}

# --- arguments ------------------------------------------------------------------------
filters=()
list=0
while (($#)); do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --list) list=1 ;;
        --quick) export FAULT_KILL_ROUNDS="${FAULT_KILL_ROUNDS:-3}" ;;
        --rounds | --seed)
            [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || {
                echo "fault: $1 needs a number" >&2
                exit 2
            }
            if [[ "$1" == --rounds ]]; then
                [[ "$2" -ge 1 ]] || {
                    echo "fault: --rounds must be at least 1" >&2
                    exit 2
                }
                export FAULT_KILL_ROUNDS="$2"
            else
                export FAULT_SEED="$2"
            fi
            shift
            ;;
        -*)
            echo "fault: unknown option $1 (see --help)" >&2
            exit 2
            ;;
        *) filters+=("$1") ;;
    esac
    shift
done

need_cmd cargo "install Rust (rustup) first; rust-toolchain.toml pins the version"

# matching_tests T: the fault tests of file T the filters select, one per line.
matching_tests() {
    cargo test -q -p orchestratorm8 --test "$1" -- --ignored --list "${filters[@]}" 2>/dev/null |
        sed -n "s/: test\$//p"
}

# Counts the selected tests of every file into MATCHED; a selection of none is a usage
# error (exit 2): zero tests run must never read as "every fault test passed".
declare -A MATCHED=()
count_matches() {
    local t total=0
    for t in "${TESTS[@]}"; do
        MATCHED[$t]="$(matching_tests "$t" | grep -c . || true)"
        total=$((total + MATCHED[$t]))
    done
    if ((total == 0)); then
        echo "fault: no fault test matches '${filters[*]}' (see --list)" >&2
        exit 2
    fi
}

if ((list)); then
    count_matches
    for t in "${TESTS[@]}"; do
        matching_tests "$t" | sed "s|^|$t::|"
    done
    exit 0
fi

need_cmd rabbitmqctl "run scripts/services.sh first"
need_cmd pg_ctlcluster "PostgreSQL's server tools (package postgresql-common)"
CPTM8_PG_CLUSTER="$(pg_cluster)"
[[ "$CPTM8_PG_CLUSTER" =~ ^[0-9.]+\ [^\ ]+$ ]] ||
    die "no PostgreSQL cluster on port 5432 in pg_lsclusters (run scripts/services.sh); or set CPTM8_PG_CLUSTER=\"<version> <name>\""
export CPTM8_PG_CLUSTER

# --- run ------------------------------------------------------------------------------
start="$(now_ms)"
log "building the test binaries"
cargo test -q -p orchestratorm8 "${TESTS[@]/#/--test=}" --no-run ||
    die "the fault tests do not build"
count_matches
bash scripts/services.sh >/dev/null || die "PostgreSQL/RabbitMQ are not available (scripts/services.sh)"
# The watermark to put back if a run is interrupted during the memory alarm.
wm="$(rabbitmqctl -q eval 'vm_memory_monitor:get_vm_memory_high_watermark().' 2>/dev/null | tr -d '[:space:]' || true)"
if [[ "$wm" =~ ^0?\.[0-9]+$ && "$wm" != "1.0e-7" ]]; then
    echo "$wm" >"$(watermark_file)"
fi
trap restore EXIT
# Ctrl-C reaches the tests too (same process group); bash acts on it once the running
# test binary has ended: stop there, restore (EXIT trap), exit 130.
interrupted=0
trap 'interrupted=1' INT TERM
# Every test copies its services' logs here (a failed test's are also kept where it says).
FAULT_LOGS_DIR="${FAULT_LOGS_DIR:-$(cargo_target_dir)/fault}"
export FAULT_LOGS_DIR
mkdir -p "$FAULT_LOGS_DIR"
rm -rf "${FAULT_LOGS_DIR:?}"/{broker_away,memory_alarm,postgres,kill,fast_worker}

log "kill -9 rounds: ${FAULT_KILL_ROUNDS:-20}${FAULT_SEED:+, seed $FAULT_SEED}"
failed=()
summary=()
for t in "${TESTS[@]}"; do
    t0="$(now_ms)"
    if ((MATCHED[$t] == 0)); then
        summary+=("$(printf '  %-15s none selected' "$t")")
        continue
    fi
    printf '\n==> %s (%d tests)\n' "$t" "${MATCHED[$t]}"
    rc=0
    out="$FAULT_LOGS_DIR/$t.out"
    cargo test -q -p orchestratorm8 --test "$t" -- --ignored --test-threads=1 --nocapture \
        "${filters[@]}" 2>&1 | tee "$out" || rc=$?
    # Every selected test ran and passed (not fewer: a test the harness skipped
    # would otherwise pass unseen).
    passed="$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$out" | tail -n 1)"
    if ((rc == 0)) && [[ "${passed:-0}" != "${MATCHED[$t]}" ]]; then
        warn "$t: ${passed:-0} tests passed, ${MATCHED[$t]} were selected"
        rc=1
    fi
    if ((rc == 0)); then
        summary+=("$(printf '  %-15s ok      %6ss' "$t" "$(elapsed_s "$t0")")")
    else
        summary+=("$(printf '  %-15s FAILED  %6ss' "$t" "$(elapsed_s "$t0")")")
        failed+=("$t")
    fi
    if ((interrupted)); then
        warn "interrupted: not running the remaining tests"
        break
    fi
done

printf '\n'
((interrupted)) && exit 130
log "summary (total $(elapsed_s "$start")s, build included):"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    log "FAILED: ${failed[*]} (logs of a failed test's services are kept; the path is printed above)"
    exit 1
fi
log "every fault test passed"
