"""A bounded HTTP load generator for a gateway on this machine: throughput, latency, errors, stage times.

Closed loop: `C` concurrent workers send one prepared request over and over until `requests` have been
sent or `duration_s` has passed, whichever comes first. Sequences (temporal models): `S` concurrent
workers each stream a scene's frames in order under a sequence id of their own, one frame in flight each,
and start over under a new id (the old one ended with DELETE) until the same limits. Open loop: frames
are offered at a fixed rate for `duration_s`, each at its scheduled time whether or not earlier ones were
answered, as cameras send them; a frame's latency counts from its scheduled time, so time spent
queueing anywhere (client included) is in it. Closed-loop concurrency alone hides queueing: the offered
load falls when the server slows down. Only loopback servers are accepted, so it cannot be pointed at
someone else's service.
"""

import asyncio
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from clients.client import AsyncOccupancyClient, GatewayError, PredictRequest, build_request
from occupancy.calibration import FrameCalibration
from occupancy.errors import InputError

MAX_REQUESTS = 10_000
MAX_CONCURRENCY = 64
MAX_SEQUENCES = 1000  # sequences streamed at once, one frame in flight each
MAX_DURATION_S = 600.0
MAX_RATE = 1000.0  # frames per second offered in open loop
OPEN_LOOP_CONNECTIONS = 256  # open loop: the client's connection pool, so that it adds no queue of its own
PERCENTILES = (50, 90, 99)
OVERLOADED = "503"


@dataclass(frozen=True)
class BenchResult:
    """What a run measured. `errors` counts failed requests by HTTP status, `timeout` or `transport`."""

    requests: int
    ok: int
    errors: dict[str, int]
    wall_s: float
    latency_ms: tuple[float, ...]  # client round trips of the successful requests
    server_timing_ms: dict[str, float]  # mean of each timing_ms stage over the successful requests
    concurrency: int | None  # closed loop (sequences: how many at once); None in open loop
    offered_fps: float | None = None  # open loop; None in closed loop
    histories: dict[str, int] = field(default_factory=dict)  # temporal models: answers by `history`

    @property
    def fps(self) -> float:
        """Successful frames per second of wall time (open loop: the achieved rate)."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def share_overloaded(self) -> float:
        """The fraction of the requests answered 503 (overloaded or backend unavailable)."""
        return self.errors.get(OVERLOADED, 0) / self.requests if self.requests else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile of the successful requests' latency (ms); NaN without any."""
        return float(np.percentile(self.latency_ms, q)) if self.latency_ms else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "ok": self.ok, "errors": self.errors, "wall_s": self.wall_s,
            "concurrency": self.concurrency, "offered_fps": self.offered_fps, "fps": self.fps,
            "share_503": self.share_overloaded,
            "latency_ms": {f"p{q}": self.percentile(q) for q in PERCENTILES},
            "server_timing_ms": self.server_timing_ms, "histories": self.histories,
        }

    def summary(self) -> str:
        errors = ", ".join(f"{status}: {count}" for status, count in sorted(self.errors.items())) or "none"
        latency = ", ".join(f"p{q} {self.percentile(q):.1f}" for q in PERCENTILES)
        stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in self.server_timing_ms.items()) or "n/a"
        load = (f"at concurrency {self.concurrency}" if self.offered_fps is None
                else f"offered open-loop at {self.offered_fps:g} frames/s")
        histories = ", ".join(f"{history}: {count}" for history, count in sorted(self.histories.items()))
        return (f"requests {self.requests} (ok {self.ok}, errors: {errors}) in {self.wall_s:.2f} s {load}\n"
                f"throughput {self.fps:.2f} frames/s; answered 503: {100 * self.share_overloaded:.1f} %\n"
                f"latency ms: {latency}\n"
                f"server timing_ms means: {stages}"
                + (f"\nanswers by sequence history (past frames used): {histories}" if histories else ""))


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
    _check_duration(duration_s)


def check_rate(rate: float, duration_s: float) -> None:
    """InputError for an open-loop run outside the bounds (rate, time, frame count)."""
    if not 0 < rate <= MAX_RATE:
        raise InputError(f"--rate {rate}: expected more than 0 and at most {MAX_RATE:.0f} frames/s")
    _check_duration(duration_s)
    if round(rate * duration_s) > MAX_REQUESTS:
        raise InputError(f"--rate {rate} for --duration {duration_s}: {round(rate * duration_s)} frames, "
                         f"more than {MAX_REQUESTS}")


def _check_duration(duration_s: float) -> None:
    if not 0 < duration_s <= MAX_DURATION_S:
        raise InputError(f"--duration {duration_s}: expected more than 0 and at most {MAX_DURATION_S:.0f} s")


