"""SDK fidelity: the official OpenAI, Anthropic and Google GenAI SDKs, pointed at the provider
simulator, parse its answers, streams, usage and errors as they parse the real APIs'.

Run from the repository root after `cargo build -p simulator`:

    .venv/bin/pytest tests/python/test_simulator_sdks.py

`SIMULATOR_BIN` overrides the binary (default: target/debug/simulator).
"""

import base64
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal

import anthropic
import openai
import pydantic
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENS = 24  # SimulatorConfig::default().answer_tokens

# A 1x1 transparent PNG.
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)

# Input tokens of one image (see the simulator's lib.rs): OpenAI in high / low detail,
# Anthropic, Gemini.
OPENAI_IMAGE_TOKENS = 765
OPENAI_LOW_DETAIL_TOKENS = 85
ANTHROPIC_IMAGE_TOKENS = 1600
GEMINI_IMAGE_TOKENS = 258

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "note": {"type": "string"},
    },
    "required": ["city", "days", "unit"],
}
TIME_SCHEMA = {
    "type": "object",
    "properties": {"zone": {"type": "string"}},
    "required": ["zone"],
}
# What the simulated model puts in a weather call: every required property, typed.
WEATHER_ARGUMENTS = {"city": "simulated", "days": 1, "unit": "celsius"}


class Weather(pydantic.BaseModel):
    city: str
    days: int
    unit: Literal["celsius", "fahrenheit"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_accepting(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"simulator exited early with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"simulator did not accept connections on port {port} within {timeout}s")


@pytest.fixture(scope="session")
def simulator_url():
    binary = Path(os.environ.get("SIMULATOR_BIN", REPO_ROOT / "target" / "debug" / "simulator"))
    if not binary.is_absolute():
        binary = REPO_ROOT / binary
    if not binary.exists():
        pytest.fail(f"simulator binary not found at {binary}; run `cargo build -p simulator`")
    port = _free_port()
    process = subprocess.Popen(
        [str(binary), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_accepting(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def openai_client(simulator_url):
    return openai.OpenAI(base_url=f"{simulator_url}/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def anthropic_client(simulator_url):
    return anthropic.Anthropic(base_url=simulator_url, api_key="x", max_retries=0)


@pytest.fixture
def genai_client(simulator_url):
    return genai.Client(api_key="x", http_options=types.HttpOptions(base_url=simulator_url))


# ------------------------------------------------------------------------------------ OpenAI


def test_openai_completion_parses(openai_client):
    # GIVEN the OpenAI SDK  WHEN it asks for a completion
    completion = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
        ],
    )
    # THEN text, finish reason and usage parse
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.startswith("Simulated OpenAI answer (gpt-4o-mini) to: Hello there.")
    assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens == DEFAULT_TOKENS
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + DEFAULT_TOKENS


def test_openai_stream_parses_with_usage(openai_client):
    # GIVEN the plain answer to a prompt
    plain = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream this"}]
    )
    # WHEN the same prompt is streamed with usage included
    stream = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Stream this"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finish_reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    # THEN the deltas rebuild the plain answer and the usage counts them
    assert "".join(deltas) == plain.choices[0].message.content
    assert finish_reasons == ["stop"]
    assert usage is not None
    assert usage.completion_tokens == len(deltas)
    assert usage.prompt_tokens == plain.usage.prompt_tokens


def test_openai_max_tokens_gives_length(openai_client):
    completion = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        max_completion_tokens=5,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_openai_rate_limit_raises_rate_limit_error(openai_client):
    with pytest.raises(openai.RateLimitError) as caught:
        openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "[sim:status=429] Hi"}]
        )
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.code == "rate_limit_exceeded"


def test_openai_mid_stream_error_raises_api_error(openai_client):
    stream = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "[sim:fail=2] Hi"}],
        stream=True,
    )
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert len(received) == 2


def test_openai_cut_stream_raises_connection_error(openai_client):
    stream = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "[sim:cut=3] Hi"}],
        stream=True,
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert len(received) == 3


def test_openai_echo_keeps_unicode_and_leading_spaces(openai_client):
    stream = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "[sim:echo] من  هنا"}],
        stream=True,
    )
    deltas = [c.delta.content for chunk in stream for c in chunk.choices if c.delta.content]
    assert deltas == [" من", "  هنا"]


