# shellcheck shell=bash
# Helpers shared by the scripts under scripts/. Source it, never run it:
#   # shellcheck source=scripts/lib.sh
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It sets REPO_ROOT and defines log/warn/die/need_cmd/as_root/run_detached.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

# The prefix of every progress line: the name of the script that prints it.
SCRIPT_NAME="$(basename "${BASH_SOURCE[1]:-$0}" .sh)"

if [[ "${CI:-}" == "true" ]]; then
    export CARGO_TERM_COLOR=never
fi

log() { printf '%s: %s\n' "$SCRIPT_NAME" "$*"; }
warn() { printf '%s: warning: %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
    exit 1
}

# need_cmd CMD HINT: fail with HINT unless CMD is on PATH.
need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"
}

# as_root CMD...: run CMD as root (directly when we are root, else through sudo).
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "'$*' needs root and sudo is not installed; run this script as root"
    fi
}

# run_detached LOGFILE CMD...: run CMD (which starts a daemon) with stdin from
# /dev/null, stdout and stderr appended to LOGFILE, and every other inherited file
# descriptor closed, so that the daemon never keeps our pipes open (a CI runner waits
# for those) nor a file lock we hold (flock on /tmp/cptm8-services.lock).
run_detached() {
    local logfile="$1"
    shift
    (
        for fd_path in /proc/"$BASHPID"/fd/*; do
            fd="${fd_path##*/}"
            if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
                eval "exec ${fd}>&-" 2>/dev/null || true
            fi
        done
        "$@" </dev/null >>"$logfile" 2>&1
    )
}

# now_ms: wall-clock milliseconds; elapsed_s START: seconds since START (a now_ms),
# with one decimal, for progress lines.
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
elapsed_s() {
    local ms=$(($(now_ms) - $1))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
# cargo_target_dir: the workspace's target directory (CARGO_TARGET_DIR or target/).
cargo_target_dir() {
    cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

# elapsed_ge START SECONDS: true when at least SECONDS have passed since START.
elapsed_ge() { (($(now_ms) - $1 >= $2 * 1000)); }

# ensure_tools_venv: create (once) a Python virtual environment under
# target/tools/venv holding the pinned lint and validation tools of
# scripts/tools-requirements.txt (from PyPI), and print its bin directory. The system
# stays untouched; a changed requirements file rebuilds the environment.
ensure_tools_venv() {
    local venv="$REPO_ROOT/target/tools/venv"
    local req="$REPO_ROOT/scripts/tools-requirements.txt"
    local stamp="$venv/.requirements"
    if [[ -x "$venv/bin/python" ]] && cmp -s "$req" "$stamp"; then
        echo "$venv/bin"
        return 0
    fi
    local python
    python="$(command -v python3 || true)"
    [[ -n "$python" ]] || die "python3 not found (Debian: apt-get install python3 python3-venv)"
    log "tools: creating $venv from scripts/tools-requirements.txt" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv" >&2 ||
        die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --only-binary=:all: -r "$req" >&2 ||
        die "installing the tools of scripts/tools-requirements.txt from PyPI failed"
    cp "$req" "$stamp"
    echo "$venv/bin"
}
