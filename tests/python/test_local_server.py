"""The local server binary as a user runs it: `local-server --store dynamodb --create-tables` against
the DynamoDB Local that the test command started, walked through the seed's curl flow over HTTP.

Needs GATEWAY_TEST_DYNAMODB_ENDPOINT (set by `bash infra/scripts/test.sh`) and LOCAL_SERVER_BIN
(default: target/debug/local-server).
"""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _call(method, url, body=None, headers=None, form=False):
    headers = dict(headers or {})
    data = None
    if body is not None:
        if form:
            data = urllib.parse.urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _dynamodb_endpoint() -> str:
    endpoint = os.environ.get("GATEWAY_TEST_DYNAMODB_ENDPOINT")
    if not endpoint:
        if os.environ.get("CI"):
            pytest.fail("GATEWAY_TEST_DYNAMODB_ENDPOINT must be set under CI")
        pytest.skip("GATEWAY_TEST_DYNAMODB_ENDPOINT is not set (run bash infra/scripts/test.sh)")
    return endpoint


def _start(table: str, extra_env=None, name=None):
    """Starts one local-server process on `table` in DynamoDB Local: (base URL, log path, process)."""
    endpoint = _dynamodb_endpoint()
    binary = Path(os.environ.get("LOCAL_SERVER_BIN", REPO_ROOT / "target" / "debug" / "local-server"))
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "JWT_SECRET", "GATEWAY_CONFIG")
    }
    env.update(
        AWS_ENDPOINT_URL_DYNAMODB=endpoint,
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="local",
        AWS_SECRET_ACCESS_KEY="local",
        GATEWAY_ADMIN_TOKEN="op-token",
        RUST_LOG="info",
        NO_COLOR="1",
    )
    env.update(extra_env or {})
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name or table}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(binary), "--port", str(port), "--store", "dynamodb", "--table", table, "--create-tables"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"local-server exited: {log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail(f"local-server did not start: {log_path.read_text()}")
    return base, log_path, process


def _stop(process):
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def gateway():
    base, log_path, process = _start(f"local-server-{uuid.uuid4().hex[:8]}")
    yield base, log_path
    _stop(process)


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory):
    """Two local-server processes on one table, as two Lambda instances share DynamoDB: same token
    secret, and a `burst` plan (1,000 requests a minute, 8 messages a month) for the second part."""
    config = tmp_path_factory.mktemp("config") / "gateway.toml"
    config.write_text(
        "[plans.burst]\n"
        "requests_per_minute = 1000\n"
        "messages_per_month = 8\n"
        'tokens_per_month = "unlimited"\n'
        "max_tokens_per_request = 1024\n"
        'models = "all"\n'
    )
    table = f"shared-{uuid.uuid4().hex[:8]}"
    env = {"JWT_SECRET": "two-processes-share-this-signing-secret-0123", "GATEWAY_CONFIG": str(config)}
    first = _start(table, env, name=f"{table}-a")
    second = _start(table, env, name=f"{table}-b")
    yield first[0], second[0]
    _stop(first[2])
    _stop(second[2])


def test_seed_flow_on_dynamodb(gateway):
    base, log_path = gateway
    status, body = _call("POST", f"{base}/api/v1/auth/register",
                         {"email": "ada@example.com", "password": "correct horse battery"})
    assert status == 201, body
    status, body = _call("POST", f"{base}/api/v1/auth/login",
                         {"username": "ada@example.com", "password": "correct horse battery"}, form=True)
    assert status == 200, body
    auth = {"Authorization": f"Bearer {body['access_token']}"}

    status, org = _call("POST", f"{base}/api/v1/orgs", {"name": "Acme", "slug": "acme"}, auth)
    assert status == 201, org
    status, body = _call("POST", f"{base}/api/v1/orgs", {"name": "Again", "slug": "acme"}, auth)
    assert status == 409, body
    status, orgs = _call("GET", f"{base}/api/v1/orgs", headers=auth)
    assert [o["slug"] for o in orgs] == ["acme"]

    in_org = {**auth, "X-Current-Org": org["id"]}
    status, models = _call("GET", f"{base}/api/v1/ai/models", headers=in_org)
    assert models["plan"] == "free"
    status, answer = _call("POST", f"{base}/api/v1/ai/chat",
                           {"messages": [{"role": "user", "content": "Hello"}], "model": "gpt-4o-mini"}, in_org)
    assert status == 200, answer
    assert answer["usage"]["total_tokens"] == answer["usage"]["input_tokens"] + answer["usage"]["output_tokens"]

    # The operator moves the org to pro; the very next request sees it.
    status, body = _call("PUT", f"{base}/admin/orgs/{org['id']}/plan", {"plan": "pro"},
                         {"Authorization": "Bearer op-token"})
    assert status == 200, body
    status, answer = _call("POST", f"{base}/api/v1/ai/chat",
                           {"messages": [{"role": "user", "content": "Hello"}], "model": "claude-3-haiku"}, in_org)
    assert status == 200, answer

    # The start-up log says which providers are simulated, and never prints a secret.
    log = log_path.read_text()
    for provider in ("google", "anthropic", "openai"):
        assert f"provider={provider}" in log and "provider is simulated" in log
    assert "op-token" not in log


def _away_from_a_minute_boundary():
    """Waits past the next minute boundary if one is near: a burst split across two rate windows
    would rightly be admitted twice."""
    into_minute = time.time() % 60
    if into_minute > 45:
        time.sleep(60.5 - into_minute)


def _burst(calls):
    """Runs every call at once (each on its own thread); their statuses."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [status for status, _ in pool.map(lambda call: call(), calls)]


def test_limits_hold_across_processes(two_gateways):
    a, b = two_gateways
    # GIVEN a free-plan org (5 requests a minute) whose members' requests reach either process
    status, _ = _call("POST", f"{a}/api/v1/auth/register",
                      {"email": "burst@example.com", "password": "correct horse battery"})
    assert status == 201
    status, body = _call("POST", f"{b}/api/v1/auth/login",
                         {"username": "burst@example.com", "password": "correct horse battery"}, form=True)
    assert status == 200, body
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    status, org = _call("POST", f"{a}/api/v1/orgs", {"name": "Burst", "slug": "burst"}, auth)
    assert status == 201, org
    in_org = {**auth, "X-Current-Org": org["id"]}
    chat = {"messages": [{"role": "user", "content": "Hello"}], "model": "gemini-1.5-flash", "max_tokens": 16}

    def ask(base):
        return lambda: _call("POST", f"{base}/api/v1/ai/chat", chat, in_org)

    # WHEN 24 requests arrive at once, half at each process
    _away_from_a_minute_boundary()
    statuses = _burst([ask(a), ask(b)] * 12)
    # THEN exactly the minute's 5 are answered and the rest are told to wait
    assert statuses.count(200) == 5, statuses
    assert statuses.count(429) == 19, statuses

    # GIVEN the operator moves the org to `burst` (8 messages a month, 5 already used)
    status, body = _call("PUT", f"{a}/admin/orgs/{org['id']}/plan", {"plan": "burst"},
                         {"Authorization": "Bearer op-token"})
    assert status == 200, body
    # WHEN another 24 arrive at once across both processes
    statuses = _burst([ask(a), ask(b)] * 12)
    # THEN exactly the 3 messages left are answered, and the rest are refused with 402
    assert statuses.count(200) == 3, statuses
    assert statuses.count(402) == 21, statuses
    status, usage = _call("GET", f"{b}/api/v1/ai/usage", headers=in_org)
    assert status == 200, usage
    assert (usage["total_messages"], usage["messages_limit"]) == (8, 8), usage