# --------------------------------------------------------------------------------- Anthropic


def test_anthropic_message_parses(anthropic_client):
    message = anthropic_client.messages.create(
        model="claude-3-haiku-20240307",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("Simulated Anthropic answer")
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == DEFAULT_TOKENS
    assert message.usage.input_tokens > 0


def test_anthropic_stream_helper_accumulates_text_and_usage(anthropic_client):
    # GIVEN the plain answer to a prompt
    plain = anthropic_client.messages.create(
        model="claude-3-haiku-20240307",
        max_tokens=100,
        messages=[{"role": "user", "content": "Stream this"}],
    )
    # WHEN the SDK's stream helper streams the same prompt
    with anthropic_client.messages.stream(
        model="claude-3-haiku-20240307",
        max_tokens=100,
        messages=[{"role": "user", "content": "Stream this"}],
    ) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    # THEN the accumulated message equals the plain one, usage included
    assert "".join(deltas) == plain.content[0].text
    assert final.content[0].text == plain.content[0].text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(deltas)
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_anthropic_raw_stream_events(anthropic_client):
    events = list(
        anthropic_client.messages.create(
            model="claude-3-haiku-20240307",
            max_tokens=3,
            stream=True,
            messages=[{"role": "user", "content": "Hi"}],
        )
    )
    types_seen = [event.type for event in events]
    assert types_seen[0] == "message_start"
    assert types_seen[-1] == "message_stop"
    delta = next(event for event in events if event.type == "message_delta")
    assert delta.delta.stop_reason == "max_tokens"
    assert delta.usage.output_tokens == 3


def test_anthropic_rate_limit_raises_rate_limit_error(anthropic_client):
    with pytest.raises(anthropic.RateLimitError) as caught:
        anthropic_client.messages.create(
            model="claude-3-haiku-20240307",
            max_tokens=10,
            messages=[{"role": "user", "content": "[sim:status=429]"}],
        )
    assert caught.value.status_code == 429
    assert caught.value.body["error"]["type"] == "rate_limit_error"


def test_anthropic_overloaded_raises_a_server_error(anthropic_client):
    with pytest.raises(anthropic.InternalServerError) as caught:
        anthropic_client.messages.create(
            model="claude-3-haiku-20240307",
            max_tokens=10,
            messages=[{"role": "user", "content": "[sim:status=529]"}],
        )
    assert caught.value.status_code == 529


def test_anthropic_mid_stream_error_event_raises(anthropic_client):
    with pytest.raises(anthropic.APIStatusError) as caught:
        with anthropic_client.messages.stream(
            model="claude-3-haiku-20240307",
            max_tokens=100,
            messages=[{"role": "user", "content": "[sim:fail=2] Hi"}],
        ) as stream:
            for _ in stream.text_stream:
                pass
    assert caught.value.body["error"]["type"] == "overloaded_error"


# ------------------------------------------------------------------------------------ Gemini


def test_gemini_generate_content_parses(genai_client):
    response = genai_client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Hello",
        config=types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.2),
    )
    assert response.text.startswith("Simulated Gemini answer (gemini-2.5-flash) to: Hello.")
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage.candidates_token_count == DEFAULT_TOKENS
    assert usage.total_token_count == usage.prompt_token_count + DEFAULT_TOKENS


def test_gemini_stream_parses_with_usage(genai_client):
    plain = genai_client.models.generate_content(model="gemini-2.5-flash", contents="Stream this")
    chunks = list(
        genai_client.models.generate_content_stream(model="gemini-2.5-flash", contents="Stream this")
    )
    deltas = [chunk.text for chunk in chunks if chunk.text]
    assert "".join(deltas) == plain.text
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata.candidates_token_count == len(deltas)
    assert last.usage_metadata.prompt_token_count == plain.usage_metadata.prompt_token_count


def test_gemini_max_output_tokens_gives_max_tokens(genai_client):
    response = genai_client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Hi",
        config=types.GenerateContentConfig(max_output_tokens=4),
    )
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert response.usage_metadata.candidates_token_count == 4


def test_gemini_rate_limit_raises_client_error(genai_client):
    with pytest.raises(genai_errors.ClientError) as caught:
        genai_client.models.generate_content(model="gemini-2.5-flash", contents="[sim:status=429]")
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"


