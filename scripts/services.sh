#!/usr/bin/env bash
# Ensure the local PostgreSQL and RabbitMQ that the tests and the demo use are
# installed, running and reachable, on a Debian or Ubuntu machine. Idempotent: it
# only acts on what is missing or stopped.
#
#   PostgreSQL  127.0.0.1:5432, user postgres, no password (trust over loopback TCP),
#               database cptm8
#   RabbitMQ    127.0.0.1:5672, guest/guest (the management plugin is not needed)
#
# It installs missing packages with apt-get (running `apt-get update` once, only when
# something is missing), starts stopped services without systemd when PID 1 is not
# systemd (containers, CI), and waits until each accepts connections.
#
# DEV-ONLY changes it may make, each printed when made:
#   - a `trust` rule for user postgres from 127.0.0.1/32 and ::1/128 at the top of
#     pg_hba.conf, between `# BEGIN cptm8 dev-only` and `# END cptm8 dev-only`
#     (delete those lines to undo);
#   - the RabbitMQ user guest with password guest and full rights on vhost `/`.
# Never run it against a production machine.
#
# Environment:
#   CPTM8_SERVICES_TIMEOUT  seconds to wait for each service (default 120)
#   CPTM8_SERVICES_NO_LOCK  1: do not take the shared lock on /tmp/cptm8-services.lock
#                           (for a caller that already holds it exclusively)
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TIMEOUT="${CPTM8_SERVICES_TIMEOUT:-120}"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "CPTM8_SERVICES_TIMEOUT must be a number of seconds, got '$TIMEOUT'"
PG_PORT=5432
AMQP_PORT=5672
DATABASE=cptm8
LOCK_FILE=/tmp/cptm8-services.lock
HBA_BEGIN='# BEGIN cptm8 dev-only (scripts/services.sh): trust user postgres over loopback TCP. NOT FOR PRODUCTION.'
HBA_END='# END cptm8 dev-only'

# Debian keeps the server tools in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

with_systemd() { [[ -d /run/systemd/system ]]; }

# --- lock ---------------------------------------------------------------------------
# Tests that restart a service hold an exclusive lock on LOCK_FILE; holding a shared
# one here means we never "repair" a service that such a test stopped on purpose.
take_shared_lock() {
    [[ "${CPTM8_SERVICES_NO_LOCK:-0}" == "1" ]] && return 0
    command -v flock >/dev/null 2>&1 || {
        warn "flock not found (package util-linux): not coordinating with disruptive tests"
        return 0
    }
    exec 9>>"$LOCK_FILE"
    if ! flock -s -n 9; then
        log "waiting (up to ${TIMEOUT}s) for a disruptive test to release $LOCK_FILE"
        flock -s -w "$TIMEOUT" 9 ||
            die "$LOCK_FILE stayed locked exclusively for ${TIMEOUT}s (a test restarting PostgreSQL or RabbitMQ?)"
    fi
}

# --- packages -----------------------------------------------------------------------
have() { command -v "$1" >/dev/null 2>&1; }

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

pg_server_present() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }

