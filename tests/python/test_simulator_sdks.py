"""SDK fidelity: the official OpenAI, Anthropic and Google GenAI SDKs, pointed at the provider
simulator, parse its answers, streams, usage and errors as they parse the real APIs'.

Run from the repository root after `cargo build -p simulator`:

    .venv/bin/pytest tests/python/test_simulator_sdks.py

`SIMULATOR_BIN` overrides the binary (default: target/debug/simulator).
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENS = 24  # SimulatorConfig::default().answer_tokens


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
