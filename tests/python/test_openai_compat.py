"""The OpenAI-compatible surface as its users call it: the official `openai` SDK and LangChain's
`ChatOpenAI`, pointed at the local server binary (embedded store, simulated providers) with an
org API key, for every provider behind the gateway.

Needs LOCAL_SERVER_BIN (default: target/debug/local-server); `bash infra/scripts/test.sh` builds it.
"""

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

import local_server
from langchain_openai import ChatOpenAI

REPO_ROOT = local_server.REPO_ROOT
ADMIN = "op-token"
MODELS = ["gemini-1.5-flash", "claude-3-haiku", "gpt-4o-mini"]
PLANS = """
[retries]
base_delay_ms = 10
max_delay_ms = 50

[models."gpt-4o-mini"]
fallbacks = ["gemini-1.5-flash"]

[plans.big]
requests_per_minute = 1000
messages_per_month = "unlimited"
tokens_per_month = 1000000000
max_tokens_per_request = 4096
models = "all"

[plans.slow]
requests_per_minute = 1
messages_per_month = 100
tokens_per_month = 100000
max_tokens_per_request = 1024
models = ["gemini-1.5-flash"]

[plans.spent]
requests_per_minute = 100
messages_per_month = 1
tokens_per_month = 100000
max_tokens_per_request = 1024
models = "all"
"""



def _call(method, url, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


class Gateway:
    def __init__(self, base):
        self.base = base
        status, body = _call("POST", f"{base}/api/v1/auth/register",
                             {"email": "sdk@example.com", "password": "correct horse battery"})
        assert status == 201, body
        self.token = body["access_token"]

    def org(self, slug, plan):
        status, body = _call("POST", f"{self.base}/api/v1/orgs", {"name": slug, "slug": slug}, self.token)
        assert status == 201, body
        org = body["id"]
        status, body = _call("PUT", f"{self.base}/admin/orgs/{org}/plan", {"plan": plan}, ADMIN)
        assert status == 200, body
        return org

    def key(self, org, name="sdk"):
        status, body = _call("POST", f"{self.base}/api/v1/orgs/{org}/api-keys", {"name": name}, self.token)
        assert status == 201, body
        assert body["key"].startswith("sk-gw-")
        return body

    def client(self, key, max_retries=0):
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=max_retries)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "gateway.toml"
    config.write_text(PLANS)
    env = local_server.clean_env(GATEWAY_CONFIG=str(config), GATEWAY_ADMIN_TOKEN=ADMIN)
    log_path = tmp_path_factory.mktemp("logs") / "local-server.log"
    with local_server.running(env, log_path) as base:
        yield Gateway(base)


@pytest.fixture(scope="module")
def big(gateway):
    """An org on a roomy plan with an API key: (org id, key body)."""
    org = gateway.org("big", "big")
    return org, gateway.key(org)


@pytest.mark.parametrize("model", MODELS)
def test_completions_on_every_provider_stream_the_same_text(gateway, big, model):
    client = gateway.client(big[1]["key"])
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about SQS"}]
    answer = client.chat.completions.create(model=model, messages=prompt, max_tokens=200)
    assert answer.object == "chat.completion"
    assert answer.model == model
    assert answer.choices[0].finish_reason == "stop"
    text = answer.choices[0].message.content
    assert text and answer.choices[0].message.role == "assistant"
    usage = answer.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0

    stream = client.chat.completions.create(model=model, messages=prompt, max_tokens=200, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == usage.total_tokens
    assert all(c.id == chunks[0].id and c.model == model for c in chunks)


@pytest.mark.parametrize("model", MODELS)
def test_sampling_options_reach_every_provider(gateway, big, model):
    client = gateway.client(big[1]["key"])
    options = dict(top_p=0.5, stop=["never-said"], user="end-user-1", temperature=0.2,
                   max_completion_tokens=64)
    if model != "claude-3-haiku":
        options["seed"] = 42
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "developer", "content": "Be brief."},
                               {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], **options)
    assert answer.choices[0].message.content


def test_a_stream_without_include_usage_ends_with_the_finish_chunk(gateway, big):
    client = gateway.client(big[1]["key"])
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_models_are_the_plans(gateway, big):
    client = gateway.client(big[1]["key"])
    assert sorted(m.id for m in client.models.list()) == sorted(MODELS + ["gemini-1.5-pro"])
    model = client.models.retrieve("claude-3-haiku")
    assert (model.id, model.object, model.owned_by) == ("claude-3-haiku", "model", "anthropic")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-5")


def test_answers_carry_request_and_rate_limit_headers(gateway, big):
    client = gateway.client(big[1]["key"])
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    completion = raw.parse()
    assert completion.id == f"chatcmpl-{raw.headers['x-request-id']}"
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) < 1000
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000000000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 1000000000


