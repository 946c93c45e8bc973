#!/usr/bin/env bash
# Benchmarks (CONTRACT section 7; docs/BENCHMARKS.md): builds bench8 and orchestratorm8 in
# release mode, runs every benchmark with its floor measured in the same run, writes
# target/bench/report.json (and target/bench/run.json: machine, command, date), and,
# for a full run, the results table of docs/BENCHMARKS.md.
#
#   bash scripts/bench.sh [--quick] [--strict] [--reps N] [NAME...]     (= just bench ...)
#
#   NAME         run only these benchmarks (db_stream db_create amqp_publish amqp_consume
#                amqp_recovery managed fairness failover retention); default: all
#   --quick      smoke test: ten times fewer rows and messages, one repetition (for CI)
#   --strict     exit 1 when a goal is missed, too
#   --reps N     repetitions of each measured pair (default 5); the median is reported
#   --update-doc also rewrite docs/BENCHMARKS.md for a partial or quick run
#   --no-doc     never rewrite docs/BENCHMARKS.md
#   --list       list the benchmarks and exit
#
# Exit status: 0 when every selected benchmark ran (a missed goal is printed as MISS but
# does not fail, unless --strict), 1 when one could not run or failed, or the build
# failed, 2 on a usage error.
#
# Needs the local PostgreSQL and RabbitMQ (scripts/services.sh makes sure they run) and
# root, or a user allowed to run rabbitmqctl: amqp_recovery stops and starts the RabbitMQ
# application (holding the exclusive lock on /tmp/cptm8-services.lock), and managed
# creates a vhost. Databases are named bench_<random>, vhosts bench8-<random>; both are
# removed at the end of each benchmark.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

args=()
list=0
while (($#)); do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --list) list=1 ;;
        --reps)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || {
                echo "bench: --reps needs a positive number" >&2
                exit 2
            }
            args+=("$1" "$2")
            shift
            ;;
        --quick | --strict | --update-doc | --no-doc) args+=("$1") ;;
        -*)
            echo "bench: unknown option $1 (see --help)" >&2
            exit 2
            ;;
        *) args+=("$1") ;;
    esac
    shift
done

need_cmd cargo "install Rust (rustup) first; rust-toolchain.toml pins the version"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
BENCH8="$TARGET_DIR/release/bench8"
REPORT="$REPO_ROOT/target/bench/report.json"

log "cargo build --release -p bench8 -p orchestratorm8"
cargo build --release -p bench8 -p orchestratorm8 || die "the release build failed"

if ((list)); then
    exec "$BENCH8" list
fi

need_cmd psql "install postgresql-client (scripts/services.sh does)"
need_cmd rabbitmqctl "install rabbitmq-server (scripts/services.sh does)"
bash scripts/services.sh

rm -f "$REPORT"
log "$BENCH8 run ${args[*]:-}"
status=0
"$BENCH8" run --report "$REPORT" --doc "$REPO_ROOT/docs/BENCHMARKS.md" \
    --orchestrator "$TARGET_DIR/release/orchestratorm8" \
    --command-line "scripts/bench.sh${args[*]:+ ${args[*]}}" ${args[@]+"${args[@]}"} || status=$?
((status == 2)) && exit 2 # usage error, reported by bench8
[[ -s "$REPORT" ]] || die "bench8 finished without writing $REPORT"
log "report: $REPORT"
exit "$status"
