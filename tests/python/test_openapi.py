"""The OpenAPI document (shared/openapi.json) against the code that serves the API.

- The document is valid OpenAPI 3.1 (openapi-spec-validator), its schemas valid JSON Schema
  2020-12, and every example in it matches its schema.
- Its paths are exactly the gateway's routes: `ROUTE_TEMPLATES` in shared/src/api/mod.rs (read as
  text), less `/health` and the local server's operator route `PUT /admin/orgs/{id}/plan`, which
  the public document leaves out; every method it documents reaches a handler and no other does.
- Each operation's security is as documented: no or a bad credential is 401, a user's token is
  taken, an org API key exactly where the operation lists `ApiKey`.
- schemathesis fuzzes every operation (its documented examples, then generated valid and invalid
  requests) against the local server binary, on the in-memory store and on DynamoDB Local, signed
  in in turn as the org's API key, as a user acting for their org, for a stranger's org, or with
  whatever org header it made, and checks each answer: no 5xx, invalid requests refused, and the
  status code, content type, headers and body (every event of a stream) as documented.
- Answers the fuzzer cannot reach are made on purpose and checked the same way: rate limits, plan
  and month refusals, a provider that cannot be reached (502) or never answers (504).

Needs LOCAL_SERVER_BIN (default: target/debug/local-server) and, for the DynamoDB runs,
GATEWAY_TEST_DYNAMODB_ENDPOINT; `bash infra/scripts/test.sh` provides both.
"""

import contextlib
import http.client
import itertools
import json
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jsonschema
import pytest