ensure_packages() {
    local missing=()
    if ! pg_server_present || ! have pg_ctlcluster; then missing+=(postgresql); fi
    if ! have psql || ! have pg_isready; then missing+=(postgresql-client); fi
    if ! have rabbitmq-server || ! have rabbitmqctl; then missing+=(rabbitmq-server); fi
    have pkg-config || missing+=(pkg-config)
    # The TLS and secret-leak tests start a throwaway TLS terminator and make certificates.
    have socat || missing+=(socat)
    have openssl || missing+=(openssl)
    if command -v dpkg-query >/dev/null 2>&1; then
        pkg_installed libssl-dev || missing+=(libssl-dev)
    fi
    if ((${#missing[@]} == 0)); then
        log "packages: present (postgresql, rabbitmq-server, psql, pkg-config, libssl-dev, socat, openssl)"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "missing: ${missing[*]}; this script installs them only on Debian/Ubuntu (apt-get not found)"
    log "packages: installing ${missing[*]} (apt-get update first)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null ||
        die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" ||
        die "apt-get install ${missing[*]} failed"
}

# --- PostgreSQL ---------------------------------------------------------------------
PG_VERSION=""
PG_LOG=""

# Sets PG_VERSION to the cluster `main` serving PG_PORT, creating one if there is none.
find_pg_cluster() {
    local ver port clusters
    clusters="$(pg_lsclusters -h 2>&1 || true)"
    while read -r ver cluster port _rest; do
        if [[ "$cluster" == main && "$port" == "$PG_PORT" ]]; then
            PG_VERSION="$ver"
        fi
    done <<<"$clusters"
    if [[ -z "$PG_VERSION" ]]; then
        if compgen -G '/etc/postgresql/*/main' >/dev/null; then
            printf '%s\n' "$clusters" >&2
            die "PostgreSQL: no cluster 'main' on port $PG_PORT among those pg_lsclusters lists (above); check $(compgen -G '/etc/postgresql/*/main' | tr '\n' ' ')"
        fi
        ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
        [[ -n "$ver" ]] || die "no PostgreSQL server under /usr/lib/postgresql"
        log "postgresql: no cluster yet, creating $ver/main on port $PG_PORT"
        as_root pg_createcluster --port "$PG_PORT" "$ver" main >/dev/null ||
            die "pg_createcluster $ver main failed"
        PG_VERSION="$ver"
    fi
    PG_LOG="$(pg_lsclusters -h | awk -v v="$PG_VERSION" '$1 == v && $2 == "main" { print $7 }')"
    PG_LOG="${PG_LOG:-/var/log/postgresql/postgresql-$PG_VERSION-main.log}"
}

pg_cluster_online() {
    pg_lsclusters -h | awk -v v="$PG_VERSION" '$1 == v && $2 == "main" { print $4 }' | grep -q '^online'
}

pg_ctl_cluster() {
    local action="$1"
    if with_systemd; then
        as_root systemctl "$action" "postgresql@$PG_VERSION-main"
    else
        as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main "$action"
    fi
}

# psql as user postgres over TCP, never with a password from the caller's environment.
pg_psql() {
    env -u PGPASSWORD PGPASSFILE=/nonexistent/cptm8-no-passfile PGCONNECT_TIMEOUT=5 \
        psql -X -q -w -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"
}

wait_for_pg() {
    local start; start=$(now_ms)
    until pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2; do
        if elapsed_ge "$start" "$TIMEOUT"; then
            tail -n 20 "$PG_LOG" >&2 2>/dev/null || true
            die "PostgreSQL did not accept connections on 127.0.0.1:$PG_PORT within ${TIMEOUT}s; see $PG_LOG"
        fi
        sleep 1
    done
    log "postgresql: accepting connections on 127.0.0.1:$PG_PORT (waited $(elapsed_s "$start")s)"
}

ensure_pg_trust() {
    if pg_psql -d postgres -Atc 'select 1' >/dev/null 2>&1; then
        return 0
    fi
    local hba
    hba="$(as_root pg_conftool -s "$PG_VERSION" main show hba_file 2>/dev/null || true)"
    hba="${hba:-/etc/postgresql/$PG_VERSION/main/pg_hba.conf}"
    if as_root grep -qF "$HBA_BEGIN" "$hba"; then
        die "user postgres cannot log in over 127.0.0.1 although $hba has the cptm8 dev-only trust rule; check $PG_LOG"
    fi
    log "postgresql: DEV-ONLY: adding a trust rule for user postgres from 127.0.0.1 and ::1 at the top of $hba"
    local tmp
    tmp="$(mktemp)"
    {
        printf '%s\n' "$HBA_BEGIN"
        printf 'host    all    postgres    127.0.0.1/32    trust\n'
        printf 'host    all    postgres    ::1/128         trust\n'
        printf '%s\n' "$HBA_END"
        as_root cat "$hba"
    } >"$tmp"
    as_root cp "$tmp" "$hba"
    rm -f "$tmp"
    pg_ctl_cluster reload >/dev/null || die "reloading PostgreSQL $PG_VERSION/main failed; see $PG_LOG"
    local start; start=$(now_ms)
    until pg_psql -d postgres -Atc 'select 1' >/dev/null 2>&1; do
        elapsed_ge "$start" "10" &&
            die "user postgres still cannot log in over 127.0.0.1 after adding the trust rule to $hba; see $PG_LOG"
        sleep 1
    done
}

ensure_pg_database() {
    if [[ "$(pg_psql -d postgres -Atc "select 1 from pg_database where datname = '$DATABASE'")" == "1" ]]; then
        log "postgresql: database $DATABASE present"
        return 0
    fi
    local err
    if ! err="$(pg_psql -d postgres -c "create database $DATABASE" 2>&1)"; then
        # Another run may have created it in the meantime.
        grep -q 'already exists' <<<"$err" || die "creating database $DATABASE failed: $err"
    fi
    log "postgresql: database $DATABASE created"
}

ensure_postgresql() {
    find_pg_cluster
    if pg_cluster_online; then
        log "postgresql: cluster $PG_VERSION/main running"
    else
        log "postgresql: starting cluster $PG_VERSION/main"
        # Never send pg_ctlcluster's output to the server log: when the start fails it
        # prints that log, which would then feed on itself.
        local out
        out="$(mktemp)"
        if ! run_detached "$out" pg_ctl_cluster start; then
            tail -n 20 "$out" >&2
            rm -f "$out"
            die "starting PostgreSQL $PG_VERSION/main failed; see $PG_LOG"
        fi
        rm -f "$out"
    fi
    wait_for_pg
    ensure_pg_trust
    ensure_pg_database
}

# --- RabbitMQ -----------------------------------------------------------------------
RABBIT_LOG_DIR=/var/log/rabbitmq

rabbit_log() {
    local newest
    newest="$(find "$RABBIT_LOG_DIR" -maxdepth 1 -name 'rabbit@*.log' ! -name '*_upgrade.log' \
        -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n 1 | cut -d' ' -f2- || true)"
    echo "${newest:-$RABBIT_LOG_DIR/}"
}

rabbit_app_running() { as_root rabbitmq-diagnostics -q check_running >/dev/null 2>&1; }
rabbit_node_up() { as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
rabbit_port_open() { as_root rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; }

start_rabbitmq() {
    if rabbit_node_up; then
        # The Erlang node runs but the application was stopped (rabbitmqctl stop_app).
        log "rabbitmq: node up, application stopped: rabbitmqctl start_app"
        as_root rabbitmqctl -q start_app >/dev/null 2>&1 ||
            warn "rabbitmqctl start_app failed (still booting?); waiting anyway"
    elif with_systemd; then
        log "rabbitmq: starting (systemctl start rabbitmq-server)"
        as_root systemctl start rabbitmq-server || die "systemctl start rabbitmq-server failed; see $(rabbit_log)"
    else
        log "rabbitmq: starting (rabbitmq-server -detached)"
        run_detached "$RABBIT_LOG_DIR/cptm8-services-start.log" as_root rabbitmq-server -detached ||
            die "rabbitmq-server -detached failed; see $RABBIT_LOG_DIR/cptm8-services-start.log and $(rabbit_log)"
    fi
}

wait_for_rabbitmq() {
    local start; start=$(now_ms)
    until rabbit_app_running && rabbit_port_open; do
        if elapsed_ge "$start" "$TIMEOUT"; then
            tail -n 20 "$(rabbit_log)" >&2 2>/dev/null || true
            die "RabbitMQ did not accept connections on 127.0.0.1:$AMQP_PORT within ${TIMEOUT}s; see $(rabbit_log)"
        fi
        sleep 1
    done
    log "rabbitmq: accepting connections on port $AMQP_PORT (waited $(elapsed_s "$start")s)"
}

ensure_rabbit_guest() {
    if ! as_root rabbitmqctl -q authenticate_user guest guest >/dev/null 2>&1; then
        if as_root rabbitmqctl -q list_users | awk '{ print $1 }' | grep -qx guest; then
            log "rabbitmq: DEV-ONLY: resetting the password of user guest to guest"
            as_root rabbitmqctl -q change_password guest guest >/dev/null
        else
            log "rabbitmq: DEV-ONLY: adding user guest/guest"
            as_root rabbitmqctl -q add_user guest guest >/dev/null
            as_root rabbitmqctl -q set_user_tags guest administrator >/dev/null
        fi
    fi
    if ! as_root rabbitmqctl -q list_user_permissions guest | awk '{ print $1 }' | grep -qx '/'; then
        log "rabbitmq: DEV-ONLY: granting user guest all rights on vhost /"
        as_root rabbitmqctl -q set_permissions -p / guest '.*' '.*' '.*' >/dev/null
    fi
    log "rabbitmq: guest/guest can log in on vhost /"
}

ensure_rabbitmq() {
    if rabbit_app_running; then
        log "rabbitmq: running"
    else
        start_rabbitmq
    fi
    wait_for_rabbitmq
    ensure_rabbit_guest
}

main() {
    local start; start=$(now_ms)
    ensure_packages
    take_shared_lock
    ensure_postgresql
    ensure_rabbitmq
    log "ready in $(elapsed_s "$start")s: postgres@127.0.0.1:$PG_PORT/$DATABASE (trust), amqp://guest:guest@127.0.0.1:$AMQP_PORT/"
}

main "$@"
