"""Each request's log line, as CloudWatch would read it: the local server binary run with
`--log-json` (the Lambda functions' format) writes one JSON line per request that is also an
Embedded Metric Format document. Checks the lines against what the API answered, the EMF rules
CloudWatch applies, and that no secret reaches any line.

Needs LOCAL_SERVER_BIN (default: target/debug/local-server); `bash infra/scripts/test.sh` builds it.
"""

import json
import subprocess
import time
import urllib.request

import openai
import pytest

import local_server
from test_openai_compat import _call

ADMIN = "operator-secret-token-for-logs"
PASSWORD = "a very secret password 42"
PROVIDER_KEY = "sk-openai-key-that-must-never-be-logged"
PLANS = """
[retries]
base_delay_ms = 10
max_delay_ms = 50

[plans.roomy]
requests_per_minute = 1000
messages_per_month = "unlimited"
tokens_per_month = 1000000000
max_tokens_per_request = 4096
models = "all"

[plans.one]
requests_per_minute = 1
messages_per_month = 100
tokens_per_month = 100000
max_tokens_per_request = 1024
models = "all"

[plans.spent]
requests_per_minute = 100
messages_per_month = 1
tokens_per_month = 100000
max_tokens_per_request = 1024
models = "all"
"""


class Server:
    def __init__(self, base, log_path):
        self.base = base
        self.log_path = log_path

    def lines(self):
        """Every request line written so far, parsed."""
        out = []
        for raw in self.log_path.read_text().splitlines():
            if raw.startswith("{") and '"message":"request"' in raw:
                out.append(json.loads(raw))
        return out

    def line_for(self, predicate, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines() if predicate(line)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "gateway.toml"
    config.write_text(PLANS)
    # A provider key that is set but points at nothing: it must not show up in any line either.
    env = local_server.clean_env(
        GATEWAY_CONFIG=str(config), GATEWAY_ADMIN_TOKEN=ADMIN, RUST_LOG="debug",
        JWT_SECRET="jwt-secret-that-must-never-be-logged-0123456789",
        OPENAI_API_KEY=PROVIDER_KEY, OPENAI_BASE_URL="http://127.0.0.1:9")
    log_path = tmp_path_factory.mktemp("logs") / "local-server.log"
    with local_server.running(env, log_path, args=["--log-json"]) as base:
        yield Server(base, log_path)


@pytest.fixture(scope="module")
def account(server):
    status, body = _call("POST", f"{server.base}/api/v1/auth/register",
                         {"email": "logs@example.com", "password": PASSWORD})
    assert status == 201, body
    token = body["access_token"]
    orgs = {}
    for plan in ("roomy", "one", "spent"):
        status, body = _call("POST", f"{server.base}/api/v1/orgs", {"name": plan, "slug": f"logs-{plan}"}, token)
        assert status == 201, body
        orgs[plan] = body["id"]
        status, body = _call("PUT", f"{server.base}/admin/orgs/{orgs[plan]}/plan", {"plan": plan}, ADMIN)
        assert status == 200, body
    status, key = _call("POST", f"{server.base}/api/v1/orgs/{orgs['roomy']}/api-keys", {"name": "logs"}, token)
    assert status == 201, key
    return {"token": token, "orgs": orgs, "key": key}


def _assert_valid_emf(line):
    """The rules CloudWatch applies before it extracts metrics from a log line."""
    aws = line["_aws"]
    assert isinstance(aws["Timestamp"], int) and aws["Timestamp"] > 1_600_000_000_000
    (directive,) = aws["CloudWatchMetrics"]
    assert directive["Namespace"] == "AiGateway"
    for dimension_set in directive["Dimensions"]:
        assert 1 <= len(dimension_set) <= 30
        for name in dimension_set:
            assert isinstance(line[name], str) and line[name], name
    names = [metric["Name"] for metric in directive["Metrics"]]
    assert len(names) == len(set(names)) <= 100
    for metric in directive["Metrics"]:
        assert metric["Unit"] in ("Count", "Milliseconds", "None")
        assert isinstance(line[metric["Name"]], (int, float)), metric
    # Never a dimension by org or user: one series per tenant would cost without bound.
    dimension_names = {name for ds in directive["Dimensions"] for name in ds}
    assert dimension_names <= {"Route", "Model", "Provider"}


def test_a_chat_ends_with_one_line_that_matches_its_answer(server, account):
    org = account["orgs"]["roomy"]
    status, body = _call_with_org(server, "POST", "/api/v1/ai/chat", account, org,
                                  {"messages": [{"role": "user", "content": "count my tokens"}],
                                   "model": "claude-3-haiku"})
    assert status == 200, body
    (line,) = server.line_for(lambda l: l["route"] == "/api/v1/ai/chat" and l.get("org_id") == org
                              and l.get("status") == 200)
    _assert_valid_emf(line)
    assert line["method"] == "POST" and line["Route"] == "POST /api/v1/ai/chat"
    assert line["model_requested"] == line["model_served"] == line["Model"] == "claude-3-haiku"
    assert line["provider"] == line["Provider"] == "anthropic"
    assert line["input_tokens"] == body["usage"]["input_tokens"] == line["InputTokens"]
    assert line["output_tokens"] == body["usage"]["output_tokens"] == line["OutputTokens"]
    # Claude 3 Haiku: $0.00025 in and $0.00125 out per 1K tokens = 250 and 1,250 n$ per token.
    assert line["cost_nano_usd"] == 250 * line["input_tokens"] + 1250 * line["output_tokens"]
    assert line["CostNanoUsd"] == line["cost_nano_usd"]
    assert line["attempts"] == 1 and line["outcome"] == "success"
    assert line["user_id"] and line["request_id"]
    assert line["duration_ms"] > 0 and line["Latency"] == line["duration_ms"]
    assert "time_to_first_token_ms" not in line
    assert "Errors" not in line


def test_a_stream_is_logged_once_it_ends_with_its_time_to_first_token(server, account):
    org = account["orgs"]["roomy"]
    request = urllib.request.Request(
        f"{server.base}/api/v1/ai/chat/stream", method="POST",
        data=json.dumps({"messages": [{"role": "user", "content": "stream [sim:tokens=30] please"}],
                         "model": "gemini-1.5-flash"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {account['token']}",
                 "X-Current-Org": org})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    usage = json.loads(text.split("event: usage\ndata: ")[1].split("\n")[0])
    (line,) = server.line_for(lambda l: l["route"] == "/api/v1/ai/chat/stream" and l.get("org_id") == org)
    _assert_valid_emf(line)
    assert line["status"] == 200 and line["outcome"] == "success"
    assert line["output_tokens"] == usage["output_tokens"]
    assert 0 < line["time_to_first_token_ms"] <= line["duration_ms"]
    assert line["TimeToFirstToken"] == line["time_to_first_token_ms"]


def test_an_api_key_call_names_the_key_and_limits_are_counted_by_class(server, account):
    key = account["key"]
    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key=key["key"], max_retries=0)
    answer = client.chat.completions.create(model="claude-3-haiku",
                                            messages=[{"role": "user", "content": "hi"}])
    (line,) = server.line_for(lambda l: l.get("request_id") == answer.id.removeprefix("chatcmpl-"))
    _assert_valid_emf(line)
    assert line["key_id"] == key["id"] and line["route"] == "/v1/chat/completions"
    assert line["status"] == 200 and line["output_tokens"] == answer.usage.completion_tokens

    one = account["orgs"]["one"]
    statuses = [
        _call_with_org(server, "POST", "/api/v1/ai/chat", account, one,
                       {"messages": [{"role": "user", "content": "hi"}], "model": "gemini-1.5-flash"})[0]
        for _ in range(2)
    ]
    assert statuses == [200, 429]
    (limited,) = server.line_for(lambda l: l.get("org_id") == one and l.get("status") == 429)
    _assert_valid_emf(limited)
    assert limited["error_class"] == "rate_limited" and limited["RateLimited"] == 1
    assert limited["Errors"] == 1 and "ClientErrors" not in limited

    spent = account["orgs"]["spent"]
    statuses = [
        _call_with_org(server, "POST", "/api/v1/ai/chat", account, spent,
                       {"messages": [{"role": "user", "content": "hi"}], "model": "gemini-1.5-flash"})[0]
        for _ in range(2)
    ]
    assert statuses == [200, 402]
    (refused,) = server.line_for(lambda l: l.get("org_id") == spent and l.get("status") == 402)
    assert refused["error_class"] == "quota" and refused["QuotaRefused"] == 1


def test_a_provider_failure_is_counted_as_one(server, account):
    org = account["orgs"]["roomy"]
    status, body = _call_with_org(server, "POST", "/api/v1/ai/chat", account, org,
                                  {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o-mini"})
    assert status in (502, 504), body
    (line,) = server.line_for(lambda l: l.get("org_id") == org and l.get("status") in (502, 504))
    _assert_valid_emf(line)
    assert line["error_class"] == "provider" and line["ProviderErrors"] == 1
    assert line["model_requested"] == "gpt-4o-mini" and line["provider"] == "openai"
    assert line["outcome"] == "error" and line["attempts"] >= 1
    assert line["input_tokens"] == line["output_tokens"] == line["cost_nano_usd"] == 0


def test_every_request_has_exactly_one_line_and_routes_stay_few(server, account):
    before = len(server.lines())
    paths = ["/api/v1/ai/models", "/api/v1/ai/usage", "/api/v1/ai/requests", "/v1/models",
             "/nope/a-path-nobody-has/123", "/api/v1/ai/jobs/some-job-id"]
    for path in paths:
        _call_with_org(server, "GET", path, account, account["orgs"]["roomy"])
    lines = server.line_for(lambda l: True)
    deadline = time.monotonic() + 5
    while len(lines) < before + len(paths) and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = server.lines()
    new = lines[before:]
    assert [l["route"] for l in new] == ["/api/v1/ai/models", "/api/v1/ai/usage", "/api/v1/ai/requests",
                                          "/v1/models", "other", "/api/v1/ai/jobs/{id}"]
    for line in new:
        _assert_valid_emf(line)


def test_no_secret_reaches_any_line(server, account):
    # A wrong password and a forged token are logged as refusals, not echoed.
    _call("POST", f"{server.base}/api/v1/auth/login", None)
    login = urllib.request.Request(f"{server.base}/api/v1/auth/login", method="POST",
                                   data=b"username=logs%40example.com&password=wrong-secret-password-7",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        urllib.request.urlopen(login, timeout=5)
    except urllib.error.HTTPError as err:
        assert err.code == 401
    _call("GET", f"{server.base}/v1/models", token="sk-gw-forged-key-that-must-not-appear-000000")
    time.sleep(0.3)
    log = server.log_path.read_text()
    for secret in (PASSWORD, "wrong-secret-password-7", account["token"], account["key"]["key"],
                   ADMIN, PROVIDER_KEY, "jwt-secret-that-must-never-be-logged",
                   "sk-gw-forged-key-that-must-not-appear"):
        assert secret not in log, f"a secret reached the log: {secret[:6]}…"


def _call_with_org(server, method, path, account, org, body=None):
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {account['token']}",
               "X-Current-Org": org}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.base}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


def test_an_unusable_provider_url_stops_the_server_and_names_the_variable():
    # GIVEN a base URL that no request could be sent to, carrying a proxy's credentials
    env = local_server.clean_env(OPENAI_BASE_URL="ftp://proxy-user:proxy-password-7@example.com")
    # WHEN the server starts
    started = subprocess.run([str(local_server.binary()), "--port", str(local_server.free_port())],
                             env=env, capture_output=True, text=True, timeout=60)
    # THEN it stops at once, saying which variable is wrong, without repeating its value
    output = started.stdout + started.stderr
    assert started.returncode != 0, output
    assert "OPENAI_BASE_URL" in output, output
    assert "proxy-password-7" not in output
