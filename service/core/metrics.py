"""Prometheus metrics of one app, in a registry it owns (never the process-global one).

Names carry no backend: a `backend` label can be added without renaming a series.
"""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGES: tuple[str, ...] = ("decode", "preprocess", "inference", "encode", "total")
# 1 ms .. 30 s, roughly x2.5 per bucket.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "occ_requests", "Predict requests by answer status.", ("model", "status", "encoding"), registry=r
        )
        self.stage_latency = Histogram(
            "occ_stage_latency_seconds", "Latency of each stage of a predict request.", ("stage",),
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.frames = Counter("occ_frames", "Frames answered with a grid (its rate is the FPS).", ("model",),
                              registry=r)
        self.in_flight = Gauge("occ_requests_in_flight", "Frames being processed now.", registry=r)
        self.queued = Gauge("occ_requests_queued", "Frames waiting for a processing slot.", registry=r)
        self.model_info = Gauge(
            "occ_model_info", "Served models (value 1).", ("name", "version", "backend", "config"), registry=r
        )

    def observe_timings(self, timings_ms: dict[str, float]) -> None:
        for stage, milliseconds in timings_ms.items():
            self.stage_latency.labels(stage=stage).observe(milliseconds / 1000.0)
