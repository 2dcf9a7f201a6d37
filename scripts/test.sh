#!/usr/bin/env bash
# The one command that runs keygate's whole test suite:
#   formatting, clippy, build, the fuzz targets type-checked, Rust tests, the OpenAI-SDK
#   end-to-end tests (pytest), the load harness's statistics (pytest), the profile-guided
#   build's training run,
#   and the web console's browser tests (node --test, playwright-core driving Chromium).
#
# Needs only the Rust toolchain (with rustfmt and clippy), Python 3.11 and Node.js (18+);
# installs Python's venv module and Chromium with apt-get if they are missing, openai +
# pytest into .venv, and playwright-core into tests/console/node_modules.
# Idempotent: a rerun reuses .venv and node_modules and skips pip/npm when they are there.
# Every step runs even if an earlier one failed (pytest needs a successful build);
# the script exits non-zero if any step failed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"

JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-300}"
BROWSER_TIMEOUT="${BROWSER_TIMEOUT:-180}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export KEYGATE_BIN="${KEYGATE_BIN:-target/debug/keygate}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

declare -a RESULTS=()
FAILED=0
APT_UPDATED=0

header() {
    printf '\n==================== %s ====================\n' "$1"
}

# step NAME CMD...: run CMD under a section header, record PASS/FAIL and the time taken.
# (Called as `step ... || x`, so errexit is off inside: functions run by it check
# their own commands.)
step() {
    local name="$1"
    shift
    header "$name"
    echo "+ $*"
    local t0=$SECONDS rc=0
    "$@" || rc=$?
    local dt=$((SECONDS - t0))
    if [ "$rc" -eq 0 ]; then
        RESULTS+=("PASS  ${name} (${dt}s)")
    else
        RESULTS+=("FAIL  ${name} (${dt}s, exit ${rc})")
        FAILED=1
    fi
    return "$rc"
}

skip() {
    header "$1"
    echo "skipped: $2"
    RESULTS+=("SKIP  $1 ($2)")
    FAILED=1
}

apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

venv_ready() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as md
import pytest
import openai
major, minor = (int(x) for x in md.version("openai").split(".")[:2])
if (major, minor) < (1, 40):
    raise SystemExit(1)
print(f"openai {openai.__version__} / pytest {pytest.__version__}")
EOF
}

setup_venv() {
    local versions
    if versions="$(venv_ready)"; then
        echo "reusing $VENV ($versions)"
        return 0
    fi
    if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$VENV"
        if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
            echo "python venv module missing; installing it with apt-get"
            local v
            v="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            apt_install "python${v}-venv" || apt_install python3-venv || return 1
        fi
        "$PYTHON" -m venv "$VENV" || return 1
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'openai>=1.40' pytest || return 1
    versions="$(venv_ready)" || { echo "openai/pytest still not importable from $VENV"; return 1; }
    echo "installed into $VENV: $versions"
}

# The web console's browser tests: Chromium from apt, playwright-core from npm.
browser_tests() {
    if [ ! -x "$CHROMIUM" ]; then
        echo "chromium missing; installing it with apt-get"
        apt_install chromium || return 1
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "node/npm missing; installing them with apt-get"
        apt_install nodejs npm || return 1
    fi
    if [ ! -d tests/console/node_modules ]; then
        (cd tests/console && npm install --no-audit --no-fund) || return 1
    fi
    echo "node $(node --version), $("$CHROMIUM" --version 2>/dev/null | head -n1)"
    timeout --kill-after=10 "$BROWSER_TIMEOUT" node --test tests/console/
}

T_ALL=$SECONDS
header "environment"
echo "repo: $ROOT"
cargo --version
rustc --version
"$PYTHON" --version
echo "jobs: $JOBS"

step "cargo fmt --check" cargo fmt --all -- --check || true
step "cargo clippy" cargo clippy --jobs "$JOBS" --all-targets -- -D warnings || true
BUILD_OK=1
step "cargo build" cargo build --jobs "$JOBS" || BUILD_OK=0
# The fuzz crate is not a workspace member: type-check its targets so they keep compiling
# (stable is enough; running them, `cargo +nightly fuzz run`, is not part of the suite). Its
# own target directory, so the fuzz crate's features never rebuild the main one.
step "cargo check (fuzz targets)" \
    env CARGO_TARGET_DIR="$ROOT/target/fuzz-check" \
    cargo check --jobs "$JOBS" --manifest-path fuzz/Cargo.toml --bins || true
# tests/cluster.rs starts a real redis-server on a free loopback port.
install_redis() {
    if command -v redis-server >/dev/null 2>&1; then
        redis-server --version
        return 0
    fi
    echo "redis-server missing; installing Debian's redis-server"
    apt_install redis-server || return 1
    # The package may start a system instance on 6379; the tests use their own ports.
    command -v redis-server >/dev/null 2>&1
}
step "redis-server (for cluster tests)" install_redis || true
# The venv comes first: tests/demo.rs runs the demo's printed Python snippet with it.
VENV_OK=1
step "python venv" setup_venv || VENV_OK=0
step "cargo test" cargo test --jobs "$JOBS" || true

if [ "$BUILD_OK" -eq 1 ] && [ "$VENV_OK" -eq 1 ]; then
    step "pytest tests/sdk (OpenAI SDK end to end)" \
        timeout --kill-after=10 "$PYTEST_TIMEOUT" \
        "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/sdk || true
else
    skip "pytest tests/sdk (OpenAI SDK end to end)" "needs a successful cargo build and venv"
fi
# The load harness's statistics (the paired runs' interval and verdicts), on made-up results.
if [ "$VENV_OK" -eq 1 ]; then
    step "pytest benches/load (the load harness's statistics)" \
        timeout --kill-after=10 120 "$VENV/bin/python" -m pytest -q -p no:cacheprovider benches/load/test_tools.py || true
else
    skip "pytest benches/load (the load harness's statistics)" "needs the venv"
fi
# The profile-guided build's training run (scripts/build-pgo.sh runs it on an instrumented
# build), here against the debug binary: every request it makes gets the status it should.
pgo_training() {
    command -v curl >/dev/null 2>&1 || apt_install curl || return 1
    PGO_REQUESTS=1000 timeout --kill-after=10 300 bash scripts/pgo-train.sh target/debug/keygate
}
if [ "$BUILD_OK" -eq 1 ]; then
    step "PGO training run (scripts/pgo-train.sh)" pgo_training || true
else
    skip "PGO training run (scripts/pgo-train.sh)" "needs a successful cargo build"
fi
if [ "$VENV_OK" -eq 1 ]; then
    step "kubernetes manifests (schema + Pod Security)" bash scripts/validate-k8s.sh || true
else
    skip "kubernetes manifests (schema + Pod Security)" "needs the venv"
fi
if [ "$BUILD_OK" -eq 1 ]; then
    step "browser tests (web console)" browser_tests || true
else
    skip "browser tests (web console)" "needs a successful cargo build"
fi

header "summary"
printf '%s\n' "${RESULTS[@]}"
echo "total time: $((SECONDS - T_ALL))s"
if [ "$FAILED" -ne 0 ]; then
    echo "RESULT: FAILED"
    exit 1
fi
echo "RESULT: OK"
