#!/usr/bin/env bash
# The service's main job, end to end on this machine (docs/DEMO.md):
#
#   1. local PostgreSQL and RabbitMQ (scripts/services.sh installs/starts them);
#   2. release build of orchestratorm8 and the demo tools (tools/demo8: scanners, workers, monitor);
#   3. a fresh demo database `cptm8_demo` and RabbitMQ virtual host `cptm8_demo`
#      (dropped and recreated on every run: nothing else is touched);
#   4. `orchestratorm8 migrate`, then a few domains (`orchestratorm8 domains add`);
#   5. `orchestratorm8 launch` in managed mode driving the platform's scanners as they
#      are (tools/demo8/configs/demo-platform.yaml: `protocol: chain` stages asmm8 ->
#      naabum8 -> katanam8 -> num8, one cycle over every enabled domain, 6 s timeouts,
#      1-4 s backoffs) and the four Go-scanner stand-ins (`go_scanners`, one process),
#      whose only change is their `Publisher` line; naabum8 stalls once (publishes
#      nothing: timed out, kicked again) and katanam8 fails hard once (app.error and an
#      empty report: failed, retried after its backoff);
#      with --per-domain instead: the per-domain pipeline (tools/demo8/configs/demo.yaml,
#      8 s timeouts) with one simulated CONTRACT-3 stage worker per stage that fails
#      some scans and loses a few jobs;
#   6. the workflows' progress, polled every second from the workflow API, then the
#      summary.
#
# Usage:
#   bash scripts/demo.sh [--per-domain]          watch until Ctrl-C (stops everything)
#   bash scripts/demo.sh [--per-domain] --until-done [--timeout 180]
#                                                exit 0 once every seeded workflow is
#                                                completed; non-zero with a summary on
#                                                failure or timeout (tests, CI)
# Environment:
#   CPTM8_DEMO_PORT      HTTP port of the demo orchestrator (default 18005)
#   CPTM8_DEMO_CONFIG    configuration file (default tools/demo8/configs/demo-platform.yaml,
#                        with --per-domain tools/demo8/configs/demo.yaml)
#   CPTM8_DEMO_DB        demo database, recreated (default cptm8_demo)
#   CPTM8_DEMO_VHOST     demo RabbitMQ virtual host, recreated (default cptm8_demo)
# Logs of every process: target/demo/*.log.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

export PATH="$PATH:/usr/sbin:/sbin"

