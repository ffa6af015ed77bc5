"""Every Lambda function's real binary answers its sample event from events/, sent the way the
README says to (`cargo lambda invoke -A 127.0.0.1 <function> --data-file events/<function>.json`)
to `cargo lambda watch`, on real dependencies on loopback: DynamoDB Local (a fresh table per run),
moto's SQS (a fresh queue per run, JOBS_QUEUE_URL) and the provider simulator (*_BASE_URL and
*_API_KEY). The events and the handlers therefore cannot drift apart unnoticed: each step checks
the answer's statusCode and a field or two of its body, the placeholders (REPLACE_WITH_TOKEN,
REPLACE_WITH_ORG_ID, REPLACE_WITH_API_KEY, REPLACE_WITH_KEY_ID, REPLACE_WITH_JOB_ID) are filled
into temporary copies from earlier answers, and the last step checks that every file in events/
was sent and every function under functions/ was invoked.

How the binaries run. `cargo lambda watch --only-lambda-apis` serves the Lambda Runtime API and
the invoke endpoint, and this test starts each function's binary from the cargo target directory
(`target/debug`, as `bash infra/scripts/test.sh` builds it with `cargo build --workspace
--all-targets` before pytest) with the variables watch itself gives a function
(AWS_LAMBDA_RUNTIME_API=http://127.0.0.1:<port>/.rt/<function>, AWS_LAMBDA_FUNCTION_NAME, …) plus
the gateway's settings. Letting watch start them instead would run `cargo run --bin <function>`,
which resolves features for that one package without dev-dependencies: tokio without
`test-util`, hyper and tower without their server features, `gateway` without `test-support`,
where the workspace build has them all. The units' hashes differ, so every function would rebuild
most of the dependency graph (many minutes on two cores) and replace the binaries the workspace
build made. Nothing is compiled here; `--ignore-changes` is passed as well, so no edit to the tree
can make watch rebuild or restart anything while the test runs.

Needs GATEWAY_TEST_DYNAMODB_ENDPOINT and GATEWAY_TEST_SQS_ENDPOINT (exported by the test command;
without them the test is skipped, or fails under CI), cargo-lambda in .venv (pinned in
tests/python/requirements.txt) and the debug binaries: the functions', the simulator's and the
local server's (LOCAL_SERVER_BIN / SIMULATOR_BIN; the functions are looked for beside
LOCAL_SERVER_BIN, else in target/debug). The local server creates the table, with the gateway's
own `create_table_if_missing`.
"""

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from local_server import REPO_ROOT, free_port

EVENTS_DIR = REPO_ROOT / "events"
FUNCTIONS_DIR = REPO_ROOT / "functions"
PLACEHOLDER = "REPLACE_WITH_"

# A generous bound for one invoke: the first one of each function includes its cold start and the
# first requests DynamoDB Local (a JVM) answers.
INVOKE_TIMEOUT = 120
START_TIMEOUT = 60

# The free plan's 5 requests a minute would be all but used up by this walk (chat, stream, OpenAI
# chat, job submission, job item): raised so that the walk never depends on the minute it runs in.
GATEWAY_CONFIG = """
[plans.free]
requests_per_minute = 100
"""

# Variables of the caller's environment that must not reach the functions: real keys, another
# signing secret or catalog, Secrets Manager names, a developer's AWS profile or endpoints.
SCRUBBED = (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY",
    "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "GEMINI_BASE_URL",
    "JWT_SECRET", "JWT_SECRET_ID", "PROVIDER_KEYS_SECRET_ID", "GATEWAY_CONFIG", "GATEWAY_TABLE",
    "JOBS_QUEUE_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_LAMBDA_RUNTIME_API", "AWS_LAMBDA_FUNCTION_NAME",
)


def _unavailable(reason: str):
    """Skips the test, or fails it under CI, where everything it needs must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)



def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen):
    """Ends the process group `process` leads (each is started in a session of its own)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=5)


def _binaries_dir() -> Path:
    local_server = os.environ.get("LOCAL_SERVER_BIN")
    if local_server:
        return Path(local_server).parent
    return REPO_ROOT / "target" / "debug"


def _function_names() -> list[str]:
    return sorted(p.name for p in FUNCTIONS_DIR.iterdir() if (p / "Cargo.toml").is_file())


