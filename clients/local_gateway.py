"""`occ serve` as a child process on a free loopback port: for benchmarks and tests that need the real
gateway. Ready (GET /readyz 200) before use, always stopped afterwards."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_gateway(*serve_args: str, log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Starts `occ serve --port <free> *serve_args` (output to `log_path`) and yields its URL once
    /readyz answers 200; RuntimeError with the log when it exits or is not ready in `timeout_s`."""
    url = f"http://127.0.0.1:{free_port()}"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "occ", "serve", "--port", url.rsplit(":", 1)[1],
                                    *serve_args], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"occ serve not ready after {timeout_s:.0f} s (exit code "
                                   f"{process.poll()}):\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
