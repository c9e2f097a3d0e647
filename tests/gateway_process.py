"""`occ serve` as a real process for tests: a free loopback port, ready before use, always stopped."""

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from test_triton_local import free_ports


@contextmanager
def running_gateway(*serve_args: str, log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Starts `occ serve --port <free> *serve_args`, yields its URL once /readyz answers 200."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "occ", "serve", "--port", str(port), *serve_args],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(url):
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"no /readyz in {timeout_s:.0f} s:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