def _newest_source(function: str) -> float:
    """The newest mtime of the Rust sources a function's binary is linked from (cargo relinks the
    binary whenever one of them changes, so a fresh build is never older than they are)."""
    paths = [*(REPO_ROOT / "shared" / "src").rglob("*.rs"), *(FUNCTIONS_DIR / function / "src").rglob("*.rs")]
    return max((p.stat().st_mtime for p in paths), default=0.0)


@dataclass
class Answer:
    """What `cargo lambda invoke` printed for one event."""

    function: str
    event: str
    returncode: int
    stdout: str
    stderr: str
    log: Path

    def describe(self) -> str:
        return (f"{self.function} <- events/{self.event}: exit {self.returncode}\n"
                f"stdout: {self.stdout[:2000]}\nstderr: {self.stderr[-2000:]}\n"
                f"function log:\n{_tail(self.log)}")

    def ok(self):
        assert self.returncode == 0, f"cargo lambda invoke failed\n{self.describe()}"
        return self

    def http(self):
        """An API Gateway proxy answer: (statusCode, headers with lower-case names, body text)."""
        self.ok()
        try:
            envelope = json.loads(self.stdout)
        except ValueError:
            pytest.fail(f"not an API Gateway proxy answer\n{self.describe()}")
        assert "statusCode" in envelope, self.describe()
        headers = {k.lower(): v for k, v in (envelope.get("headers") or {}).items()}
        for name, values in (envelope.get("multiValueHeaders") or {}).items():
            headers[name.lower()] = values[-1]
        body = envelope.get("body") or ""
        if envelope.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        return envelope["statusCode"], headers, body

    def status_and_json(self):
        status, _, body = self.http()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            pytest.fail(f"body is not JSON\n{self.describe()}")

    def raw_json(self):
        """A streaming function's body (watch hands it on as the invoke's payload) or an SQS
        function's answer: JSON as the function wrote it."""
        self.ok()
        try:
            return json.loads(self.stdout)
        except ValueError:
            pytest.fail(f"answer is not JSON\n{self.describe()}")