UNTIL_DONE=0
PER_DOMAIN=0
TIMEOUT=180
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}
while (($#)); do
    case "$1" in
    --until-done) UNTIL_DONE=1 ;;
    --per-domain) PER_DOMAIN=1 ;;
    --timeout)
        [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--timeout needs a number of seconds (got '${2:-}')"
        TIMEOUT="$2"
        shift
        ;;
    --timeout=*)
        TIMEOUT="${1#--timeout=}"
        [[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout needs a number of seconds (got '$TIMEOUT')"
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

PORT="${CPTM8_DEMO_PORT:-18005}"
if ! [[ "$PORT" =~ ^[1-9][0-9]{0,4}$ ]] || ((PORT > 65535)); then
    die "CPTM8_DEMO_PORT must be a port number, got '$PORT'"
fi
if ((PER_DOMAIN)); then
    CONFIG="${CPTM8_DEMO_CONFIG:-tools/demo8/configs/demo.yaml}"
else
    CONFIG="${CPTM8_DEMO_CONFIG:-tools/demo8/configs/demo-platform.yaml}"
fi
export CPTM8_DEMO_DB="${CPTM8_DEMO_DB:-cptm8_demo}"
export CPTM8_DEMO_VHOST="${CPTM8_DEMO_VHOST:-cptm8_demo}"
[[ "$CPTM8_DEMO_DB" =~ ^[a-z_][a-z0-9_]*$ ]] || die "CPTM8_DEMO_DB must be a plain lower-case name, got '$CPTM8_DEMO_DB'"
[[ "$CPTM8_DEMO_VHOST" =~ ^[A-Za-z0-9_.-]+$ ]] || die "CPTM8_DEMO_VHOST must be a plain name, got '$CPTM8_DEMO_VHOST'"
[[ "$CPTM8_DEMO_DB" != cptm8 ]] || die "CPTM8_DEMO_DB must not be cptm8: the demo drops and recreates its database"
[[ "$CPTM8_DEMO_VHOST" != / ]] || die "CPTM8_DEMO_VHOST must not be /: the demo deletes and recreates its vhost"
# The demo runs on its own configuration only: key overrides from the environment
# (ORCHESTRATORM8__DATABASE__DATABASE=...) could point it at other data.
for var in $(compgen -e); do
    if [[ "$var" == ORCHESTRATORM8__* || "$var" == ORCHESTRATORM8_CONFIG || "$var" == ORCHESTRATORM8_API_TOKEN ]]; then
        warn "ignoring $var from the environment (the demo uses $CONFIG as it is)"
        unset "$var"
    fi
done

# Domains seeded: name, company, and whether it is enabled (a disabled one gets no
# workflow). EXPECTED is the number of enabled ones.
DOMAINS=(
    "example.com|ACME|enabled"
    "example.org|ACME|enabled"
    "example.net|Globex|enabled"
    "retired.example|Initech|disabled"
)
EXPECTED=3
STAGES=(asmm8 naabum8 katanam8 num8)
# The platform part: one cycle over the enabled domains. Each stand-in scanner reports
# to the orchestrator (the one line changed in each Go scanner's configuration).
SCANNER_FLAGS=(--scan-ms 1500 --fail naabum8:soft:1 --fail katanam8:hard:1)
for stage in "${STAGES[@]}"; do
    SCANNER_FLAGS+=(--publisher "$stage=cptm8,cptm8.orchestratorm8.$stage.done,$stage")
done
((PER_DOMAIN)) || EXPECTED=1
# Simulated scans: 0.4-1.5 s; a quarter fail and one in twenty is lost (acked without
# a report: the stage times out); attempt 3 (the last, max_attempts) always succeeds.
WORKER_FLAGS=(--min-ms 400 --max-ms 1500 --failure-rate 0.25 --lost-rate 0.05 --succeed-at-attempt 3)

DEMO_DIR="$REPO_ROOT/target/demo"
PIDFILE="$DEMO_DIR/pids"
LOCK_FILE=/tmp/cptm8-services.lock
BIN=""
EXAMPLES=""
PIDS=()  # "name:pid" of every process started
ORCH_PID=""
STEP=0

announce() {
    STEP=$((STEP + 1))
    printf '\n==> demo step %d: %s\n' "$STEP" "$*"
}

# alive PID: the process runs (an exited child not yet reaped, a zombie, does not).
alive() {
    local stat
    [[ -n "$1" ]] && stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ -n "$stat" && "${stat:0:1}" != Z && "${stat:0:1}" != X ]]
}

# --- processes ----------------------------------------------------------------------

# start NAME LOG CMD...: runs CMD in its own session (Ctrl-C in the terminal reaches only
# this script, which then stops everything in order), without our lock descriptor, with
# stdout and stderr to LOG; records NAME:PID.
start() {
    local name="$1" logfile="$2"
    shift 2
    setsid "$@" </dev/null >"$logfile" 2>&1 7>&- 8>&- &
    local pid=$!
    PIDS+=("$name:$pid")
    printf '%s %s\n' "$pid" "$1" >>"$PIDFILE"
    log "started $name (pid $pid), log: ${logfile#"$REPO_ROOT"/}"
    LAST_PID="$pid"
}

