"""The local server binary as the Python tests run it: on a free port on loopback, with no real
provider key or signing secret from the caller's shell, its output in a log file, stopped when the
test module is done.

LOCAL_SERVER_BIN names the binary (default: target/debug/local-server, which
`bash infra/scripts/test.sh` builds).
"""

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Variables a developer's shell may hold that would make the server call real providers or sign
# with a known secret.
_REAL = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "JWT_SECRET")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary() -> Path:
    return Path(os.environ.get("LOCAL_SERVER_BIN", REPO_ROOT / "target" / "debug" / "local-server"))


def clean_env(**overrides) -> dict:
    """This process's environment without real keys or secrets, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if k not in _REAL}
    env.update(RUST_LOG="info", NO_COLOR="1")
    env.update(overrides)
    return env


@contextlib.contextmanager
def running(env: dict, log_path: Path, args=(), port=None, timeout=30.0):
    """Starts the server with `args` and `env`, waits for `/health`, yields its base URL; stops it
    afterwards. Fails the test with the server's log if it exits or does not answer in time."""
    port = port or free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(binary()), "--port", str(port), *args], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"local-server exited: {log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"local-server did not start: {log_path.read_text()}")
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
