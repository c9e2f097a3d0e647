"""A bounded HTTP load generator for a gateway on this machine: throughput, latency, errors, stage times.

`C` concurrent workers send one prepared request over and over until `requests` have been sent or
`duration_s` has passed, whichever comes first; only loopback servers are accepted, so it cannot be
pointed at someone else's service.
"""

import asyncio
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from clients.client import AsyncOccupancyClient, GatewayError, PredictRequest
from occupancy.errors import InputError

MAX_REQUESTS = 10_000
MAX_CONCURRENCY = 64
MAX_DURATION_S = 600.0
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class BenchResult:
    """What a run measured. `errors` counts failed requests by HTTP status, `timeout` or `transport`."""

    requests: int
    ok: int
    errors: dict[str, int]
    wall_s: float
    latency_ms: tuple[float, ...]  # client round trips of the successful requests
    server_timing_ms: dict[str, float]  # mean of each timing_ms stage over the successful requests
    concurrency: int

    @property
    def fps(self) -> float:
        """Successful frames per second of wall time."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile of the successful requests' latency (ms); NaN without any."""
        return float(np.percentile(self.latency_ms, q)) if self.latency_ms else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "ok": self.ok, "errors": self.errors, "wall_s": self.wall_s,
            "concurrency": self.concurrency, "fps": self.fps,
            "latency_ms": {f"p{q}": self.percentile(q) for q in PERCENTILES},
            "server_timing_ms": self.server_timing_ms,
        }

    def summary(self) -> str:
        errors = ", ".join(f"{status}: {count}" for status, count in sorted(self.errors.items())) or "none"
        latency = ", ".join(f"p{q} {self.percentile(q):.1f}" for q in PERCENTILES)
        stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in self.server_timing_ms.items()) or "n/a"
        return (f"requests {self.requests} (ok {self.ok}, errors: {errors}) in {self.wall_s:.2f} s "
                f"at concurrency {self.concurrency}\n"
                f"throughput {self.fps:.2f} frames/s\n"
                f"latency ms: {latency}\n"
                f"server timing_ms means: {stages}")


def require_loopback(url: str) -> None:
    """InputError unless `url` names this machine (localhost, 127.0.0.0/8 or ::1)."""
    host = httpx.URL(url).host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InputError(f"--url {url}: occ bench loads only servers on this machine "
                         "(localhost, 127.0.0.1 or ::1)")


def check_bounds(requests: int, concurrency: int, duration_s: float) -> None:
    """InputError for a run outside the bounds (count, concurrency, time)."""
    if not 1 <= requests <= MAX_REQUESTS:
        raise InputError(f"--requests {requests}: expected 1 to {MAX_REQUESTS}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InputError(f"--concurrency {concurrency}: expected 1 to {MAX_CONCURRENCY}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise InputError(f"--duration {duration_s}: expected more than 0 and at most {MAX_DURATION_S:.0f} s")


async def run_load(client: AsyncOccupancyClient, request: PredictRequest, requests: int,
                   concurrency: int, duration_s: float) -> BenchResult:
    """Send `request` up to `requests` times with `concurrency` workers, for at most `duration_s`."""
    check_bounds(requests, concurrency, duration_s)
    sent = 0
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    errors: Counter[str] = Counter()
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker() -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1  # no await between the check and the increment: the count is exact
            try:
                prediction = await client.send(request)
            except GatewayError as error:
                errors[str(error.status)] += 1
            except httpx.TimeoutException:
                errors["timeout"] += 1
            except httpx.TransportError:
                errors["transport"] += 1
            except InputError:  # a 2xx answer that is not a grid
                errors["invalid-answer"] += 1
            else:
                latencies.append(prediction.round_trip_ms)
                for stage, ms in prediction.timing_ms.items():
                    stages.setdefault(stage, []).append(ms)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall_s = time.perf_counter() - started
    return BenchResult(requests=sent, ok=len(latencies), errors=dict(errors), wall_s=wall_s,
                       latency_ms=tuple(latencies),
                       server_timing_ms={stage: float(np.mean(ms)) for stage, ms in stages.items()},
                       concurrency=concurrency)


def bench(url: str, request: PredictRequest, requests: int = 20, concurrency: int = 1,
          duration_s: float = 60.0, warmup: int = 1, api_key: str | None = None,
          timeout: float = 60.0) -> BenchResult:
    """Warm up with `warmup` requests (not counted), then `run_load` against a loopback gateway."""
    require_loopback(url)
    check_bounds(requests, concurrency, duration_s)

    async def main() -> BenchResult:
        async with AsyncOccupancyClient(url, api_key, timeout, max_connections=concurrency) as client:
            for _ in range(warmup):
                await client.send(request)
            return await run_load(client, request, requests, concurrency, duration_s)

    return asyncio.run(main())
