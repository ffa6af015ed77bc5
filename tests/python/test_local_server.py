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


@pytest.fixture(scope="module")
def gateway():
    endpoint = os.environ.get("GATEWAY_TEST_DYNAMODB_ENDPOINT")
    if not endpoint:
        if os.environ.get("CI"):
            pytest.fail("GATEWAY_TEST_DYNAMODB_ENDPOINT must be set under CI")
        pytest.skip("GATEWAY_TEST_DYNAMODB_ENDPOINT is not set (run bash infra/scripts/test.sh)")
    binary = Path(os.environ.get("LOCAL_SERVER_BIN", REPO_ROOT / "target" / "debug" / "local-server"))
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "JWT_SECRET")
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
    table = f"local-server-{uuid.uuid4().hex[:8]}"
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{table}.log"
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
    yield base, log_path
    process.terminate()
    process.wait(timeout=10)


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