def test_gemini_unavailable_raises_server_error(genai_client):
    with pytest.raises(genai_errors.ServerError) as caught:
        genai_client.models.generate_content(model="gemini-2.5-flash", contents="[sim:status=503]")
    assert caught.value.code == 503


def test_gemini_echo_keeps_unicode_and_leading_spaces(genai_client):
    chunks = genai_client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="[sim:echo] من  هنا"
    )
    assert [chunk.text for chunk in chunks] == [" من", "  هنا"]


# ------------------------------------------------------------ Tools, JSON output and images
#
# Tool calls, structured output and images, parsed by each SDK's own types and helpers: what a
# gateway forwarding the simulator's answers must keep intact.


def _tokens(arguments_json: str) -> int:
    """Output tokens of a tool call: its arguments' JSON split at whitespace."""
    return len(arguments_json.split())


# ------------------------------------------------------------------------------ OpenAI tools

OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": WEATHER_SCHEMA,
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": TIME_SCHEMA}},
]


def test_openai_forced_tool_call_parses(openai_client):
    # GIVEN a request forcing get_weather  WHEN it is sent
    completion = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    # THEN the SDK parses one call with every required argument, and no content
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGUMENTS
    assert completion.usage.completion_tokens == _tokens(call.function.arguments)


def test_openai_streamed_parallel_tool_calls_parse(openai_client):
    # GIVEN a prompt asking for two calls  WHEN it is streamed
    stream = openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather and time [sim:tools=2]"}],
        tools=OPENAI_TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls, finish_reasons, usage = {}, [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "args": []})
                call["id"] = delta.id or call["id"]
                call["name"] = delta.function.name or call["name"]
                if delta.function.arguments:
                    call["args"].append(delta.function.arguments)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    # THEN delta.tool_calls rebuild two calls, their arguments arriving in several fragments
    assert sorted(calls) == [0, 1]
    assert [calls[0]["name"], calls[1]["name"]] == ["get_weather", "get_time"]
    assert calls[0]["id"] != calls[1]["id"]
    assert len(calls[0]["args"]) > 1
    assert json.loads("".join(calls[0]["args"])) == WEATHER_ARGUMENTS
    assert json.loads("".join(calls[1]["args"])) == {"zone": "simulated"}
    assert finish_reasons == ["tool_calls"]
    assert usage.completion_tokens == sum(len(call["args"]) for call in calls.values())


def test_openai_stream_helper_accumulates_tool_calls(openai_client):
    with openai_client.chat.completions.stream(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather? [sim:tool]"}],
        tools=OPENAI_TOOLS,
    ) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGUMENTS
    assert final.choices[0].finish_reason == "tool_calls"


def test_openai_tool_result_round_trip(openai_client):
    # GIVEN a tool call made in answer to a prompt that asked for one
    messages = [{"role": "user", "content": "Weather in Paris? [sim:tool]"}]
    first = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=OPENAI_TOOLS
    )
    [call] = first.choices[0].message.tool_calls
    # WHEN the call and its result are sent back
    messages.append(
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]}
    )
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "21 degrees and sunny"})
    second = openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=OPENAI_TOOLS
    )
    # THEN the model answers with text quoting the result
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "The tool returned: 21 degrees and sunny"
    # AND a result for a call that was never made is refused as OpenAI refuses it
    messages[-1]["tool_call_id"] = "call_unknown"
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=OPENAI_TOOLS
        )
    assert caught.value.param == "messages.[2].tool_call_id"


def test_openai_parse_fills_the_json_schema(openai_client):
    completion = openai_client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Paris"}],
        response_format=Weather,
    )
    assert completion.choices[0].message.parsed == Weather(**WEATHER_ARGUMENTS)


def test_openai_image_counts_input_tokens(openai_client):
    text = {"type": "text", "text": "What is in this image?"}

    def image(url, detail="auto"):
        return {"type": "image_url", "image_url": {"url": url, "detail": detail}}

    def prompt_tokens(content):
        return openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": content}]
        ).usage.prompt_tokens

    alone = prompt_tokens([text])
    data_url = f"data:image/png;base64,{PNG_BASE64}"
    assert prompt_tokens([text, image(data_url)]) == alone + OPENAI_IMAGE_TOKENS
    assert prompt_tokens([text, image(data_url, "low")]) == alone + OPENAI_LOW_DETAIL_TOKENS
    with pytest.raises(openai.BadRequestError):
        prompt_tokens([text, image(f"data:image/bmp;base64,{PNG_BASE64}")])