def test_each_error_is_the_sdks_own_exception(gateway, big):
    client = gateway.client(big[1]["key"])
    hi = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.AuthenticationError) as bad_key:
        gateway.client("sk-gw-not-a-key").chat.completions.create(model="gpt-4o-mini", messages=hi)
    assert bad_key.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-5", messages=hi)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as two:
        client.chat.completions.create(model="gpt-4o-mini", messages=hi, n=2)
    assert two.value.param == "n"
    with pytest.raises(openai.BadRequestError) as seed:
        client.chat.completions.create(model="claude-3-haiku", messages=hi, seed=1)
    assert seed.value.param == "seed"
    with pytest.raises(openai.InternalServerError) as upstream:
        client.chat.completions.create(model="claude-3-haiku",
                                       messages=[{"role": "user", "content": "[sim:status=500] hi"}])
    assert upstream.value.status_code == 502 and "Provider anthropic" in upstream.value.message


def test_plan_and_limits_answer_as_openai_does(gateway):
    slow = gateway.org("slow", "slow")
    client = gateway.client(gateway.key(slow)["key"])
    hi = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.PermissionDeniedError) as not_in_plan:
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
    assert "not available in your plan" in not_in_plan.value.message
    client.chat.completions.create(model="gemini-1.5-flash", messages=hi)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gemini-1.5-flash", messages=hi)
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1

    spent = gateway.org("spent", "spent")
    client = gateway.client(gateway.key(spent)["key"])
    client.chat.completions.create(model="gemini-1.5-flash", messages=hi)
    with pytest.raises(openai.RateLimitError) as quota:
        client.chat.completions.create(model="gemini-1.5-flash", messages=hi)
    assert quota.value.code == "insufficient_quota"
    assert quota.value.response.headers["x-should-retry"] == "false"
    # With retries on, the SDK reads x-should-retry and gives up at once.
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        gateway.client(gateway.key(spent, "retrying")["key"], max_retries=2).chat.completions.create(
            model="gemini-1.5-flash", messages=hi)
    assert time.monotonic() - started < 0.5


def test_a_revoked_key_stops_at_once(gateway, big):
    org = big[0]
    key = gateway.key(org, "short-lived")
    client = gateway.client(key["key"])
    hi = [{"role": "user", "content": "Hi"}]
    client.chat.completions.create(model="gpt-4o-mini", messages=hi)
    status, listed = _call("GET", f"{gateway.base}/api/v1/orgs/{org}/api-keys", token=gateway.token)
    assert status == 200
    mine = next(k for k in listed["keys"] if k["id"] == key["id"])
    assert "key" not in mine and mine["prefix"] == key["prefix"]
    status, _ = _call("DELETE", f"{gateway.base}/api/v1/orgs/{org}/api-keys/{key['id']}", token=gateway.token)
    assert status == 204
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_failing_provider_falls_back_and_the_answer_names_the_model_that_answered(gateway, big):
    client = gateway.client(big[1]["key"])
    failing = [{"role": "user", "content": "[sim:status=503@openai] hi"}]
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=failing)
    assert answer.model == "gemini-1.5-flash" and answer.choices[0].message.content
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=failing, stream=True))
    assert {c.model for c in chunks} == {"gemini-1.5-flash"}
    # The native API names it too.
    request = urllib.request.Request(
        f"{gateway.base}/api/v1/ai/chat", method="POST",
        data=json.dumps({"model": "gpt-4o-mini", "messages": failing}).encode(),
        headers={"Authorization": f"Bearer {big[1]['key']}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["model"] == "gemini-1.5-flash"
    # A transient failure is retried to an answer from the model asked for.
    flaky = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "[sim:flaky=2] hi"}])
    assert flaky.model == "gpt-4o-mini"


def test_usage_counts_what_the_keys_spent(gateway):
    org = gateway.org("metered", "big")
    client = gateway.client(gateway.key(org)["key"])
    answer = client.chat.completions.create(model="claude-3-haiku", messages=[{"role": "user", "content": "Hi"}])
    request = urllib.request.Request(f"{gateway.base}/api/v1/ai/usage",
                                     headers={"Authorization": f"Bearer {gateway.token}", "X-Current-Org": org})
    with urllib.request.urlopen(request, timeout=10) as response:
        report = json.loads(response.read())
    used = report["models_breakdown"]["claude-3-haiku"]
    assert used["messages"] == 1
    assert used["tokens"] == answer.usage.total_tokens


@pytest.mark.parametrize("model", MODELS)
def test_langchain_chat_openai_invokes_and_streams(gateway, big, model):
    chat = ChatOpenAI(model=model, base_url=f"{gateway.base}/v1", api_key=big[1]["key"], max_retries=0)
    answer = chat.invoke("Tell me about DynamoDB")
    assert answer.content
    assert answer.usage_metadata["total_tokens"] > 0
    streamed = "".join(chunk.content for chunk in chat.stream("Tell me about DynamoDB"))
    assert streamed == answer.content


WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                           "days": {"type": "integer"}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "local_time", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# A 1×1 PNG.
PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def _streamed_calls(chunks):
    """Tool calls put together from stream chunks, as SDK users do: by index."""
    calls = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = piece.id or call["id"]
                if piece.function:
                    call["name"] = piece.function.name or call["name"]
                    call["arguments"] += piece.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("model", MODELS)
