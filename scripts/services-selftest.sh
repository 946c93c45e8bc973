#!/usr/bin/env bash
# Self-test of scripts/services.sh on a FRESH Debian, without touching this machine's
# own PostgreSQL and RabbitMQ. Not part of scripts/test.sh (it downloads ~150 MB of
# packages and takes a few minutes); run it after changing services.sh:
#   bash scripts/services-selftest.sh
#
# How: debootstrap a minimal bookworm under target/services-selftest/root (once), fetch
# the needed .deb files into a local apt repository inside it (once), then run the
# scenarios below in that root inside new network, PID, mount and UTS namespaces: its
# own loopback (ports 5432/5672 are free there), and every daemon it starts dies with
# the namespace. Its apt sources point only at the local repository, so the install
# path (apt-get update + install) really runs. A policy-rc.d forbids starting services
# during installation, as in a container.
#
# Scenarios (each must end as expected, else the self-test fails):
#   1 packages missing      -> installed, cluster started, trust rule added, database
#                              cptm8 created, RabbitMQ started; guest/guest works
#   2 rerun                 -> nothing to do
#   3 both stopped (PostgreSQL stop, full RabbitMQ stop) -> both started
#   4 RabbitMQ app stopped (stop_app)                    -> start_app
#   5 guest password changed                             -> reset to guest
#   6 PostgreSQL cannot start (bad setting)              -> exit 1, names the log
#   7 RabbitMQ slower than CPTM8_SERVICES_TIMEOUT=1      -> exit 1, names the log
#   8 rerun after the failures                           -> both up again
# Needs root, debootstrap (installed with apt-get when missing), unshare (util-linux).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

[[ "$(id -u)" -eq 0 ]] || die "run as root (it builds a chroot and uses namespaces)"
WORK="$REPO_ROOT/target/services-selftest"
ROOT="$WORK/root"
MIRROR="${CPTM8_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=(postgresql postgresql-client rabbitmq-server pkg-config libssl-dev)