# --------------------------------------------------------------------------- Anthropic tools

ANTHROPIC_TOOLS = [
    {"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "input_schema": TIME_SCHEMA},
]


def test_anthropic_forced_tool_use_parses(anthropic_client):
    message = anthropic_client.messages.create(
        model="claude-3-haiku-20240307",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use"
    assert block.id.startswith("toolu_")
    assert block.name == "get_weather"
    assert block.input == WEATHER_ARGUMENTS
    assert message.usage.output_tokens == _tokens(json.dumps(block.input))


def test_anthropic_stream_helper_accumulates_tool_use(anthropic_client):
    # GIVEN two calls forced with tool_choice any  WHEN the SDK's stream helper reads them
    with anthropic_client.messages.stream(
        model="claude-3-haiku-20240307",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather and time [sim:tools=2]"}],
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any"},
    ) as stream:
        partials = [event.partial_json for event in stream if event.type == "input_json"]
        final = stream.get_final_message()
    # THEN the final message holds both tool_use blocks with their input parsed from fragments
    assert final.stop_reason == "tool_use"
    assert [block.type for block in final.content] == ["tool_use", "tool_use"]
    assert [block.name for block in final.content] == ["get_weather", "get_time"]
    assert final.content[0].input == WEATHER_ARGUMENTS
    assert final.content[1].input == {"zone": "simulated"}
    assert final.content[0].id != final.content[1].id
    assert len([partial for partial in partials if partial]) > 2
    assert final.usage.output_tokens == len([partial for partial in partials if partial])


def test_anthropic_tool_result_round_trip(anthropic_client):
    messages = [{"role": "user", "content": "Weather in Paris? [sim:tool]"}]
    first = anthropic_client.messages.create(
        model="claude-3-haiku-20240307", max_tokens=200, messages=messages, tools=ANTHROPIC_TOOLS
    )
    [call] = first.content
    assert call.type == "tool_use"
    blocks = [block.model_dump(exclude_none=True) for block in first.content]
    messages.append({"role": "assistant", "content": blocks})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21 degrees"}],
        }
    )
    second = anthropic_client.messages.create(
        model="claude-3-haiku-20240307", max_tokens=200, messages=messages, tools=ANTHROPIC_TOOLS
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "The tool returned: 21 degrees"
    # AND a result answering no call is refused as Anthropic refuses it
    messages[-1]["content"][0]["tool_use_id"] = "toolu_unknown"
    with pytest.raises(anthropic.BadRequestError) as caught:
        anthropic_client.messages.create(
            model="claude-3-haiku-20240307",
            max_tokens=200,
            messages=messages,
            tools=ANTHROPIC_TOOLS,
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_anthropic_parse_fills_the_output_format(anthropic_client):
    message = anthropic_client.messages.parse(
        model="claude-3-haiku-20240307",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Paris"}],
        output_format=Weather,
    )
    assert message.parsed_output == Weather(**WEATHER_ARGUMENTS)


def test_anthropic_image_counts_input_tokens(anthropic_client):
    text = {"type": "text", "text": "What is in this image?"}

    def image(media_type):
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": PNG_BASE64},
        }

    def input_tokens(content):
        return anthropic_client.messages.create(
            model="claude-3-haiku-20240307",
            max_tokens=10,
            messages=[{"role": "user", "content": content}],
        ).usage.input_tokens

    assert input_tokens([image("image/png"), text]) == input_tokens([text]) + ANTHROPIC_IMAGE_TOKENS
    with pytest.raises(anthropic.BadRequestError):
        input_tokens([image("image/tiff"), text])


# ------------------------------------------------------------------------------ Gemini tools

GEMINI_TOOL = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="get_weather",
            description="Weather in a city",
            parameters_json_schema=WEATHER_SCHEMA,
        ),
        types.FunctionDeclaration(
            name="get_time",
            parameters=types.Schema(
                type="OBJECT", properties={"zone": types.Schema(type="STRING")}, required=["zone"]
            ),
        ),
    ]
)


def _gemini_config(mode=None):
    tool_config = None
    if mode:
        calling = types.FunctionCallingConfig(mode=mode)
        tool_config = types.ToolConfig(function_calling_config=calling)
    return types.GenerateContentConfig(tools=[GEMINI_TOOL], tool_config=tool_config)


