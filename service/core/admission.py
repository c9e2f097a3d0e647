"""Bounded concurrency with a bounded wait queue: a full queue is refused at once, never piled up."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.core.metrics import Metrics


class Overloaded(Exception):
    """Every processing slot is busy and the wait queue is full."""


class Admission:
    """At most `max_concurrent` frames in flight and `max_queue` waiting; create it inside the event loop."""

    def __init__(self, max_concurrent: int, max_queue: int, metrics: Metrics):
        self._slots = asyncio.Semaphore(max_concurrent)
        self._capacity = max_concurrent + max_queue
        self._admitted = 0  # in flight + waiting; only touched on the event loop thread
        self._metrics = metrics

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a processing slot for the body of the `async with`; raises Overloaded when full."""
        if self._admitted >= self._capacity:
            raise Overloaded
        self._admitted += 1
        try:
            with self._metrics.queued.track_inprogress():
                await self._slots.acquire()
            try:
                with self._metrics.in_flight.track_inprogress():
                    yield
            finally:
                self._slots.release()
        finally:
            self._admitted -= 1