build_root() {
    if [[ -f "$WORK/.ready" ]]; then
        log "reusing $ROOT"
        return 0
    fi
    command -v debootstrap >/dev/null 2>&1 || {
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
    }
    command -v dpkg-scanpackages >/dev/null 2>&1 || {
        log "installing dpkg-dev (dpkg-scanpackages)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dpkg-dev >/dev/null
    }
    rm -rf "$WORK"
    mkdir -p "$WORK"
    log "debootstrap --variant=minbase bookworm $ROOT"
    debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $WORK/debootstrap.log"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    log "downloading ${PACKAGES[*]} and their dependencies into a local repository"
    mount --bind /proc "$ROOT/proc"
    if ! chroot "$ROOT" sh -c "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --download-only --no-install-recommends ${PACKAGES[*]} >/dev/null"; then
        umount "$ROOT/proc"
        die "downloading the packages failed"
    fi
    umount "$ROOT/proc"
    mkdir -p "$ROOT/var/local-repo"
    mv "$ROOT"/var/cache/apt/archives/*.deb "$ROOT/var/local-repo/"
    (cd "$ROOT/var/local-repo" && dpkg-scanpackages . /dev/null >Packages 2>/dev/null)
    echo 'deb [trusted=yes] file:/var/local-repo ./' >"$ROOT/etc/apt/sources.list"
    rm -rf "$ROOT/var/lib/apt/lists"
    mkdir -p "$ROOT/var/lib/apt/lists/partial"
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod +x "$ROOT/usr/sbin/policy-rc.d"
    printf '127.0.0.1 localhost\n127.0.1.1 cptm8-selftest\n' >"$ROOT/etc/hosts"
    # Pristine copy: every run starts from "packages missing".
    tar -C "$ROOT" -cf "$WORK/pristine.tar" .
    touch "$WORK/.ready"
}

reset_root() {
    log "resetting $ROOT to the pristine fresh system"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    tar -C "$ROOT" -xf "$WORK/pristine.tar"
    mkdir -p "$ROOT/root/main"
    cp -r scripts "$ROOT/root/main/"
}

# The scenarios, run inside the root. Prints "SELFTEST FAIL ..." for each failure.
write_driver() {
    cat >"$ROOT/root/selftest.sh" <<'DRIVER'
#!/bin/bash
set -u
cd /root/main
fails=0
expect() { # expect RC DESCRIPTION
    local want="$1" got="$2" what="$3"
    if [[ "$got" == "$want" ]]; then echo "SELFTEST ok: $what"; else
        echo "SELFTEST FAIL: $what (exit $got, expected $want)"; fails=$((fails + 1)); fi
}
up() {
    pg_isready -q -h 127.0.0.1 -p 5432 &&
        [[ "$(env -u PGPASSWORD psql -X -w -h 127.0.0.1 -U postgres -d cptm8 -Atc 'select 1')" == 1 ]] &&
        rabbitmqctl -q authenticate_user guest guest >/dev/null 2>&1 &&
        rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1
}
run() { bash scripts/services.sh; }
ver() { ls /etc/postgresql; }

echo "=== 1: packages missing"
run; expect 0 $? "fresh install"; up; expect 0 $? "services usable after install"
dpkg-query -W libssl-dev pkg-config >/dev/null; expect 0 $? "build packages installed"
grep -q '^# BEGIN cptm8 dev-only' "/etc/postgresql/$(ver)/main/pg_hba.conf"; expect 0 $? "trust rule marked dev-only"
echo "=== 2: rerun"
run; expect 0 $? "idempotent rerun"
echo "=== 3: both stopped"
pg_ctlcluster "$(ver)" main stop; rabbitmqctl -q stop >/dev/null 2>&1
run; expect 0 $? "start both"; up; expect 0 $? "usable after start"
echo "=== 4: RabbitMQ stop_app"
rabbitmqctl -q stop_app >/dev/null
run; expect 0 $? "start_app"; up; expect 0 $? "usable after start_app"
echo "=== 5: guest password changed"
rabbitmqctl -q change_password guest other >/dev/null
run; expect 0 $? "guest reset"; up; expect 0 $? "guest/guest works again"
echo "=== 6: PostgreSQL cannot start"
conf="/etc/postgresql/$(ver)/main/postgresql.conf"
pg_ctlcluster "$(ver)" main stop; cp "$conf" /root/pg.conf
echo "shared_buffers = 'bogus'" >>"$conf"
out="$(CPTM8_SERVICES_TIMEOUT=10 bash scripts/services.sh 2>&1)"; rc=$?
cp /root/pg.conf "$conf"
echo "$out" | tail -n 3
expect 1 "$rc" "bad PostgreSQL setting fails"
grep -q 'postgresql-.*-main.log' <<<"$out"; expect 0 $? "the error names the PostgreSQL log"
echo "=== 7: RabbitMQ slower than the timeout"
rabbitmqctl -q stop >/dev/null 2>&1
out="$(CPTM8_SERVICES_TIMEOUT=1 bash scripts/services.sh 2>&1)"; rc=$?
echo "$out" | tail -n 1
expect 1 "$rc" "RabbitMQ timeout fails"
grep -q 'RabbitMQ did not accept connections.*rabbit@' <<<"$out"; expect 0 $? "the error names RabbitMQ and its log"
echo "=== 8: rerun after the failures"
run; expect 0 $? "recovers"; up; expect 0 $? "usable at the end"
echo "SELFTEST failures: $fails"
exit $((fails > 0))
DRIVER
    chmod +x "$ROOT/root/selftest.sh"
}

main() {
    build_root
    reset_root
    write_driver
    log "running the scenarios in new namespaces (log: $WORK/selftest.log)"
    local rc=0
    timeout 900 unshare --net --pid --fork --kill-child --mount --uts bash -c "
        set -e
        hostname cptm8-selftest
        ip link set lo up
        mount -t proc proc '$ROOT/proc'
        mount --bind /dev '$ROOT/dev'
        mount -t tmpfs tmpfs '$ROOT/dev/shm'
        mount -t tmpfs tmpfs '$ROOT/tmp'
        chroot '$ROOT' /root/selftest.sh
    " </dev/null >"$WORK/selftest.log" 2>&1 || rc=$?
    grep -E '^(===|SELFTEST|services: )' "$WORK/selftest.log" || true
    ((rc == 0)) || die "self-test failed (exit $rc); see $WORK/selftest.log"
    log "ok: every scenario behaved"
}

main "$@"