class Harness:
    """cargo lambda watch, the simulator, the functions started so far, and what was invoked."""

    def __init__(self, workdir: Path, cargo_lambda: str, binaries: Path, env: dict, sqs):
        self.workdir = workdir
        self.cargo_lambda = cargo_lambda
        self.binaries = binaries
        self.env = env
        self.sqs = sqs
        self.port = None
        self.watch = None
        self.functions: dict[str, subprocess.Popen] = {}
        self.used_events: set[str] = set()
        self.invoked: set[str] = set()
        self.state: dict[str, str] = {}
        self.invokes = 0

    def start_watch(self):
        log_path = self.workdir / "cargo-lambda-watch.log"
        for _ in range(3):
            port = free_port()
            with open(log_path, "w") as log:
                watch = subprocess.Popen(
                    [self.cargo_lambda, "lambda", "watch", "--only-lambda-apis", "--ignore-changes",
                     "--color", "never", "-A", "127.0.0.1", "-P", str(port)],
                    cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and watch.poll() is None and not _answers(port):
                time.sleep(0.1)
            if watch.poll() is None and _answers(port):
                self.watch, self.port = watch, port
                return
            _stop(watch)  # the port was taken in between, or it did not come up: again
        pytest.fail(f"cargo lambda watch did not start:\n{_tail(log_path)}")

    def function(self, name: str) -> subprocess.Popen:
        """The function's process, started on first use, polling watch's Runtime API."""
        process = self.functions.get(name)
        if process is not None and process.poll() is None:
            return process
        binary = self.binaries / name
        env = dict(self.env)
        # What `cargo lambda watch` sets for a function it starts itself (its watcher.rs).
        env.update(
            AWS_LAMBDA_FUNCTION_NAME=name,
            AWS_LAMBDA_FUNCTION_VERSION="1",
            AWS_LAMBDA_FUNCTION_MEMORY_SIZE="4096",
            AWS_LAMBDA_MAX_CONCURRENCY="1",
            AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{self.port}/.rt/{name}",
        )
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "a") as log:
            process = subprocess.Popen(
                [str(binary)], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.functions[name] = process
        return process

    def invoke(self, function: str, event: str, **values: str) -> Answer:
        """Sends a copy of events/<event> with its placeholders filled from `values`
        (token=… fills REPLACE_WITH_TOKEN) to `function`."""
        text = (EVENTS_DIR / event).read_text()
        for key, value in values.items():
            text = text.replace(f"{PLACEHOLDER}{key.upper()}", value)
        assert PLACEHOLDER not in text, (
            f"events/{event} has a placeholder this step does not fill: "
            f"{text[text.index(PLACEHOLDER):][:40]}")
        self.invokes += 1
        data_file = self.workdir / f"{self.invokes:02d}-{event}"
        data_file.write_text(text)
        self.used_events.add(event)
        self.invoked.add(function)
        process = self.function(function)
        log_path = self.workdir / f"{function}.log"
        out_path = self.workdir / f"{self.invokes:02d}-{event}.out"
        err_path = self.workdir / f"{self.invokes:02d}-{event}.err"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            invoke = subprocess.Popen(
                [self.cargo_lambda, "lambda", "invoke", "-A", "127.0.0.1", "-P", str(self.port),
                 "--color", "never", function, "--data-file", str(data_file)],
                cwd=REPO_ROOT, env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + INVOKE_TIMEOUT
            while invoke.poll() is None:
                if process.poll() is not None:
                    _stop(invoke)
                    pytest.fail(f"{function} exited (status {process.returncode}) before it "
                                f"answered events/{event}:\n{_tail(log_path)}")
                if time.monotonic() > deadline:
                    _stop(invoke)
                    pytest.fail(f"no answer from {function} to events/{event} within "
                                f"{INVOKE_TIMEOUT}s:\n{_tail(log_path)}\nwatch:\n"
                                f"{_tail(self.workdir / 'cargo-lambda-watch.log')}")
                time.sleep(0.02)
        return Answer(function, event, invoke.returncode, out_path.read_text(),
                      err_path.read_text(), log_path)

    def request_line(self, function: str, after: int = 0) -> dict:
        """The function's latest request log line (its `"message":"request"` JSON line), waiting
        briefly for it: a stream's line is written when the stream settles."""
        log_path = self.workdir / f"{function}.log"
        deadline = time.monotonic() + 5
        while True:
            lines = []
            for raw in log_path.read_text(errors="replace").splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(line, dict) and line.get("message") == "request":
                    lines.append(line)
            if len(lines) > after or time.monotonic() > deadline:
                assert len(lines) > after, f"{function} wrote no request line:\n{_tail(log_path)}"
                return lines[-1]
            time.sleep(0.05)

    def request_lines(self, function: str) -> int:
        log_path = self.workdir / f"{function}.log"
        if not log_path.exists():
            return 0
        return log_path.read_text(errors="replace").count('"message":"request"')

    def close(self):
        for process in self.functions.values():
            _stop(process)
        if self.watch is not None:
            _stop(self.watch)


@pytest.fixture(scope="module")
def lam(tmp_path_factory):
    dynamodb = os.environ.get("GATEWAY_TEST_DYNAMODB_ENDPOINT")
    sqs_endpoint = os.environ.get("GATEWAY_TEST_SQS_ENDPOINT")
    if not dynamodb or not sqs_endpoint:
        _unavailable("GATEWAY_TEST_DYNAMODB_ENDPOINT and GATEWAY_TEST_SQS_ENDPOINT are not both set: "
                     "run bash infra/scripts/test.sh, which starts DynamoDB Local and moto")
    venv_bin = REPO_ROOT / ".venv" / "bin"
    cargo_lambda = shutil.which("cargo-lambda", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if not cargo_lambda:
        _unavailable("cargo-lambda is not installed: tests/python/requirements.txt pins it, "
                     "bash infra/scripts/test.sh installs it into .venv")
    if not shutil.which("cargo"):
        _unavailable("cargo is not on PATH (cargo lambda watch reads the workspace's metadata)")
    binaries = _binaries_dir()
    simulator = Path(os.environ.get("SIMULATOR_BIN", binaries / "simulator"))
    local_server = Path(os.environ.get("LOCAL_SERVER_BIN", binaries / "local-server"))
    missing = [str(p) for p in [simulator, local_server, *(binaries / f for f in _function_names())]
               if not p.is_file()]
    if missing:
        _unavailable(f"not built: {', '.join(missing)} (cargo build --workspace --all-targets)")
    stale = [f for f in _function_names()
             if (binaries / f).stat().st_mtime < _newest_source(f)]
    if stale:
        warnings.warn(f"these function binaries are older than their sources, so this test runs the "
                      f"code as it was built: {', '.join(stale)} (cargo build --workspace --all-targets)")

    import boto3

    workdir = tmp_path_factory.mktemp("lambda-invoke")
    run = uuid.uuid4().hex[:10]
    table = f"lambda-invoke-{run}"
    aws = dict(AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local", AWS_REGION="us-east-1",
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    base_env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    base_env.update(aws, NO_COLOR="1", RUST_LOG="info")
    base_env["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"

    # The table, as the gateway itself creates it (`create_table_if_missing`): the local server
    # with --create-tables, stopped once it answers.
    port = free_port()
    log_path = workdir / "local-server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(local_server), "--port", str(port), "--store", "dynamodb", "--table", table,
             "--create-tables"],
            env={**base_env, "AWS_ENDPOINT_URL_DYNAMODB": dynamodb}, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"local-server did not create the table {table}:\n{_tail(log_path)}")
            time.sleep(0.1)
    finally:
        _stop(server)

    sqs = boto3.client("sqs", endpoint_url=sqs_endpoint, region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    queue_url = sqs.create_queue(QueueName=f"lambda-invoke-jobs-{run}")["QueueUrl"]

    # It prints "simulator listening on http://…" on stdout once it listens on a free port; its
    # logs go to stdout too, so all of it goes to a file (a pipe nobody reads would fill up).
    sim_log = workdir / "simulator.log"
    with open(sim_log, "w") as log:
        sim = subprocess.Popen(
            [str(simulator), "--host", "127.0.0.1", "--port", "0"], env=base_env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        line = next((l for l in sim_log.read_text(errors="replace").splitlines()
                     if l.startswith("simulator listening on ")), None)
        if line:
            break
        if sim.poll() is not None or time.monotonic() > deadline:
            _stop(sim)
            pytest.fail(f"the simulator did not start:\n{_tail(sim_log)}")
        time.sleep(0.05)
    sim_url = line.rsplit("listening on ", 1)[1].strip()

    config = workdir / "gateway.toml"
    config.write_text(GATEWAY_CONFIG)
    env = dict(base_env)
    env.update(
        AWS_ENDPOINT_URL_DYNAMODB=dynamodb,
        AWS_ENDPOINT_URL_SQS=sqs_endpoint,
        GATEWAY_TABLE=table,
        JOBS_QUEUE_URL=queue_url,
        GATEWAY_CONFIG=str(config),
        JWT_SECRET=secrets.token_hex(32),
        OPENAI_BASE_URL=sim_url, ANTHROPIC_BASE_URL=sim_url, GEMINI_BASE_URL=sim_url,
        OPENAI_API_KEY="simulated-key", ANTHROPIC_API_KEY="simulated-key",
        GEMINI_API_KEY="simulated-key",
    )
    harness = Harness(workdir, cargo_lambda, binaries, env, sqs)
    harness.state["queue_url"] = queue_url
    try:
        harness.start_watch()
        yield harness
    finally:
        harness.close()
        _stop(sim)
        try:
            sqs.delete_queue(QueueUrl=queue_url)
            boto3.client("dynamodb", endpoint_url=dynamodb, region_name="us-east-1",
                         aws_access_key_id="local", aws_secret_access_key="local").delete_table(
                TableName=table)
        except Exception:  # noqa: BLE001 - best effort: the servers are the test command's
            pass


def need(lam: Harness, *keys: str):
    missing = [k for k in keys if k not in lam.state]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} from an earlier step, which failed")
    return [lam.state[k] for k in keys]


# ---- the walk, in order ------------------------------------------------------------------------


def test_auth_register(lam):
    status, body = lam.invoke("auth-register", "auth-register.json").status_and_json()
    assert status == 201, body
    assert body["token_type"] == "bearer" and body["access_token"], body


def test_auth_login(lam):
    status, body = lam.invoke("auth-login", "auth-login.json").status_and_json()
    assert status == 200, body
    assert body["token_type"] == "bearer", body
    lam.state["token"] = body["access_token"]


def test_orgs_create(lam):
    (token,) = need(lam, "token")
    status, body = lam.invoke("orgs-create", "orgs-create.json", token=token).status_and_json()
    assert status == 201, body
    assert (body["slug"], body["role"], body["plan"]) == ("acme", "owner", "free"), body
    lam.state["org"] = body["id"]


def test_orgs_list(lam):
    token, org = need(lam, "token", "org")
    status, body = lam.invoke("orgs-list", "orgs-list.json", token=token).status_and_json()
    assert status == 200, body
    assert [o["id"] for o in body] == [org], body


def test_ai_models(lam):
    token, org = need(lam, "token", "org")
    status, body = lam.invoke("ai-models", "ai-models.json", token=token, org_id=org).status_and_json()
    assert status == 200, body
    assert body["plan"] == "free", body
    assert {m["id"] for m in body["models"]} == {"gemini-1.5-flash", "gpt-4o-mini"}, body


def test_ai_chat(lam):
    token, org = need(lam, "token", "org")
    status, body = lam.invoke("ai-chat", "ai-chat.json", token=token, org_id=org).status_and_json()
    assert status == 200, body
    assert body["model"] == "gemini-1.5-flash" and body["finish_reason"] == "stop", body
    assert body["message"] and body["usage"]["total_tokens"] > 0, body


def test_ai_chat_stream(lam):
    token, org = need(lam, "token", "org")
    before = lam.request_lines("ai-chat-stream")
    answer = lam.invoke("ai-chat-stream", "ai-chat-stream.json", token=token, org_id=org)
    line = lam.request_line("ai-chat-stream", after=before)
    # A streaming function's body reaches `invoke` as is: watch answers with the status of the
    # stream's prelude, and invoke prints the body only for a 200.
    answer.ok()
    assert line["status"] == 200, line
    # Named by API Gateway's resource, whatever the stage in the path: one metric per route.
    assert line["route"] == "/api/v1/ai/chat/stream" and line["output_tokens"] > 0, line
    events = answer.stdout.split("\n\n")
    assert any(e.startswith("data: ") and e != "data: [DONE]" for e in events), answer.stdout
    assert "data: [DONE]" in answer.stdout and "event: usage" in answer.stdout, answer.stdout


def test_ai_usage(lam):
    token, org = need(lam, "token", "org")
    status, body = lam.invoke("ai-usage", "ai-usage.json", token=token, org_id=org).status_and_json()
    assert status == 200, body
    # The event asks for ?month=2026-10.
    assert body["month"] == "2026-10" and body["messages_limit"] == 50, body


def test_ai_requests(lam):
    token, org = need(lam, "token", "org")
    status, body = lam.invoke("ai-requests", "ai-requests.json", token=token,
                              org_id=org).status_and_json()
    assert status == 200, body
    assert any(r["model"] == "gemini-1.5-flash" and r["status"] == "success"
               for r in body["requests"]), body


def test_dashboard(lam):
    status, headers, page = lam.invoke("dashboard", "dashboard.json").http()
    assert status == 200, page[:500]
    assert headers["content-type"] == "text/html; charset=utf-8", headers
    assert "/api/v1/ai/usage" in page


def test_dashboard_serves_the_api_document(lam):
    status, headers, text = lam.invoke("dashboard", "dashboard-openapi.json").http()
    assert status == 200, text[:500]
    assert headers["content-type"].startswith("application/json"), headers
    document = json.loads(text)
    assert document["openapi"].startswith("3."), document.get("openapi")
    assert "/v1/chat/completions" in document["paths"]


def test_api_keys_create(lam):
    token, org = need(lam, "token", "org")
    status, body = lam.invoke("api-keys-create", "api-keys-create.json", token=token,
                              org_id=org).status_and_json()
    assert status == 201, body
    assert body["name"] == "backend" and body["key"].startswith("sk-gw-"), body
    lam.state["api_key"], lam.state["key_id"] = body["key"], body["id"]


def test_api_keys_list(lam):
    token, org, key_id = need(lam, "token", "org", "key_id")
    status, body = lam.invoke("api-keys-list", "api-keys-list.json", token=token,
                              org_id=org).status_and_json()
    assert status == 200, body
    assert [k["id"] for k in body["keys"]] == [key_id], body
    assert all("key" not in k for k in body["keys"]), "a listed key shows its secret"


def test_openai_models(lam):
    (api_key,) = need(lam, "api_key")
    status, body = lam.invoke("openai-models", "openai-models.json", api_key=api_key).status_and_json()
    assert status == 200, body
    assert body["object"] == "list" and body["data"][0]["object"] == "model", body


def test_openai_model(lam):
    # GET /v1/models/{id} is a route of the openai-models function; its event has its own file.
    (api_key,) = need(lam, "api_key")
    status, body = lam.invoke("openai-models", "openai-model.json", api_key=api_key).status_and_json()
    assert status == 200, body
    assert body["id"] == "gpt-4o-mini" and body["object"] == "model", body


def test_openai_chat(lam):
    (api_key,) = need(lam, "api_key")
    before = lam.request_lines("openai-chat")
    body = lam.invoke("openai-chat", "openai-chat.json", api_key=api_key).raw_json()
    assert lam.request_line("openai-chat", after=before)["status"] == 200
    assert body["object"] == "chat.completion" and body["model"] == "gpt-4o-mini", body
    assert body["choices"][0]["message"]["content"] and body["usage"]["total_tokens"] > 0, body


def test_api_keys_revoke(lam):
    token, org, key_id, api_key = need(lam, "token", "org", "key_id", "api_key")
    status, _, body = lam.invoke("api-keys-revoke", "api-keys-revoke.json", token=token, org_id=org,
                                 key_id=key_id).http()
    assert status == 204, body
    # AND the revoked key is refused on its very next request
    status, body = lam.invoke("openai-models", "openai-models.json", api_key=api_key).status_and_json()
    assert status == 401 and body["error"]["code"] == "invalid_api_key", body


def test_jobs_submit(lam):
    token, org = need(lam, "token", "org")
    status, body = lam.invoke("jobs-submit", "jobs-submit.json", token=token,
                              org_id=org).status_and_json()
    assert status == 202, body
    assert body["status"] == "queued" and body["total"] == 2, body
    job = body["id"]
    lam.state["job"] = job
    # AND SQS holds one message per item, shaped as events/jobs-worker.json's message is
    sample = json.loads(json.loads((EVENTS_DIR / "jobs-worker.json").read_text())
                        ["Records"][0]["body"])
    bodies = []
    deadline = time.monotonic() + 10
    while len(bodies) < 2 and time.monotonic() < deadline:
        got = lam.sqs.receive_message(QueueUrl=lam.state["queue_url"], MaxNumberOfMessages=10,
                                      WaitTimeSeconds=1)
        bodies += [json.loads(m["Body"]) for m in got.get("Messages", [])]
    assert sorted(b["item_id"] for b in bodies) == ["q1", "q2"], bodies
    assert all(b["job_id"] == job and set(b) == set(sample) for b in bodies), (bodies, sample)


def test_jobs_list(lam):
    token, org, job = need(lam, "token", "org", "job")
    status, body = lam.invoke("jobs-list", "jobs-list.json", token=token, org_id=org).status_and_json()
    assert status == 200, body
    assert [j["id"] for j in body["jobs"]] == [job], body


def test_jobs_get(lam):
    token, org, job = need(lam, "token", "org", "job")
    status, body = lam.invoke("jobs-get", "jobs-get.json", token=token, org_id=org,
                              job_id=job).status_and_json()
    assert status == 200, body
    assert body["id"] == job and body["status"] == "queued", body
    assert body["progress"] == {"done": 0, "total": 2, "succeeded": 0, "failed": 0}, body


def test_jobs_worker(lam):
    token, org, job = need(lam, "token", "org", "job")
    # The SQS event carries item q1 of the job and a poison message.
    answer = lam.invoke("jobs-worker", "jobs-worker.json", job_id=job).raw_json()
    # q1 is answered; the poison message alone is reported back for redelivery (and the DLQ).
    assert answer == {"batchItemFailures": [
        {"itemIdentifier": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"}]}, answer
    # AND polling the job shows q1 answered, q2 still queued
    status, body = lam.invoke("jobs-get", "jobs-get.json", token=token, org_id=org,
                              job_id=job).status_and_json()
    assert status == 200, body
    assert body["progress"]["succeeded"] == 1 and body["status"] == "running", body
    items = {i["id"]: i for i in body["items"]}
    assert items["q1"]["status"] == "succeeded" and items["q1"]["result"], items
    assert items["q2"]["status"] == "queued", items


def test_every_event_and_every_function_was_invoked(lam):
    files = {p.name for p in EVENTS_DIR.glob("*.json")}
    assert files - lam.used_events == set(), "events never sent"
    assert set(_function_names()) - lam.invoked == set(), "functions never invoked"
