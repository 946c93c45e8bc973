#!/usr/bin/env bash
# The console's browser test and the API's schema test, against the real binary on the
# local PostgreSQL and RabbitMQ (a throwaway database and virtual host of their own):
#   1. headless Chromium (Debian's `chromium`, installed with apt-get when missing)
#      driven by playwright-core (npm, pinned in scripts/browser/package.json,
#      installed under target/tools/node): the list shows the seeded workflows, the
#      pause button pauses, a stage completing appears without a reload, a hostile
#      stage detail shows as text, retry runs a failed workflow again; screenshots in
#      target/browser/;
#   2. schemathesis (PyPI, pinned in scripts/tools-requirements.txt, in the tools venv)
#      against the live server from GET /api/orchestratorm8/openapi.json: no 5xx and
#      every response conforms to the document (the event stream, which never ends, is
#      left out). The check positive_data_acceptance is excluded: requests that match
#      the schema are refused by design when they name domains that do not exist
#      (scan now: 400), cursors the server did not write (400) or a transition the
#      state does not allow (409).
# Usage: bash scripts/browser.sh [--no-browser] [--no-schemathesis]
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
export PATH="$PATH:/usr/sbin:/sbin"

BROWSER=1
FUZZ=1
while (($#)); do
    case "$1" in
    --no-browser) BROWSER=0 ;;
    --no-schemathesis) FUZZ=0 ;;
    *) die "unknown argument '$1' (expected --no-browser, --no-schemathesis)" ;;
    esac
    shift
done

TARGET="$(cargo_target_dir)"
OUT="$REPO_ROOT/target/browser"
mkdir -p "$OUT"
NAME="cptm8_browser_$$"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
CONFIG="$OUT/config.yaml"
ORCH_PID=""
HOSTILE='<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2">'

psql_admin() {
    psql -X -q -w -h 127.0.0.1 -p 5432 -U postgres -v ON_ERROR_STOP=1 -d postgres "$@"
}

cleanup() {
    if [[ -n "$ORCH_PID" ]]; then
        kill -TERM "$ORCH_PID" 2>/dev/null || true
        wait "$ORCH_PID" 2>/dev/null || true
    fi
    psql_admin -c "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null 2>&1 || true
    as_root rabbitmqctl -q delete_vhost "$NAME" >/dev/null 2>&1 || true
}
trap cleanup EXIT

ensure_chromium() {
    if [[ ! -x /usr/bin/chromium ]]; then
        log "installing Debian's chromium (apt-get)"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
    /usr/bin/chromium --version
}

ensure_playwright() {
    local dir="$REPO_ROOT/target/tools/node"
    local pkg="$REPO_ROOT/scripts/browser/package.json"
    need_cmd npm "install Node.js and npm (Debian: apt-get install nodejs npm)"
    if [[ ! -d "$dir/node_modules/playwright-core" ]] || ! cmp -s "$pkg" "$dir/package.json"; then
        log "installing playwright-core from npm into ${dir#"$REPO_ROOT"/}" >&2
        rm -rf "$dir"
        mkdir -p "$dir"
        cp "$pkg" "$dir/package.json"
        (cd "$dir" && npm install --silent --no-audit --no-fund --ignore-scripts) >&2
    fi
    echo "$dir"
}

start_server() {
    need_cmd psql "install the PostgreSQL client (Debian: apt-get install postgresql-client)"
    bash scripts/services.sh
    # The shared lock: tests that restart a service wait for this one.
    exec 8>>/tmp/cptm8-services.lock
    flock -s -w 300 8 || die "/tmp/cptm8-services.lock stayed locked exclusively for 300 s"
    cargo build -p orchestratorm8 -p demo8 --bin orchestratorm8 --bin stage_worker
    psql_admin -c "CREATE DATABASE $NAME" >/dev/null
    as_root rabbitmqctl -q add_vhost "$NAME" >/dev/null
    as_root rabbitmqctl -q set_permissions -p "$NAME" guest '.*' '.*' '.*' >/dev/null
    # The demo's configuration (managed mode, short backoffs, open API) on this run's
    # database and virtual host, with stage timeouts long enough that no job times out
    # before the test starts its workers.
    sed -E 's/timeout: 8s\b/timeout: 300s/' tools/demo8/configs/demo.yaml >"$CONFIG"
    grep -q 'timeout: 300s' "$CONFIG" || die "tools/demo8/configs/demo.yaml changed: stage timeouts not found"
    export CPTM8_DEMO_DB="$NAME" CPTM8_DEMO_VHOST="$NAME"
    local bin="$TARGET/debug/orchestratorm8"
    "$bin" migrate --config "$CONFIG" >/dev/null
    for d in alpha.example beta.example gamma.example; do
        "$bin" domains add "$d" --company ACME --config "$CONFIG" >/dev/null
    done
    # Started directly (not in a subshell), so that $! is the service's pid; the
    # shared lock's descriptor is not inherited.
    "$bin" launch --ip 127.0.0.1 --port "$PORT" --config "$CONFIG" </dev/null >"$OUT/orchestratorm8.log" 2>&1 8>&- &
    ORCH_PID=$!
    local start
    start="$(now_ms)"
    until curl -fsS "$BASE/ready" >/dev/null 2>&1; do
        elapsed_ge "$start" 60 || { sleep 0.2; continue; }
        tail -20 "$OUT/orchestratorm8.log" >&2
        die "orchestratorm8 not ready on $BASE within 60 s"
    done
    log "orchestratorm8 ready on $BASE (log: ${OUT#"$REPO_ROOT"/}/orchestratorm8.log)"
}

browser_test() {
    local dir="$REPO_ROOT/target/tools/node"
    # Run from the directory holding node_modules, so that the import resolves.
    cp scripts/browser/console.test.mjs "$dir/console.test.mjs"
    BASE="$BASE" CONFIG="$CONFIG" WORKER="$TARGET/debug/stage_worker" SHOTS="$OUT" \
        HOSTILE="$HOSTILE" node "$dir/console.test.mjs"
}

schema_test() {
    local bin
    bin="$(ensure_tools_venv)"
    # From target/browser, so that schemathesis keeps its cache (.schemathesis/) there.
    cd "$OUT"
    "$bin/schemathesis" run "$BASE/api/orchestratorm8/openapi.json" \
        --url "$BASE" \
        --checks all \
        --exclude-checks positive_data_acceptance \
        --exclude-path /api/orchestratorm8/events \
        --max-examples 30 \
        --request-timeout 10 \
        --max-time 150 \
        --seed 15
}

main() {
    if ((BROWSER)); then
        ensure_chromium
        ensure_playwright >/dev/null
    fi
    if ((FUZZ)); then ensure_tools_venv >/dev/null; fi
    start_server
    local rc=0
    if ((BROWSER)); then browser_test || rc=1; fi
    if ((FUZZ)); then (schema_test) || rc=1; fi
    if ((rc)); then
        tail -30 "$OUT/orchestratorm8.log" >&2
        die "browser or schema test failed (screenshots and log in ${OUT#"$REPO_ROOT"/})"
    fi
    log "browser and schema tests passed; screenshots in ${OUT#"$REPO_ROOT"/}"
}

main