class _Outcomes:
    """Latency and stage times of the answered requests, and the failed ones by status."""

    def __init__(self) -> None:
        self.sent = 0
        self.latencies: list[float] = []
        self.stages: dict[str, list[float]] = {}
        self.errors: Counter[str] = Counter()
        self.histories: Counter[str] = Counter()

    async def send(self, client: AsyncOccupancyClient, request: PredictRequest,
                   since: float | None = None) -> None:
        """Send once; latency from `since` (perf_counter seconds) if given, else the client's round trip."""
        self.sent += 1
        try:
            prediction = await client.send(request)
        except GatewayError as error:
            self.errors[str(error.status)] += 1
        except httpx.TimeoutException:
            self.errors["timeout"] += 1
        except httpx.TransportError:
            self.errors["transport"] += 1
        except InputError:  # a 2xx answer that is not a grid
            self.errors["invalid-answer"] += 1
        else:
            done = time.perf_counter()
            self.latencies.append(prediction.round_trip_ms if since is None else 1000 * (done - since))
            for stage, ms in prediction.timing_ms.items():
                self.stages.setdefault(stage, []).append(ms)
            if prediction.sequence:
                self.histories[str(prediction.sequence["history"])] += 1

    def result(self, wall_s: float, concurrency: int | None = None,
               offered_fps: float | None = None) -> BenchResult:
        return BenchResult(requests=self.sent, ok=len(self.latencies), errors=dict(self.errors),
                           wall_s=wall_s, latency_ms=tuple(self.latencies),
                           server_timing_ms={stage: float(np.mean(ms)) for stage, ms in self.stages.items()},
                           concurrency=concurrency, offered_fps=offered_fps, histories=dict(self.histories))


async def run_load(client: AsyncOccupancyClient, request: PredictRequest, requests: int,
                   concurrency: int, duration_s: float) -> BenchResult:
    """Send `request` up to `requests` times with `concurrency` workers, for at most `duration_s`."""
    check_bounds(requests, concurrency, duration_s)
    outcomes = _Outcomes()
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker() -> None:
        # No await between the check and `send`'s count: the count is exact.
        while outcomes.sent < requests and time.perf_counter() < deadline:
            await outcomes.send(client, request)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes.result(time.perf_counter() - started, concurrency=concurrency)


@dataclass(frozen=True)
class SceneFrame:
    """A frame of the scene `run_sequences` streams: its encoded images and calibration."""

    images: dict[str, bytes]
    calibration: FrameCalibration


def check_sequences(sequences: int, requests: int, duration_s: float) -> None:
    if not 1 <= sequences <= MAX_SEQUENCES:
        raise InputError(f"--sequences {sequences}: expected 1 to {MAX_SEQUENCES}")
    check_bounds(requests, 1, duration_s)


async def run_sequences(client: AsyncOccupancyClient, scene: list[SceneFrame], sequences: int, requests: int,
                        duration_s: float, model: str | None = None, encoding: str = "dense") -> BenchResult:
    """`sequences` workers stream `scene` in order, each under its own sequence ids (see the module doc),
    until `requests` were sent or `duration_s` passed."""
    check_sequences(sequences, requests, duration_s)
    if not scene:
        raise InputError("--scene: no frames to stream")
    outcomes = _Outcomes()
    started = time.perf_counter()
    deadline = started + duration_s

    def more() -> bool:
        return outcomes.sent < requests and time.perf_counter() < deadline

    async def worker(number: int) -> None:
        lap = 0
        while more():
            sequence_id = f"bench-{number}-{lap}"
            for frame in scene:
                if not more():
                    break
                calibration = frame.calibration.model_copy(update={"sequence_id": sequence_id})
                await outcomes.send(client, build_request(frame.images, calibration, model, encoding))
            await client.end_sequence(sequence_id)
            lap += 1

    await asyncio.gather(*(worker(number) for number in range(sequences)))
    return outcomes.result(time.perf_counter() - started, concurrency=sequences)


async def run_open_loop(client: AsyncOccupancyClient, request: PredictRequest, rate: float,
                        duration_s: float) -> BenchResult:
    """Offer `request` every 1 / `rate` seconds for `duration_s` (round(rate * duration_s) frames), each
    sent at its time however many are still unanswered; wall time runs until the last answer."""
    check_rate(rate, duration_s)
    outcomes = _Outcomes()
    started = time.perf_counter()

    async def frame(number: int) -> None:
        scheduled = started + number / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))  # pacing, not ordering
        await outcomes.send(client, request, since=scheduled)

    await asyncio.gather(*(frame(number) for number in range(max(1, round(rate * duration_s)))))
    return outcomes.result(time.perf_counter() - started, offered_fps=rate)


def bench(url: str, request: PredictRequest, requests: int = 20, concurrency: int = 1,
          duration_s: float = 60.0, warmup: int = 1, api_key: str | None = None,
          timeout: float = 60.0, rate: float | None = None) -> BenchResult:
    """Warm up with `warmup` requests (not counted), then `run_load` (closed loop) or, given `rate`,
    `run_open_loop` against a loopback gateway."""
    require_loopback(url)
    if rate is None:
        check_bounds(requests, concurrency, duration_s)
    else:
        check_rate(rate, duration_s)
    connections = concurrency if rate is None else OPEN_LOOP_CONNECTIONS

    async def main() -> BenchResult:
        async with AsyncOccupancyClient(url, api_key, timeout, max_connections=connections) as client:
            for _ in range(warmup):
                await client.send(request)
            if rate is None:
                return await run_load(client, request, requests, concurrency, duration_s)
            return await run_open_loop(client, request, rate, duration_s)

    return asyncio.run(main())


def bench_sequences(url: str, scene: list[SceneFrame], sequences: int, requests: int = 20,
                    duration_s: float = 60.0, api_key: str | None = None, timeout: float = 60.0,
                    model: str | None = None, encoding: str = "dense") -> BenchResult:
    """`run_sequences` against a loopback gateway (its sequences' first frames are their warm-up)."""
    require_loopback(url)
    check_sequences(sequences, requests, duration_s)

    async def main() -> BenchResult:
        async with AsyncOccupancyClient(url, api_key, timeout, max_connections=sequences) as client:
            return await run_sequences(client, scene, sequences, requests, duration_s, model, encoding)

    return asyncio.run(main())
