"""The sequences of temporal models this gateway process holds: their kept frames and states, bounded.

One `SequenceStore` per app. A sequence is a (model name, sequence_id) pair; its kept frames, the states
their runs returned and the rules that pick the past frame are occupancy.sequence's (the same ones
`occ eval --onnx` follows). Here:
- the bound: at most `max_sequences` sequences (the least recently used is evicted), each dropped after
  `ttl_s` without a frame; a sequence holds at most `rules.max_frames` states, so the memory of all of them
  is at most `max_sequences x max_frames x` the largest state a served model returns (`bound_bytes`);
- one frame of a sequence at a time (`turn`), the earliest timestamp first among those waiting, while
  other sequences run in parallel within the admission limit;
- a state belongs to the model version that computed it: another version starts the sequence over;
- a frame whose sequence was evicted or expired is a cold start that says so (`reset`), as is one on a
  replica that never saw the sequence (history 0: that replica has no state).
"""

import asyncio
import heapq
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from occupancy import model_contract as contract
from occupancy.sequence import FrameMotion, PastFrame, Reset, SequenceHistory, SequenceRules, model_inputs
from service.core.admission import Overloaded
from service.core.metrics import Metrics

log = logging.getLogger("service.sequences")

MODEL_VERSION = "model_version"  # a reset: the state was computed by another version of the model
EVICTED = "evicted"  # a cold start: the sequence was evicted (least recently used) before this frame
EXPIRED = "expired"  # a cold start: the sequence had no frame for the TTL
RESETS: tuple[str, ...] = (*(reason.value for reason in Reset), MODEL_VERSION, EVICTED, EXPIRED)
EVICTIONS: tuple[str, ...] = ("lru", "ttl")
Key = tuple[str, str]  # (model name, sequence id)
# Bookkeeping beyond the state arrays, at most (tests/test_service_sequences.py measures it): a kept
# frame's poses, calibration and objects; a sequence's history, key and LRU entry.
FRAME_OVERHEAD_BYTES = 8 * 2**10
SEQUENCE_OVERHEAD_BYTES = 4 * 2**10


class StatefulModel(Protocol):
    """What the store needs of a served temporal model (service.backends.base.ServedModel has it)."""

    name: str
    version: str
    state: tuple[contract.StateTensor, ...]
    frame_gap_s: float | None

    @property
    def state_bytes(self) -> int: ...


@dataclass(frozen=True)
class SequenceLimits:
    """The store's settings: how many sequences, for how long, and the rules of occupancy.sequence (whose
    `frame_gap_s` each model's own replaces)."""

    max_sequences: int
    ttl_s: float
    rules: SequenceRules
    max_waiting: int  # frames of one sequence waiting for their turn; beyond, 503


@dataclass(frozen=True)
class SequenceInfo:
    """What a response says of its sequence (API.md `sequence`)."""

    id: str
    frame_index: int  # frames of this sequence this process answered before, since it first saw it
    history: int  # real past frames used: 0 on a cold start
    reset: str | None  # why the frame is a cold start although the sequence had frames (RESETS)
    gap_s: float | None  # seconds from the past frame used (t-1) to this one


@dataclass
class _Sequence:
    version: str
    history: SequenceHistory
    frames: int = 0
    used_at: float = 0.0
    nbytes: int = 0  # of the kept states, as last counted into the store's total


@dataclass
class SequenceFrame:
    """A frame's place in its sequence: the extra inputs it runs with, `keep` for what its run returned."""

    info: SequenceInfo
    inputs: dict[str, np.ndarray]
    _keep: Callable[[Mapping[str, np.ndarray]], None] = field(repr=False)

    def keep(self, state: Mapping[str, np.ndarray]) -> None:
        """Keep the state the frame's run returned (its outputs by state input name), for the next frames."""
        self._keep(state)