def test_a_tool_round_trip_works_on_every_provider(gateway, big, model, stream):
    client = gateway.client(big[1]["key"])
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = {"type": "function", "function": {"name": "weather"}}
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=messages, tools=[WEATHER],
                                                     tool_choice=forced, stream=True))
        calls = _streamed_calls(chunks)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["tool_calls"]
    else:
        answer = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER],
                                                tool_choice=forced)
        assert answer.choices[0].finish_reason == "tool_calls"
        assert answer.choices[0].message.content is None
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in answer.choices[0].message.tool_calls]
    assert len(calls) == 1 and calls[0]["name"] == "weather" and calls[0]["id"]
    arguments = json.loads(calls[0]["arguments"])
    assert isinstance(arguments["city"], str) and arguments["unit"] == "celsius"

    # The call goes back as the SDK returned it (its id carries whatever the provider needs back,
    # Gemini's thought signature included), with the tool's result.
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": calls[0]["id"], "type": "function",
             "function": {"name": "weather", "arguments": calls[0]["arguments"]}}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18 degrees and sunny"},
    ]
    final = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert final.choices[0].finish_reason == "stop"
    assert "18 degrees and sunny" in final.choices[0].message.content


@pytest.mark.parametrize("model", MODELS)
def test_auto_calls_tools_only_when_the_model_chooses_and_in_parallel(gateway, big, model):
    client = gateway.client(big[1]["key"])
    plain = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], tools=[WEATHER, TIME])
    assert plain.choices[0].finish_reason == "stop" and not plain.choices[0].message.tool_calls

    both = [{"role": "user", "content": "Weather and time in Rome? [sim:tools=2]"}]
    answer = client.chat.completions.create(model=model, messages=both, tools=[WEATHER, TIME])
    names = [c.function.name for c in answer.choices[0].message.tool_calls]
    assert names == ["weather", "local_time"]
    assert len({c.id for c in answer.choices[0].message.tool_calls}) == 2

    chunks = list(client.chat.completions.create(model=model, messages=both, tools=[WEATHER, TIME],
                                                 stream=True))
    assert [c["name"] for c in _streamed_calls(chunks)] == ["weather", "local_time"]

    single = client.chat.completions.create(model=model, messages=both, tools=[WEATHER, TIME],
                                            parallel_tool_calls=False)
    assert len(single.choices[0].message.tool_calls) == 1

    # A tool_choice of none calls nothing.
    none = client.chat.completions.create(model=model, messages=both, tools=[WEATHER, TIME],
                                          tool_choice="none")
    assert not none.choices[0].message.tool_calls


@pytest.mark.parametrize("model", MODELS)
def test_json_output_holds_the_schemas_required_properties(gateway, big, model):
    client = gateway.client(big[1]["key"])
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "age"], "additionalProperties": False}
    format_ = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    messages = [{"role": "user", "content": "Describe a person in JSON"}]
    answer = client.chat.completions.create(model=model, messages=messages, response_format=format_)
    assert answer.choices[0].finish_reason == "stop"
    person = json.loads(answer.choices[0].message.content)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)

    chunks = list(client.chat.completions.create(model=model, messages=messages, response_format=format_,
                                                 stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(streamed) == person

    loose = client.chat.completions.create(model=model, messages=messages,
                                           response_format={"type": "json_object"})
    assert isinstance(json.loads(loose.choices[0].message.content), dict)


@pytest.mark.parametrize("model", MODELS)
def test_images_are_read_and_counted_as_input(gateway, big, model):
    client = gateway.client(big[1]["key"])
    text = {"type": "text", "text": "What is in this picture?"}
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
    without = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [text]}])
    with_image = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [text, image]}])
    assert with_image.choices[0].message.content
    assert with_image.usage.prompt_tokens > without.usage.prompt_tokens

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
            text, {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PIXEL}"}}]}])
    assert "not a image/jpeg image" in bad.value.message


def test_what_a_provider_cannot_do_is_a_clear_400(gateway, big):
    client = gateway.client(big[1]["key"])
    address = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(openai.BadRequestError) as gemini:
        client.chat.completions.create(model="gemini-1.5-flash", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is it?"}, address]}])
    assert gemini.value.body["param"] == "image_url"
    with pytest.raises(openai.BadRequestError) as claude:
        client.chat.completions.create(model="claude-3-haiku", messages=[{"role": "user", "content": "Hi"}],
                                       tools=[WEATHER], response_format={"type": "json_object"})
    assert claude.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "Hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "42"}])
    assert "no earlier assistant message made the call" in unknown.value.message


def test_a_request_the_provider_refuses_as_invalid_is_a_400_not_retried(gateway, big):
    client = gateway.client(big[1]["key"])
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "[sim:status=400] Hi"}])
    assert refused.value.body["code"] == "upstream_rejected"
