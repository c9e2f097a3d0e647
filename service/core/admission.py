"""Bounded concurrency with a bounded wait queue, and a bound on uploads in progress: a full queue is
refused at once, never piled up.

A slot is held until its work has really stopped. A request's stages (decode in threads, an ONNX
Runtime call, a Triton call) cannot be interrupted once started, so past the request's deadline the
client gets its 504 at once while the stage runs on and keeps the slot until it ends: the number of
frames being computed never exceeds `max_concurrent`, and `occ_requests_in_flight` counts them all.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

from service.core.errors import ErrorKind, GatewayError
from service.core.metrics import Metrics

T = TypeVar("T")


class Overloaded(GatewayError):
    """Every processing slot is busy and the wait queue is full (or too many uploads are in progress)."""

    def __init__(self, detail: str = "server: overloaded, the wait queue is full"):
        super().__init__(ErrorKind.OVERLOADED, detail)


class Slot:
    """A held processing slot: runs one request's stages against its deadline (event loop time)."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self._running: asyncio.Future | None = None

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work()`'s result; TimeoutError once the deadline passes, while the work goes on and keeps the
        slot until it ends. Past the deadline, the work does not start."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self.deadline:
            raise TimeoutError
        task = asyncio.ensure_future(work())
        self._running = task
        async with asyncio.timeout_at(self.deadline):
            return await asyncio.shield(task)  # a timeout or a cancellation stops the wait, not the work

    def release_when_idle(self, release: Callable[[], None]) -> None:
        """Call `release` now, or when the last stage started ends."""
        task = self._running
        if task is None or task.done():
            release()
            return

        def stopped(finished: asyncio.Future) -> None:
            if not finished.cancelled():
                finished.exception()  # retrieved: the request already answered for it
            release()

        task.add_done_callback(stopped)


class Admission:
    """At most `max_concurrent` frames in flight and `max_queue` waiting; create it inside the event loop."""

    def __init__(self, max_concurrent: int, max_queue: int, metrics: Metrics):
        self._slots = asyncio.Semaphore(max_concurrent)
        self._capacity = max_concurrent + max_queue
        self._admitted = 0  # in flight + waiting; only touched on the event loop thread
        self._metrics = metrics

    @asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[Slot]:
        """Hold a processing slot for the body of the `async with`, and for the work it started after it
        (Slot.run); raises Overloaded when full, TimeoutError when no slot frees before `deadline`."""
        if self._admitted >= self._capacity:
            raise Overloaded
        self._admitted += 1
        try:
            with self._metrics.queued.track_inprogress():
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
        except BaseException:
            self._admitted -= 1
            raise
        self._metrics.in_flight.inc()
        slot = Slot(deadline)
        try:
            yield slot
        finally:
            slot.release_when_idle(self._release)

    def _release(self) -> None:
        self._metrics.in_flight.dec()
        self._slots.release()
        self._admitted -= 1


class UploadLimit:
    """At most `limit` request bodies read and parsed at once: the memory held before admission is at
    most `limit` x the body limit (plus the parsed parts)."""

    def __init__(self, limit: int):
        self._limit, self._active = limit, 0  # only touched on the event loop thread

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Count one upload for the body of the `with`; Overloaded when `limit` are in progress."""
        if self._active >= self._limit:
            raise Overloaded(f"server: overloaded, {self._limit} uploads are in progress")
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
