"""`occ serve` as a child process on a loopback port it chooses itself: for benchmarks and tests that need
the real gateway. Ready (GET /readyz 200) before use, always stopped afterwards."""

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

# uvicorn's start-up line; with --port 0 (one worker) it names the port the kernel gave it.
_LISTENING = re.compile(r"Uvicorn running on (http://\S+:[1-9][0-9]*) ")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (for servers that cannot bind port 0 and say which
    port they got: another process may take it before they bind it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_gateway(*serve_args: str, log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Starts `occ serve --port 0 *serve_args` (output to `log_path`): the server binds a free port itself,
    so no other process can take it in between. Yields its URL, read from the log, once /readyz answers
    200; RuntimeError with the log when it exits or is not ready in `timeout_s`."""
    if os.environ.get("OCC_LOG_LEVEL", "INFO").upper() not in ("DEBUG", "INFO"):
        raise ValueError("running_gateway reads the URL from uvicorn's INFO start-up line: OCC_LOG_LEVEL "
                         f"{os.environ['OCC_LOG_LEVEL']} hides it")
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "occ", "serve", "--port", "0", *serve_args],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        url = None
        while url is None or not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"occ serve not ready after {timeout_s:.0f} s (exit code "
                                   f"{process.poll()}):\n{log_path.read_text()}")
            url = url or _listening_url(log_path)
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening_url(log_path: Path) -> str | None:
    found = _LISTENING.search(log_path.read_text(errors="replace"))
    return found[1] if found else None


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