# stop_all: SIGTERM to every process started (workers finish or requeue their jobs,
# the orchestrator drains), SIGKILL to those still running after 20 s or after a
# second Ctrl-C.
FORCE=0
stop_all() {
    ((${#PIDS[@]})) || return 0
    local entry pid name left start
    for entry in "${PIDS[@]}"; do
        pid="${entry##*:}"
        alive "$pid" && kill -TERM "$pid" 2>/dev/null || true
    done
    start=$(now_ms)
    while :; do
        left=()
        for entry in "${PIDS[@]}"; do
            alive "${entry##*:}" && left+=("$entry")
        done
        ((${#left[@]})) || break
        if ((FORCE)) || elapsed_ge "$start" 20; then
            for entry in "${left[@]}"; do
                name="${entry%%:*}"
                pid="${entry##*:}"
                warn "$name (pid $pid) still running: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            done
            break
        fi
        sleep 0.2
    done
    for entry in "${PIDS[@]}"; do
        wait "${entry##*:}" 2>/dev/null || true
    done
    log "stopped ${#PIDS[@]} processes in $(elapsed_s "$start")s"
    PIDS=()
    rm -f "$PIDFILE"
}

# A previous run killed without its cleanup (SIGKILL, closed terminal) may have left
# processes behind: stop the ones the pid file names that still run our binaries.
stop_leftovers() {
    [[ -f "$PIDFILE" ]] || return 0
    local pid exe
    while read -r pid exe; do
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        local running
        running="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
        # A rebuilt binary shows as "PATH (deleted)".
        if alive "$pid" && [[ "$running" == "$exe" || "$running" == "$exe (deleted)" ]]; then
            warn "stopping pid $pid ($exe) left over by an earlier demo run"
            kill -TERM "$pid" 2>/dev/null || true
            local start
            start=$(now_ms)
            while alive "$pid" && ! elapsed_ge "$start" 20; do sleep 0.2; done
            alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
        fi
    done <"$PIDFILE"
    rm -f "$PIDFILE"
}

show_logs() {
    local entry name
    for entry in "${PIDS[@]}"; do
        name="${entry%%:*}"
        printf '\n--- last lines of target/demo/%s.log ---\n' "$name"
        tail -n 25 "$DEMO_DIR/$name.log" 2>/dev/null || true
    done
}

cleanup() {
    local status=$?
    trap - EXIT
    trap 'FORCE=1' INT TERM
    if ((${#PIDS[@]})); then
        if ((!UNTIL_DONE)) && alive "$ORCH_PID"; then
            printf '\n==> summary\n'
            "$EXAMPLES/demo_monitor" --summary --url "http://127.0.0.1:$PORT" || true
        fi
        printf '\n==> stopping the demo processes\n'
        stop_all
    fi
    if ((status != 0 && status != 130)); then
        printf '\ndemo: failed (exit %d); logs: target/demo/*.log\n' "$status" >&2
    fi
    exit "$status"
}

# --- steps --------------------------------------------------------------------------

step_services() {
    announce "local PostgreSQL and RabbitMQ"
    bash scripts/services.sh
    # Hold the shared lock for the whole demo: tests that restart a service (exclusive
    # lock) wait for the demo to end instead of pulling the services from under it.
    exec 8>>"$LOCK_FILE"
    if ! flock -s -n 8; then
        log "waiting (up to 300 s) for a test restarting a service to release $LOCK_FILE"
        flock -s -w 300 8 || die "$LOCK_FILE stayed locked exclusively for 300 s"
    fi
}

step_build() {
    announce "release build of orchestratorm8 and the demo tools (scanners, stage workers, monitor)"
    need_cmd cargo "install Rust (rustup) first; rust-toolchain.toml pins the version"
    cargo build --release -p orchestratorm8 -p demo8 --bins
    local target
    target="$(cargo_target_dir)"
    BIN="$target/release/orchestratorm8"
    EXAMPLES="$target/release"
    local b
    for b in "$BIN" "$EXAMPLES/stage_worker" "$EXAMPLES/go_scanners" "$EXAMPLES/demo_monitor"; do
        [[ -x "$b" ]] || die "the build did not produce $b"
    done
}

pg_demo() {
    env -u PGPASSWORD PGPASSFILE=/nonexistent/cptm8-no-passfile PGCONNECT_TIMEOUT=5 \
        PGOPTIONS='-c client_min_messages=warning' \
        psql -X -q -w -h 127.0.0.1 -p 5432 -U postgres -v ON_ERROR_STOP=1 -d postgres "$@"
}

step_fresh_state() {
    announce "fresh demo database $CPTM8_DEMO_DB and RabbitMQ vhost $CPTM8_DEMO_VHOST"
    stop_leftovers
    pg_demo -c "DROP DATABASE IF EXISTS $CPTM8_DEMO_DB WITH (FORCE)" -c "CREATE DATABASE $CPTM8_DEMO_DB" ||
        die "could not recreate database $CPTM8_DEMO_DB on 127.0.0.1:5432 as user postgres"
    log "database $CPTM8_DEMO_DB recreated"
    local err
    if as_root rabbitmqctl -q list_vhosts | grep -qx "$CPTM8_DEMO_VHOST"; then
        # Its output (e.g. ":terminated" for the vhost's processes) only matters on failure.
        err="$(as_root rabbitmqctl -q delete_vhost "$CPTM8_DEMO_VHOST" 2>&1)" ||
            die "rabbitmqctl delete_vhost $CPTM8_DEMO_VHOST failed: $err"
    fi
    as_root rabbitmqctl -q add_vhost "$CPTM8_DEMO_VHOST" >/dev/null ||
        die "rabbitmqctl add_vhost $CPTM8_DEMO_VHOST failed"
    as_root rabbitmqctl -q set_permissions -p "$CPTM8_DEMO_VHOST" guest '.*' '.*' '.*' >/dev/null ||
        die "rabbitmqctl set_permissions -p $CPTM8_DEMO_VHOST guest failed"
    log "vhost $CPTM8_DEMO_VHOST recreated (user guest has every right on it)"
}

step_migrate() {
    announce "orchestratorm8 migrate"
    "$BIN" migrate --config "$CONFIG"
}

step_domains() {
    announce "domains (orchestratorm8 domains add)"
    local entry name company state out
    for entry in "${DOMAINS[@]}"; do
        IFS='|' read -r name company state <<<"$entry"
        local flags=()
        [[ "$state" == disabled ]] && flags=(--disabled)
        if out="$("$BIN" domains --config "$CONFIG" add "$name" --company "$company" "${flags[@]}" 2>&1)"; then
            printf '%s\n' "$out"
        elif grep -q 'already exists' <<<"$out"; then
            log "$name is already there"
        else
            printf '%s\n' "$out" >&2
            die "orchestratorm8 domains add $name failed"
        fi
    done
    "$BIN" domains --config "$CONFIG" list
}

step_launch() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "port $PORT is in use; set CPTM8_DEMO_PORT to a free port"
    fi
    if ((!PER_DOMAIN)); then
        announce "orchestratorm8 launch (managed mode, chain stages, http://127.0.0.1:$PORT) and the Go-scanner stand-ins"
        log "the one change per scanner (orchestratorm8 config check prints it):"
        "$BIN" config check --config "$CONFIG" | grep 'Publisher:' || true
        log "on demand: naabum8 stalls on its first run, katanam8 fails hard on its first run"
        start orchestratorm8 "$DEMO_DIR/orchestratorm8.log" \
            "$BIN" launch --ip 127.0.0.1 --port "$PORT" --config "$CONFIG"
        ORCH_PID="$LAST_PID"
        start scanners "$DEMO_DIR/scanners.log" \
            "$EXAMPLES/go_scanners" --config "$CONFIG" "${SCANNER_FLAGS[@]}"
        return
    fi
    announce "orchestratorm8 launch (managed mode, per domain, http://127.0.0.1:$PORT) and the stage workers"
    start orchestratorm8 "$DEMO_DIR/orchestratorm8.log" \
        "$BIN" launch --ip 127.0.0.1 --port "$PORT" --config "$CONFIG"
    ORCH_PID="$LAST_PID"
    local stage
    for stage in "${STAGES[@]}"; do
        start "$stage" "$DEMO_DIR/$stage.log" \
            "$EXAMPLES/stage_worker" --stage "$stage" --name "$stage-sim" --config "$CONFIG" "${WORKER_FLAGS[@]}"
    done
}

step_watch() {
    local watch=() entry
    for entry in "${PIDS[@]}"; do
        watch+=(--watch "${entry%%:*}=${entry##*:}")
    done
    local monitor=("$EXAMPLES/demo_monitor" --url "http://127.0.0.1:$PORT" --expect "$EXPECTED" "${watch[@]}")
    if ((UNTIL_DONE)); then
        announce "workflows until all $EXPECTED are completed (timeout ${TIMEOUT}s)"
        local status=0
        "${monitor[@]}" --until-done --timeout "$TIMEOUT" --plain 7>&- 8>&- || status=$?
        if ((status != 0)); then
            show_logs
            die "the demo did not complete (demo_monitor exit $status)"
        fi
        log "every seeded workflow completed"
    else
        announce "workflows (Ctrl-C stops the demo)"
        log "API: http://127.0.0.1:$PORT/api/orchestratorm8/workflows (scan now: POST {} to it)"
        local status=0
        "${monitor[@]}" 7>&- 8>&- || status=$?
        if ((status != 0)); then
            show_logs
            die "demo_monitor stopped (exit $status)"
        fi
    fi
}

# One demo at a time per checkout: a second one would stop the first one's processes.
# The processes the demo starts do not inherit the lock, so a demo killed with SIGKILL
# releases it.
take_demo_lock() {
    mkdir -p "$DEMO_DIR"
    exec 7>>"$DEMO_DIR/lock"
    flock -n 7 || die "another demo is running in this checkout (it holds $DEMO_DIR/lock)"
}

main() {
    if ((PER_DOMAIN)); then
        printf '==> demo: managed mode, one workflow per domain, CONTRACT-3 stage workers\n'
    else
        printf '==> demo: managed mode driving the platform'"'"'s scanners as they are (Go-scanner\n'
        printf '    stand-ins, only their Publisher line changed): one cycle asmm8 -> naabum8 ->\n'
        printf '    katanam8 -> num8; naabum8 stalls once (timed out, kicked again), katanam8\n'
        printf '    fails hard once (retried after its backoff); then the summary.\n'
        printf '    (bash scripts/demo.sh --per-domain: the per-domain pipeline)\n'
    fi
    take_demo_lock
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    step_services
    step_build
    step_fresh_state
    step_migrate
    step_domains
    step_launch
    step_watch
}

main "$@"