def test_gemini_forced_function_call_parses(genai_client):
    response = genai_client.models.generate_content(
        model="gemini-2.5-flash", contents="Weather in Paris?", config=_gemini_config("ANY")
    )
    [call] = response.function_calls
    assert call.name == "get_weather"
    assert call.args == WEATHER_ARGUMENTS
    assert call.id
    part = response.candidates[0].content.parts[0]
    assert isinstance(part.thought_signature, bytes) and part.thought_signature
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.usage_metadata.candidates_token_count == _tokens(json.dumps(call.args))


def test_gemini_streamed_function_calls_parse(genai_client):
    chunks = list(
        genai_client.models.generate_content_stream(
            model="gemini-2.5-flash",
            contents="Weather and time [sim:tools=2]",
            config=_gemini_config(),
        )
    )
    # Each call arrives whole in its own chunk; only the first is signed, as Gemini signs
    # parallel calls.
    assert len(chunks) == 2
    calls = [call for chunk in chunks for call in chunk.function_calls]
    assert [call.name for call in calls] == ["get_weather", "get_time"]
    assert calls[0].args == WEATHER_ARGUMENTS
    assert chunks[0].candidates[0].content.parts[0].thought_signature
    assert chunks[1].candidates[0].content.parts[0].thought_signature is None
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_gemini_thought_signature_round_trip(genai_client):
    # GIVEN a function call made in answer to a prompt that asked for one
    question = types.Content(role="user", parts=[types.Part.from_text(text="Weather? [sim:tool]")])
    first = genai_client.models.generate_content(
        model="gemini-2.5-flash", contents=[question], config=_gemini_config()
    )
    model_turn = first.candidates[0].content
    [call] = first.function_calls
    answer = types.Content(
        role="user",
        parts=[types.Part.from_function_response(name=call.name, response={"forecast": "sunny"})],
    )
    # WHEN the model's content goes back as it came, with the function's response
    second = genai_client.models.generate_content(
        model="gemini-2.5-flash", contents=[question, model_turn, answer], config=_gemini_config()
    )
    # THEN the answer is text quoting the response
    assert second.text == 'The tool returned: {"forecast": "sunny"}'
    # AND without its thought signature the call is refused as Gemini refuses it
    unsigned = model_turn.model_copy(deep=True)
    unsigned.parts[0].thought_signature = None
    with pytest.raises(genai_errors.ClientError) as caught:
        genai_client.models.generate_content(
            model="gemini-2.5-flash", contents=[question, unsigned, answer], config=_gemini_config()
        )
    assert caught.value.code == 400
    assert "missing a thought_signature" in caught.value.message
    # AND an altered signature too
    altered = model_turn.model_copy(deep=True)
    altered.parts[0].thought_signature = b"not the signature"
    with pytest.raises(genai_errors.ClientError) as caught:
        genai_client.models.generate_content(
            model="gemini-2.5-flash", contents=[question, altered, answer], config=_gemini_config()
        )
    assert caught.value.message == "Corrupted thought signature."


def test_gemini_parsed_json_follows_the_schema(genai_client):
    response = genai_client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Weather in Paris",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=Weather
        ),
    )
    assert response.parsed == Weather(**WEATHER_ARGUMENTS)


def test_gemini_image_counts_input_tokens(genai_client):
    image = types.Part.from_bytes(data=base64.b64decode(PNG_BASE64), mime_type="image/png")

    def usage(contents):
        return genai_client.models.generate_content(
            model="gemini-2.5-flash", contents=contents
        ).usage_metadata

    alone = usage(["What is in this image?"])
    with_image = usage([image, "What is in this image?"])
    assert with_image.prompt_token_count == alone.prompt_token_count + GEMINI_IMAGE_TOKENS
    image_tokens = [
        detail.token_count
        for detail in with_image.prompt_tokens_details
        if detail.modality == types.MediaModality.IMAGE
    ]
    assert image_tokens == [GEMINI_IMAGE_TOKENS]
    bitmap = types.Part.from_bytes(data=base64.b64decode(PNG_BASE64), mime_type="image/bmp")
    with pytest.raises(genai_errors.ClientError) as caught:
        usage([bitmap, "What is in this image?"])
    assert caught.value.code == 400
