"""PromQL of the deployment: the expressions of the Grafana dashboard and the Prometheus rules, the metric
names they use, and the metric names that exist (the gateway's registry, Triton's documented list).

Shared by tests/test_deploy_monitoring.py (static checks) and the integration test that evaluates each
expression against a real Prometheus scraping the gateway and Triton.
"""

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import promql_parser
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "occupancy-gateway.json"
RULE_FILES = tuple(sorted((DOCKER / "prometheus" / "rules").glob("*.yml")))

# Triton's Prometheus metrics (docs/user_guide/metrics.md of triton-inference-server/server): per model
# (labels model, version), per GPU (label gpu_uuid), CPU (no labels). Latency counters are µs totals.
TRITON_METRICS = frozenset(
    {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_pending_request_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_gpu_utilization",
        "nv_gpu_memory_total_bytes",
        "nv_gpu_memory_used_bytes",
        "nv_gpu_power_usage",
        "nv_gpu_power_limit",
        "nv_energy_consumption",
        "nv_cpu_utilization",
        "nv_cpu_memory_total_bytes",
        "nv_cpu_memory_used_bytes",
        "nv_pinned_memory_pool_total_bytes",
        "nv_pinned_memory_pool_used_bytes",
    }
)
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# Grafana's interval macros, replaced by a fixed window so the expression is plain PromQL.
_INTERVAL_MACRO = re.compile(r"\$\{?(__rate_interval|__interval|__range)\b}?")
_SAMPLE_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# A dashboard variable inside a label matcher's string: every value (the variables are multi-value regexes).
_VARIABLE = re.compile(r"\$\{?[A-Za-z_]\w*}?")


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every target `expr` of a Grafana dashboard JSON, in panel order (panels inside rows included)."""
    dashboard = json.loads(Path(path).read_text())
    return [
        target["expr"]
        for panel in _panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _panels(panels: Iterable[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def rules(paths: Iterable[Path] = RULE_FILES) -> list[dict]:
    """Every rule (recording and alerting) of Prometheus rule files."""
    return [
        rule
        for path in paths
        for group in yaml.safe_load(Path(path).read_text())["groups"]
        for rule in group["rules"]
    ]


def rule_expressions(paths: Iterable[Path] = RULE_FILES) -> list[str]:
    return [rule["expr"] for rule in rules(paths)]


def recorded_names(paths: Iterable[Path] = RULE_FILES) -> set[str]:
    """Series names that the recording rules create."""
    return {rule["record"] for rule in rules(paths) if "record" in rule}


def to_promql(expr: str, window: str = "1m") -> str:
    """A dashboard expression as plain PromQL: interval macros -> `window`, variables -> `.*`."""
    return _VARIABLE.sub(".*", _INTERVAL_MACRO.sub(window, expr))


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (parsed, not pattern-matched; `{__name__="x"}` included)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            matchers = node.matchers.matchers if node.matchers else []
            names.update(m.value for m in matchers if m.name == "__name__")
        return True

    promql_parser.walk(promql_parser.parse(to_promql(expr)), visit)
    return names


def exposition_names(text: str) -> set[str]:
    """Series names of a Prometheus text exposition as Prometheus stores them (`x_total`, `x_bucket`, ...),
    read from the sample lines: prometheus_client's parser would append `_total` to Triton's counters."""
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return {_SAMPLE_NAME.match(line).group(0) for line in lines}
