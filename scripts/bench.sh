#!/usr/bin/env bash
# Benchmarks (CONTRACT section 7): release build, every benchmark with its floor in the
# same run, report in target/bench/report.json (table in docs/BENCHMARKS.md).
#   bash scripts/bench.sh [ARGS...]    ARGS go to the bench8 binary
# The benchmark package bench8 runs against the local services, started first.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

need_cmd cargo "install Rust (rustup) first; rust-toolchain.toml pins the version"
REPORT="$REPO_ROOT/target/bench/report.json"

if ! cargo metadata --format-version 1 --no-deps | grep -q '"name":"bench8"'; then
    die "the benchmark package bench8 is not in the workspace yet: there is nothing to run"
fi
bash scripts/services.sh
log "cargo run --release -p bench8 -- $*"
rm -f "$REPORT"
cargo run --release -p bench8 -- "$@"
[[ -s "$REPORT" ]] || die "bench8 finished without writing $REPORT"
log "report: $REPORT"
