"""Prometheus metrics of one app, in a registry it owns (never the process-global one).

Every series carries the `backend` label (`embedded`, `triton`), so dashboards can compare backends.
"""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STAGES: tuple[str, ...] = ("decode", "preprocess", "inference", "encode", "total")
# 1 ms .. 30 s, roughly x2.5 per bucket.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)


class DescribedModel(Protocol):
    """What `occ_model_info` shows of a served model (service.backends.base.ServedModel has it)."""

    name: str
    version: str
    config: str


@dataclass
class Metrics:
    backend: str  # the app's backend kind, the value of every series' `backend` label
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("occ_requests", "Predict requests by answer status.",
                                ("backend", "model", "status", "encoding"), registry=r)
        self.stage_latency = Histogram(
            "occ_stage_latency_seconds", "Latency of each stage of a predict request.", ("backend", "stage"),
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.frames = Counter("occ_frames", "Frames answered with a grid (its rate is the FPS).",
                              ("backend", "model"), registry=r)
        self.in_flight = Gauge("occ_requests_in_flight", "Frames being processed now.", ("backend",),
                               registry=r).labels(self.backend)
        self.queued = Gauge("occ_requests_queued", "Frames waiting for a processing slot.", ("backend",),
                            registry=r).labels(self.backend)
        # Temporal models' sequences (service/core/sequences.py).
        self.sequences = Gauge("occ_sequences_active", "Sequences of temporal models held now.", ("backend",),
                               registry=r).labels(self.backend)
        self.sequence_bytes = Gauge("occ_sequence_state_bytes", "Bytes of the states the sequences keep.",
                                    ("backend",), registry=r).labels(self.backend)
        self.sequence_evictions = Counter("occ_sequence_evictions", "Sequences dropped: lru (over "
                                          "OCC_MAX_SEQUENCES) or ttl (idle for OCC_SEQUENCE_TTL_S).",
                                          ("backend", "reason"), registry=r)
        self.sequence_resets = Counter("occ_sequence_resets", "Frames that started their sequence over, by "
                                       "reason.", ("backend", "reason"), registry=r)
        self.sequence_frames = Counter("occ_sequence_frames", "Frames of temporal models by the real past "
                                       "frames they used (0: a cold start).", ("backend", "history"),
                                       registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open file descriptors

    def count_request(self, model: str, status: int, encoding: str) -> None:
        self.requests.labels(backend=self.backend, model=model, status=str(status), encoding=encoding).inc()

    def count_frame(self, model: str) -> None:
        self.frames.labels(backend=self.backend, model=model).inc()

    def observe_timings(self, timings_ms: dict[str, float]) -> None:
        for stage, milliseconds in timings_ms.items():
            self.stage_latency.labels(backend=self.backend, stage=stage).observe(milliseconds / 1000.0)

    def set_sequences(self, count: int, nbytes: int) -> None:
        self.sequences.set(count)
        self.sequence_bytes.set(nbytes)

    def count_sequence_eviction(self, reason: str) -> None:
        self.sequence_evictions.labels(backend=self.backend, reason=reason).inc()

    def count_sequence_reset(self, reason: str) -> None:
        self.sequence_resets.labels(backend=self.backend, reason=reason).inc()

    def count_sequence_frame(self, history: int) -> None:
        self.sequence_frames.labels(backend=self.backend, history=str(history)).inc()

    def follow_models(self, models: Callable[[], Mapping[str, DescribedModel]]) -> None:
        """Export `occ_model_info` from `models()` at every scrape, so a new version shows at once."""
        self.registry.register(_ModelInfo(self.backend, models))


class _ModelInfo(Collector):
    """occ_model_info{name, version, backend, config} = 1 for each model served now."""

    def __init__(self, backend: str, models: Callable[[], Mapping[str, DescribedModel]]):
        self._backend, self._models = backend, models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("occ_model_info", "Served models (value 1).",
                                   labels=("name", "version", "backend", "config"))
        for model in sorted(self._models().values(), key=lambda model: model.name):
            family.add_metric((model.name, model.version, self._backend, model.config), 1)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registering must not call collect(): the backend may still be starting.
        yield GaugeMetricFamily("occ_model_info", "Served models (value 1).",
                                labels=("name", "version", "backend", "config"))
