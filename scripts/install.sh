#!/usr/bin/env bash
# Prepare this checkout to run or test latentd: a Python 3.11 virtualenv in .venv with the
# pinned dependencies, (with --redis-server) a redis-server binary, and (with --test-tools)
# what the test suite drives besides Python: the emoji font the embedded model's data is
# drawn from, docker-compose (validates the compose file offline), wrk (benchmarks) and
# chromium (the playground's browser tests).
#
#   scripts/install.sh [--redis-server] [--test-tools]
#
# Safe to run every time: it does nothing (in milliseconds) when pyproject.toml and the
# pinned pip have not changed since the last successful install.
set -euo pipefail

cd "$(dirname "$0")/.."

PIP_VERSION="26.3"
EXTRAS="worker,train,dev"
VENV=".venv"

want_redis=0
want_test_tools=0
for arg in "$@"; do
    case "$arg" in
        --redis-server) want_redis=1 ;;
        --test-tools) want_test_tools=1 ;;
        *) echo "usage: $0 [--redis-server] [--test-tools]" >&2; exit 2 ;;
    esac
done

say() { echo "latentd: $*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

apt_install() {
    # A fresh machine has empty package lists: update only when the plain install fails.
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$@" \
        || { apt-get update && apt-get install -y --no-install-recommends "$@"; }
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ]; then
        return 0
    fi
    local python
    if ! python="$(find_python)"; then
        if is_root && command -v apt-get >/dev/null 2>&1; then
            say "installing python3.11 with apt-get"
            apt_install python3.11 python3.11-venv
            python="$(find_python)"
        else
            say "Python 3.11 is required. Install it (Debian/Ubuntu: sudo apt-get install" \
                "python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11."
            exit 1
        fi
    fi
    say "creating $VENV with $python"
    if ! "$python" -m venv "$VENV"; then
        # Debian splits ensurepip out of the interpreter package.
        rm -rf "$VENV"
        if is_root && command -v apt-get >/dev/null 2>&1; then
            apt_install python3.11-venv
            "$python" -m venv "$VENV"
        else
            say "could not create a virtualenv. Install the venv module" \
                "(Debian/Ubuntu: sudo apt-get install python3.11-venv) and retry."
            exit 1
        fi
    fi
}

ensure_packages() {
    # The stamp's name carries everything that decides what gets installed, so a changed
    # pyproject.toml (or pip pin) installs again and an unchanged one costs nothing.
    local digest stamp
    digest="$( (cat pyproject.toml; echo "pip==$PIP_VERSION extras=$EXTRAS") | sha256sum | cut -c1-16)"
    stamp="$VENV/.installed-$digest"
    if [ -e "$stamp" ]; then
        return 0
    fi
    say "installing pinned dependencies into $VENV (first run takes a few minutes)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet "pip==$PIP_VERSION"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -e ".[$EXTRAS]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
}

ensure_redis_server() {
    if command -v redis-server >/dev/null 2>&1; then
        return 0
    fi
    if is_root && command -v apt-get >/dev/null 2>&1; then
        say "installing redis-server with apt-get"
        apt_install redis-server
        return 0
    fi
    say "redis-server is not installed. Install it (Debian/Ubuntu: sudo apt-get install" \
        "redis-server; macOS: brew install redis), or point LATENTD_REDIS_URL at a running" \
        "Redis, then retry."
    exit 1
}

# Debian package → a file or command that shows it is there.
TEST_TOOLS=(
    "fonts-noto-color-emoji:/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
    "docker-compose:docker-compose"
    "wrk:wrk"
    "chromium:chromium"
)

ensure_test_tools() {
    local missing=() entry package probe
    for entry in "${TEST_TOOLS[@]}"; do
        package="${entry%%:*}"
        probe="${entry#*:}"
        if [ -e "$probe" ] || command -v "$probe" >/dev/null 2>&1; then
            continue
        fi
        missing+=("$package")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if is_root && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} with apt-get (for the tests)"
        apt_install "${missing[@]}"
        return 0
    fi
    # Not fatal: the tests that need them say so in the summary as skipped.
    say "not installed: ${missing[*]} (sudo apt-get install ${missing[*]}); the tests" \
        "that need them will be skipped"
}

ensure_venv
ensure_packages
if [ "$want_redis" -eq 1 ]; then
    ensure_redis_server
fi
if [ "$want_test_tools" -eq 1 ]; then
    ensure_test_tools
fi