class Turnstile:
    """One frame of a sequence at a time; among those waiting, the earliest timestamp goes first."""

    def __init__(self, max_waiting: int) -> None:
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future]] = []
        self._order = itertools.count()
        self._max_waiting = max_waiting

    @property
    def idle(self) -> bool:
        return not self._busy and not self._waiting

    @property
    def waiting(self) -> int:
        return sum(not future.done() for _, _, future in self._waiting)

    async def enter(self, timestamp_us: int, deadline: float) -> None:
        """Wait for the turn until `deadline` (event loop time; TimeoutError then); Overloaded when too many
        frames of the sequence wait already."""
        if not self._busy:
            self._busy = True
            return
        if self.waiting >= self._max_waiting:
            raise Overloaded(f"sequence: {self._max_waiting} frames of this sequence are waiting already")
        future = asyncio.get_running_loop().create_future()
        entry = (timestamp_us, next(self._order), future)
        heapq.heappush(self._waiting, entry)
        try:
            async with asyncio.timeout_at(deadline):
                await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.leave()  # the turn came as the wait ended: pass it on
            else:
                future.cancel()
            raise

    def leave(self) -> None:
        """End the turn: the earliest waiting frame gets it."""
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self._busy = False


class SequenceStore:
    """The sequences of this process (see the module doc); create it inside the event loop."""

    def __init__(self, limits: SequenceLimits, metrics: Metrics, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._metrics = metrics
        self._clock = clock
        self._sequences: OrderedDict[Key, _Sequence] = OrderedDict()  # least recently used first
        self._forgotten: OrderedDict[Key, str] = OrderedDict()  # evicted or expired: EVICTED or EXPIRED
        self._turnstiles: dict[Key, Turnstile] = {}
        self._zero_states: dict[str, tuple[str, dict[str, np.ndarray]]] = {}  # by model: (version, zeros)
        self.nbytes = 0

    def bound_bytes(self, models: Iterable[StatefulModel]) -> int:
        """The most the sequences can hold, kept states and bookkeeping, for the temporal models among
        `models` (the frames in flight hold their own inputs and outputs besides)."""
        largest = max((model.state_bytes for model in models if model.state), default=0)
        frames = self.limits.rules.max_frames * (largest + FRAME_OVERHEAD_BYTES)
        return self.limits.max_sequences * (SEQUENCE_OVERHEAD_BYTES + frames)

    def __len__(self) -> int:
        return len(self._sequences)

    def waiting(self, model: str, sequence_id: str) -> int:
        """Frames of a sequence waiting for their turn."""
        turnstile = self._turnstiles.get((model, sequence_id))
        return 0 if turnstile is None else turnstile.waiting

    @asynccontextmanager
    async def turn(self, model: str, sequence_id: str, timestamp_us: int, deadline: float,
                   ) -> AsyncIterator[None]:
        """Hold the sequence's turn for the body of the `async with` (see Turnstile)."""
        key = (model, sequence_id)
        turnstile = self._turnstiles.setdefault(key, Turnstile(self.limits.max_waiting))
        try:
            await turnstile.enter(timestamp_us, deadline)
        except BaseException:
            self._drop_idle(key, turnstile)
            raise
        try:
            yield
        finally:
            turnstile.leave()
            self._drop_idle(key, turnstile)

    def begin(self, model: StatefulModel, sequence_id: str, motion: FrameMotion) -> SequenceFrame:
        """The frame's past frame, history and inputs (within its turn); `keep` its run's state after."""
        self.sweep()
        key = (model.name, sequence_id)
        sequence, cold_start = self._sequence(key, model)
        step = sequence.history.step(motion)
        reset = step.reset.value if step.reset is not None else cold_start
        if reset is not None:
            self._metrics.count_sequence_reset(reset)
        self._metrics.count_sequence_frame(step.history)
        info = SequenceInfo(sequence_id, sequence.frames, step.history, reset, step.gap_s(motion))
        sequence.frames += 1
        sequence.used_at = self._clock()
        self._count(sequence)

        def keep(state: Mapping[str, np.ndarray]) -> None:
            if self._sequences.get(key) is not sequence:
                return  # deleted (or replaced) while the frame ran: its state must not bring it back
            sequence.history.keep(PastFrame(motion, step.history, dict(state)))
            self._count(sequence)

        return SequenceFrame(info, model_inputs(step, motion, self._zero_state(model)), keep)

    def forget(self, sequence_id: str) -> int:
        """Drop a sequence of every model (DELETE /v1/sequences/{id}); how many there were."""
        keys = [key for key in self._sequences if key[1] == sequence_id]
        for key in keys:
            self._remove(key)
        for key in [key for key in self._forgotten if key[1] == sequence_id]:
            del self._forgotten[key]
        return len(keys)

    def sweep(self) -> None:
        """Drop the sequences without a frame for the TTL (the least recently used come first)."""
        now = self._clock()
        while self._sequences:
            key, sequence = next(iter(self._sequences.items()))
            if now - sequence.used_at <= self.limits.ttl_s:
                break
            self._evict(key, EXPIRED, "ttl")

    async def sweep_forever(self, interval_s: float) -> None:
        """`sweep` every `interval_s` seconds, so an idle gateway lets go of expired states too."""
        while True:
            await asyncio.sleep(interval_s)
            self.sweep()

    def _sequence(self, key: Key, model: StatefulModel) -> tuple[_Sequence, str | None]:
        """The key's sequence, most recently used now, and why it starts cold (None: need not, or new)."""
        sequence = self._sequences.get(key)
        if sequence is not None and sequence.version == model.version:
            self._sequences.move_to_end(key)
            return sequence, None
        cold_start = MODEL_VERSION if sequence is not None else self._forgotten.pop(key, None)
        rules = self.limits.rules
        if model.frame_gap_s is not None:
            rules = SequenceRules(model.frame_gap_s, rules.tolerance_s, rules.max_gap_s, rules.max_jump_m,
                                  rules.max_frames)
        if sequence is not None:
            self._remove(key)
        fresh = _Sequence(model.version, SequenceHistory(rules), sequence.frames if sequence else 0)
        self._sequences[key] = fresh
        self._sequences.move_to_end(key)
        while len(self._sequences) > self.limits.max_sequences:
            self._evict(next(iter(self._sequences)), EVICTED, "lru")
        return fresh, cold_start

    def _evict(self, key: Key, cold_start: str, reason: str) -> None:
        self._remove(key)
        self._forgotten[key] = cold_start
        while len(self._forgotten) > self.limits.max_sequences:  # remembered as long as as many live ones
            self._forgotten.popitem(last=False)
        self._metrics.count_sequence_eviction(reason)

    def _zero_state(self, model: StatefulModel) -> dict[str, np.ndarray]:
        """One read-only zero state per model (of its latest version), shared by every cold start."""
        version, zeros = self._zero_states.get(model.name, (None, {}))
        if version != model.version:
            zeros = contract.zero_state(model.state)
            for array in zeros.values():
                array.flags.writeable = False
            self._zero_states[model.name] = (model.version, zeros)
        return zeros

    def _drop_idle(self, key: Key, turnstile: Turnstile) -> None:
        if turnstile.idle and self._turnstiles.get(key) is turnstile:
            del self._turnstiles[key]

    def _remove(self, key: Key) -> None:
        sequence = self._sequences.pop(key)
        self.nbytes -= sequence.nbytes
        self._metrics.set_sequences(len(self._sequences), self.nbytes)

    def _count(self, sequence: _Sequence) -> None:
        """Bring the total of kept state bytes up to date with `sequence`'s."""
        nbytes = sequence.history.nbytes
        self.nbytes += nbytes - sequence.nbytes
        sequence.nbytes = nbytes
        self._metrics.set_sequences(len(self._sequences), self.nbytes)