import local_server
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from openapi_spec_validator import validate as validate_spec
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Hypothesis keeps its caches out of the repository (no example database is used: see below).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "gateway-openapi-hypothesis")

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = REPO_ROOT / "shared" / "openapi.json"
ROUTES_SOURCE = REPO_ROOT / "shared" / "src" / "api" / "mod.rs"
ADMIN = "openapi-operator-token"
# Routes of ROUTE_TEMPLATES the public document leaves out: the load balancer's probe, and the
# local server's operator route (in AWS an operator changes plans with the `admin` tool).
UNDOCUMENTED_ROUTES = {"/health", "/admin/orgs/{}/plan"}
HTTP_METHODS = ["get", "put", "post", "delete", "patch"]
# A plan roomy enough that the fuzzer meets no limit; tokens are limited (by a lot) so the
# token headers of /v1 answers are exercised too.
CONFIG = """
[retries]
max_attempts = 2
base_delay_ms = 10
max_delay_ms = 50

[plans.roomy]
requests_per_minute = 100000
messages_per_month = "unlimited"
tokens_per_month = 1000000000
max_tokens_per_request = 8192
models = "all"

[plans.minute]
requests_per_minute = 1
messages_per_month = "unlimited"
tokens_per_month = "unlimited"
max_tokens_per_request = 1024
models = "all"

[plans.spent]
requests_per_minute = 1000
messages_per_month = 1
tokens_per_month = 100000
max_tokens_per_request = 256
models = ["gemini-1.5-flash"]
"""
# Examples per operation and generation mode; the whole file stays well under three minutes.
MAX_EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "30"))
REQUEST_TIMEOUT = 20
CHECKS = [
    not_a_server_error,
    negative_data_rejection,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _document() -> dict:
    return json.loads(DOCUMENT.read_text())


# ---------------------------------------------------------------- the document itself


def test_document_is_valid_openapi_3_1():
    document = _document()
    assert document["openapi"].startswith("3.1.")
    assert document["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
    validate_spec(document)
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def _examples(node, where=""):
    """Every (where, schema, example) of the document: media types, parameters, headers, schemas."""
    if isinstance(node, dict):
        schema = node.get("schema")
        if isinstance(schema, dict) and "text/event-stream" not in where:
            if "example" in node:
                yield where, schema, node["example"]
            for name, example in node.get("examples", {}).items():
                if "value" in example:
                    yield f"{where}/examples/{name}", schema, example["value"]
        if "example" in node and ("type" in node or "$ref" in node or "anyOf" in node):
            yield where, node, node["example"]
        for key, value in node.items():
            yield from _examples(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _examples(value, f"{where}/{i}")


def test_document_examples_match_their_schemas():
    document = _document()
    checked = 0
    for where, schema, example in _examples(document):
        validator = jsonschema.Draft202012Validator({**schema, "components": document["components"]},
                                                    format_checker=jsonschema.FormatChecker())
        errors = [error.message for error in validator.iter_errors(example)]
        assert not errors, (where, errors)
        checked += 1
    assert checked > 30


def _route_templates() -> list[str]:
    """`ROUTE_TEMPLATES` of shared/src/api/mod.rs, with the string constants it names (from any
    module of shared/src/api, as `NAME` or `module::NAME`) resolved."""
    api = ROUTES_SOURCE.parent
    constants = {}
    for file in sorted(api.rglob("*.rs")):
        module = "::".join(file.relative_to(api).with_suffix("").parts).removesuffix("mod").strip(":")
        for name, value in re.findall(
                r'const ([A-Z][A-Z0-9_]*): &(?:\'static )?str = "([^"]*)";', file.read_text()):
            constants[f"{module}::{name}" if module else name] = value
            constants.setdefault(name, value)
    source = ROUTES_SOURCE.read_text()
    block = re.search(r"pub const ROUTE_TEMPLATES: &\[&str\] = &\[(.*?)\];", source, re.S)
    assert block, "ROUTE_TEMPLATES not found in shared/src/api/mod.rs"
    routes = []
    entries = re.sub(r"//[^\n]*", "", block.group(1))
    for item in re.findall(r'"[^"]*"|[A-Za-z_][A-Za-z0-9_:]*', entries):
        if item.startswith('"'):
            routes.append(item.strip('"'))
        else:
            name = item.removeprefix("self::").removeprefix("super::").removeprefix("crate::api::")
            assert name in constants, f"ROUTE_TEMPLATES names {item}, whose value the test cannot read"
            routes.append(constants[name])
    return routes


def _shape(path: str) -> str:
    """A path with its parameters' names erased: `/a/{id}/b/{id}` and `/a/{org_id}/b/{id}` agree."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_document_paths_are_exactly_the_routes():
    routes = {_shape(r) for r in _route_templates()}
    documented = {_shape(p) for p in _document()["paths"]}
    missing = routes - UNDOCUMENTED_ROUTES - documented
    unknown = documented - routes
    assert not missing, f"routes without documentation in shared/openapi.json: {sorted(missing)}"
    assert not unknown, f"documented paths that are not in ROUTE_TEMPLATES: {sorted(unknown)}"


# ---------------------------------------------------------------- the server



def _call(method, url, body=None, headers=None):
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


class Gateway:
    """A running local server with a user, an org on the roomy plan, an API key of that org, another
    user's org, and a job."""

    def __init__(self, base: str, store: str, log_path: Path):
        self.base = base
        self.store = store
        self.log_path = log_path
        run = uuid.uuid4().hex[:10]
        status, body = _call("POST", f"{base}/api/v1/auth/register",
                             {"email": f"openapi-{run}@example.com", "password": "correct horse battery"})
        assert status == 201, body
        self.token = body["access_token"]
        status, body = _call("POST", f"{base}/api/v1/orgs", {"name": "OpenAPI", "slug": f"openapi-{run}"},
                             self.user_headers(org=False))
        assert status == 201, body
        self.org = body["id"]
        status, body = _call("PUT", f"{base}/admin/orgs/{self.org}/plan", {"plan": "roomy"},
                             {"Authorization": f"Bearer {ADMIN}"})
        assert status == 200, body
        status, body = _call("POST", f"{base}/api/v1/orgs/{self.org}/api-keys", {"name": "openapi"},
                             self.user_headers(org=False))
        assert status == 201, body
        self.key = body["key"]
        # An org the user is not a member of, so the fuzzer meets 403s too.
        status, body = _call("POST", f"{base}/api/v1/auth/register",
                             {"email": f"stranger-{run}@example.com", "password": "correct horse battery"})
        assert status == 201, body
        status, body = _call("POST", f"{base}/api/v1/orgs", {"name": "Stranger", "slug": f"stranger-{run}"},
                             {"Authorization": f"Bearer {body['access_token']}"})
        assert status == 201, body
        self.stranger_org = body["id"]
        # A job, so `GET /api/v1/ai/jobs/{id}` finds one.
        chat = [{"role": "user", "content": "Hi"}]
        status, body = _call("POST", f"{base}/api/v1/ai/jobs",
                             {"model": "gpt-4o-mini", "items": [{"id": "a", "messages": chat},
                                                                {"id": "b", "messages": chat}]},
                             self.user_headers())
        assert status == 202, body
        self.job = body["id"]

    def org_on(self, plan: str) -> tuple[str, str]:
        """A new org of the user on `plan`, and an API key of it."""
        slug = f"{plan}-{uuid.uuid4().hex[:10]}"
        status, body = _call("POST", f"{self.base}/api/v1/orgs", {"name": plan, "slug": slug},
                             self.user_headers(org=False))
        assert status == 201, body
        org = body["id"]
        status, body = _call("PUT", f"{self.base}/admin/orgs/{org}/plan", {"plan": plan},
                             {"Authorization": f"Bearer {ADMIN}"})
        assert status == 200, body
        status, body = _call("POST", f"{self.base}/api/v1/orgs/{org}/api-keys", {"name": plan},
                             self.user_headers(org=False))
        assert status == 201, body
        return org, body["key"]

    def new_key(self) -> str:
        """A fresh key of the org, for the fuzzer to revoke: its id."""
        status, body = _call("POST", f"{self.base}/api/v1/orgs/{self.org}/api-keys", {"name": "to revoke"},
                             self.user_headers(org=False))
        assert status == 201, body
        return body["id"]

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def user_headers(self, org=True) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"}
        if org:
            headers["X-Current-Org"] = self.org
        return headers

    def key_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}


def _dynamodb_endpoint() -> str:
    endpoint = os.environ.get("GATEWAY_TEST_DYNAMODB_ENDPOINT")
    if not endpoint:
        if os.environ.get("CI"):
            pytest.fail("GATEWAY_TEST_DYNAMODB_ENDPOINT must be set under CI")
        pytest.skip("GATEWAY_TEST_DYNAMODB_ENDPOINT is not set: the DynamoDB run needs DynamoDB Local "
                    "(bash infra/scripts/test.sh starts one)")
    return endpoint


@contextlib.contextmanager
def _server(store: str, workdir: Path, extra_env=None):
    """A local server on `store`, started as a user starts it, until the block ends: its base URL."""
    config = workdir / "gateway.toml"
    config.write_text(CONFIG)
    env = local_server.clean_env(GATEWAY_CONFIG=str(config), GATEWAY_ADMIN_TOKEN=ADMIN)
    env.update(extra_env or {})
    args = []
    if store == "dynamodb":
        env["AWS_ENDPOINT_URL_DYNAMODB"] = _dynamodb_endpoint()
        # The test command exports dummies; these make the file runnable on its own too.
        for name, value in (("AWS_ACCESS_KEY_ID", "local"), ("AWS_SECRET_ACCESS_KEY", "local"),
                            ("AWS_REGION", "us-east-1"), ("AWS_DEFAULT_REGION", "us-east-1")):
            env.setdefault(name, value)
        args += ["--store", "dynamodb", "--create-tables", "--table", f"openapi-{uuid.uuid4().hex}"]
    port = local_server.free_port()
    log_path = workdir / f"local-server-{store}-{port}.log"
    with local_server.running(env, log_path, args=args, port=port) as base:
        yield base, log_path


@pytest.fixture(scope="module", params=["memory", "dynamodb"])
def gateway(request, tmp_path_factory):
    store = request.param
    with _server(store, tmp_path_factory.mktemp(f"openapi-{store}")) as (base, log_path):
        yield Gateway(base, store, log_path)


# ---------------------------------------------------------------- routes and methods


def test_every_documented_method_is_served_and_no_other(gateway):
    """Probes each documented path with each method: documented ones reach a handler (anything but
    405 and the router's 404), undocumented ones do not."""
    for path, item in _document()["paths"].items():
        concrete = re.sub(r"\{[^}]*\}", "probe", path)
        for method in HTTP_METHODS:
            connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
            connection.request(method.upper(), concrete, body=b"{}" if method != "get" else None,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            raw = response.read()
            connection.close()
            routed_away = response.status == 404 and raw.startswith(b'{"detail":"Not found: ')
            if method in item:
                assert response.status != 405 and not routed_away, (method, path, response.status, raw)
            else:
                assert response.status == 405 or routed_away, (method, path, response.status, raw)


def _example_body(operation: dict, document: dict):
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return None
    if "example" in content:
        return content["example"]
    if "examples" in content:
        return next(iter(content["examples"].values()))["value"]
    name = content["schema"]["$ref"].rsplit("/", 1)[1]
    return document["components"]["schemas"][name]["example"]


def test_security_is_as_documented(gateway):
    """Every operation that declares security refuses a missing or unknown credential with 401, takes
    a user's token, and takes an org API key exactly when it declares `ApiKey`."""
    document = _document()
    session = requests.Session()
    for path, item in document["paths"].items():
        concrete = path.replace("{org_id}", gateway.org).replace("{id}", "probe")
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            schemes = {name for requirement in operation.get("security", document.get("security", []))
                       for name in requirement}
            if not schemes:
                continue
            body = _example_body(operation, document)

            def call(headers):
                response = session.request(method, gateway.base + concrete, json=body, headers=headers,
                                           timeout=REQUEST_TIMEOUT)
                assert response.status_code < 500, (method, path, response.status_code, response.text)
                return response

            label = f"{method.upper()} {path}"
            for credentials in ({}, {"Authorization": "Bearer sk-gw-unknown"}, {"Authorization": "Bearer x.y.z"}):
                response = call(credentials)
                assert response.status_code == 401, (label, credentials, response.text)
                if not path.startswith("/v1/"):
                    assert response.headers["WWW-Authenticate"] == "Bearer", label
            assert call(gateway.user_headers()).status_code != 401, label
            with_key = call(gateway.key_headers())
            if "ApiKey" in schemes:
                assert with_key.status_code != 401, (label, with_key.text)
            else:
                assert with_key.status_code == 401, (label, "takes an API key it does not document")


def test_the_document_is_served_verbatim(gateway):
    """`GET /openapi.json` serves this very file, as JSON."""
    with urllib.request.urlopen(f"{gateway.base}/openapi.json", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].split(";")[0].strip() == "application/json"
        assert response.read() == DOCUMENT.read_bytes()


# ---------------------------------------------------------------- fuzzing

CONFIGURATION = schemathesis.Config.from_dict({
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": False},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
    "request-timeout": REQUEST_TIMEOUT,
    "max-stream-events": 500,
})
SCHEMA = schemathesis.openapi.from_path(DOCUMENT, config=CONFIGURATION).exclude(
    # A static file, compared byte for byte by test_the_document_is_served_verbatim.
    path="/openapi.json",
)
_turns = itertools.count()


def _security(case) -> list[str]:
    requirements = case.operation.definition.raw.get("security", _document().get("security", []))
    return sorted({name for requirement in requirements for name in requirement})


def _authorize(case, gateway: Gateway) -> None:
    """Signs the case in, in turn: as the org's API key where the operation takes one, as the user
    acting for its org, as the user with whatever org header the fuzzer made (or left out), and as
    the user acting for an org they are not a member of. Ids in the path are, every other time, ones
    that exist: the user's org, a key to revoke, a job."""
    schemes = _security(case)
    if not schemes:
        return
    turn = next(_turns)
    headers = case.headers if case.headers is not None else {}
    takes_org = any(p.name == "X-Current-Org" for p in case.operation.headers)
    # A header the fuzzer made invalid on purpose stays, and is read: a key would ignore it.
    invalid_headers = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
    if "ApiKey" in schemes and turn % 4 == 0 and not invalid_headers:
        headers["Authorization"] = f"Bearer {gateway.key}"
    else:
        headers["Authorization"] = f"Bearer {gateway.token}"
        if invalid_headers:
            pass
        elif takes_org and turn % 4 in (0, 1):
            headers["X-Current-Org"] = gateway.org
        elif takes_org and turn % 4 == 3:
            headers["X-Current-Org"] = gateway.stranger_org
    case.headers = headers
    params = case.path_parameters
    if not params or turn % 2:
        return
    label = case.operation.label
    if "org_id" in params:
        params["org_id"] = gateway.stranger_org if turn % 4 == 2 else gateway.org
    if label == "DELETE /api/v1/orgs/{org_id}/api-keys/{id}" and turn % 4 == 0:
        params["id"] = gateway.new_key()
    elif label == "GET /api/v1/ai/jobs/{id}":
        params["id"] = gateway.job


@SCHEMA.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_operation_answers_as_documented(case, gateway):
    _authorize(case, gateway)
    case.call_and_validate(base_url=gateway.base, checks=CHECKS, timeout=REQUEST_TIMEOUT)


# ---------------------------------------------------------------- answers the fuzzer cannot reach

CONFORMANCE = [check for check in CHECKS if check is not negative_data_rejection]
HI = {"messages": [{"role": "user", "content": "Hi"}]}


def _exchange(base: str, method: str, path: str, headers: dict, body=None, checks=CONFORMANCE):
    """One request, checked against the document as the fuzzer's are: (status, headers, body)."""
    operation = SCHEMA[path][method]
    extra = {} if body is None else {"body": body, "media_type": "application/json"}
    case = operation.Case(headers=dict(headers), **extra)
    response = case.call_and_validate(base_url=base, checks=checks, timeout=REQUEST_TIMEOUT)
    headers = {name.lower(): values[0] for name, values in response.headers.items()}
    is_json = headers.get("content-type", "").startswith("application/json")
    return response.status_code, headers, response.json() if is_json else response.text


def test_rate_limited_answers_are_as_documented(gateway):
    org, key = gateway.org_on("minute")
    user = {"Authorization": f"Bearer {gateway.token}", "X-Current-Org": org}
    as_key = {"Authorization": f"Bearer {key}"}
    for path, headers in (("/api/v1/ai/chat", user), ("/api/v1/ai/chat/stream", as_key),
                          ("/v1/chat/completions", as_key), ("/api/v1/ai/jobs", user)):
        # One request a minute: of three in a row, at least one finds the window full.
        for _ in range(3):
            status, headers_, body = _exchange(gateway.base, "POST", path, headers, HI)
            if status == 429:
                break
        assert status == 429, (path, body)
        assert headers_["retry-after"].isdigit()
        if path.startswith("/v1/"):
            assert body["error"]["code"] == "rate_limit_exceeded"
            assert headers_["x-ratelimit-remaining-requests"] == "0"
        else:
            assert headers_["x-ratelimit-limit"] == "1"
            assert headers_["x-ratelimit-remaining"] == "0"


def test_plan_and_month_refusals_are_as_documented(gateway):
    org, key = gateway.org_on("spent")
    user = {"Authorization": f"Bearer {gateway.token}", "X-Current-Org": org}
    as_key = {"Authorization": f"Bearer {key}"}
    native, openai_ = "/api/v1/ai/chat", "/v1/chat/completions"
    # Refused before any counter is taken.
    for path, patch, status, code in (
        (native, {"model": "gpt-4o-mini"}, 403, None),
        (native, {"max_tokens": 300}, 403, None),
        (native, {"max_tokens": 9000}, 400, None),
        (native, {"model": "gpt-5"}, 400, None),
        (openai_, {"model": "gpt-4o-mini"}, 403, "model_not_in_plan"),
        (openai_, {"max_tokens": 300}, 403, None),
        (openai_, {"max_tokens": 9000}, 400, None),
        (openai_, {"model": "gpt-5"}, 404, "model_not_found"),
        (openai_, {"n": 2}, 400, None),
    ):
        got, _, body = _exchange(gateway.base, "POST", path, as_key, {**HI, **patch})
        assert got == status, (path, patch, body)
        if code:
            assert body["error"]["code"] == code
    two = {"items": [{"id": "a", "messages": HI["messages"]}, {"id": "b", "messages": HI["messages"]}]}
    assert _exchange(gateway.base, "POST", "/api/v1/ai/jobs", user, two)[0] == 402
    # The month's one message, then nothing more.
    assert _exchange(gateway.base, "POST", native, user, HI)[0] == 200
    assert _exchange(gateway.base, "POST", native, as_key, HI)[0] == 402
    assert _exchange(gateway.base, "POST", "/api/v1/ai/chat/stream", user, HI)[0] == 402
    assert _exchange(gateway.base, "POST", "/api/v1/ai/jobs", user, HI)[0] == 402
    status, headers, body = _exchange(gateway.base, "POST", openai_, as_key, HI)
    assert status == 429
    assert body["error"]["code"] == "insufficient_quota"
    assert headers["x-should-retry"] == "false"


@pytest.fixture(scope="module")
def failing_gateway(tmp_path_factory):
    """A gateway whose Anthropic cannot be reached and whose Google never answers (OpenAI is
    simulated, as usual)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections are accepted by the kernel and never answered
        env = {
            "ANTHROPIC_API_KEY": "sk-ant-unreachable", "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{local_server.free_port()}",
            "GEMINI_API_KEY": "silent", "GEMINI_BASE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "PROVIDER_CONNECT_TIMEOUT_SECONDS": "1", "PROVIDER_TIMEOUT_SECONDS": "1",
            "PROVIDER_IDLE_TIMEOUT_SECONDS": "1",
        }
        with _server("memory", tmp_path_factory.mktemp("openapi-failing"), env) as (base, log_path):
            yield Gateway(base, "memory", log_path)


@pytest.mark.parametrize("path", ["/api/v1/ai/chat", "/api/v1/ai/chat/stream", "/v1/chat/completions"])
@pytest.mark.parametrize("model,status", [("claude-3-haiku", 502), ("gemini-1.5-flash", 504)])
def test_provider_failures_are_as_documented(failing_gateway, path, model, status):
    # Every check but "no 5xx": these 5xx are the point.
    checks = [check for check in CONFORMANCE if check is not not_a_server_error]
    got, _, body = _exchange(failing_gateway.base, "POST", path, failing_gateway.key_headers(),
                             {**HI, "model": model}, checks=checks)
    assert got == status, body
    assert "sk-ant-unreachable" not in json.dumps(body)
    if path.startswith("/v1/"):
        assert body["error"]["code"] == {502: "upstream_error", 504: "upstream_timeout"}[status]


# ---------------------------------------------------------------- streams


def _events(raw: str) -> list[dict]:
    """A standard SSE parser's events: `event` (`message` if unnamed) and `data` (lines joined)."""
    events = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        event, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        events.append({"event": event, "data": "\n".join(data)})
    return events


def _validator(name: str) -> jsonschema.Draft202012Validator:
    document = _document()
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("auth", ["user", "key"])
def test_native_stream_events_are_as_documented(gateway, auth):
    headers = gateway.user_headers() if auth == "user" else gateway.key_headers()
    response = requests.post(f"{gateway.base}/api/v1/ai/chat/stream", headers=headers, timeout=REQUEST_TIMEOUT,
                             json={"messages": [{"role": "user", "content": "Tell me\nabout streams"}]})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert response.headers[name].isdigit()
    events = _events(response.text)
    event_schema = _validator("NativeStreamEvent")
    for event in events:
        event_schema.validate(event)
    assert [e["event"] for e in events[-2:]] == ["usage", "message"] and events[-1]["data"] == "[DONE]"
    assert all(e["event"] == "message" for e in events[:-2])
    _validator("StreamUsageEvent").validate(json.loads(events[-2]["data"]))


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_stream_events_are_as_documented(gateway, include_usage):
    response = requests.post(
        f"{gateway.base}/v1/chat/completions", headers=gateway.key_headers(), timeout=REQUEST_TIMEOUT,
        json={"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": include_usage},
              "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    events = _events(response.text)
    assert events[-1] == {"event": "message", "data": "[DONE]"}
    event_schema, chunk_schema = _validator("ChatCompletionStreamEvent"), _validator("ChatCompletionChunk")
    chunks = []
    for event in events[:-1]:
        event_schema.validate(event)
        chunk = json.loads(event["data"])
        chunk_schema.validate(chunk)
        chunks.append(chunk)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert ("usage" in chunks[-1]) == include_usage


def test_requests_empty_cursor_is_not_a_server_error(gateway, request):
    """`?after=` with nothing after it is answered as documented (a page or a 422), never a 5xx."""
    response = requests.get(f"{gateway.base}/api/v1/ai/requests?after=", headers=gateway.user_headers(),
                            timeout=REQUEST_TIMEOUT)
    assert response.status_code in (200, 422), response.text


def test_deeper_model_paths_are_not_found(gateway):
    response = requests.get(f"{gateway.base}/v1/models/gpt-4o-mini/extra", headers=gateway.key_headers(),
                            timeout=REQUEST_TIMEOUT)
    assert response.status_code == 404, response.text


def test_path_parameters_are_percent_decoded(gateway):
    # http.client sends the path as written (requests would normalise `%2D` to `-` first).
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    connection.request("GET", "/v1/models/gpt%2D4o-mini", headers=gateway.key_headers())
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 200, body


def test_v1_body_too_large_is_openai_shaped(gateway):
    """A /v1 body over the limit is refused in OpenAI's error shape, as the document says."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Authorization", f"Bearer {gateway.key}")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(7 * 1024 * 1024))
    connection.endheaders()
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 413
    _validator("OpenAIErrorResponse").validate(body)
