"""PromQL of the deployment: the expressions of the Grafana dashboard and the Prometheus rules, the metric
names they use, and the metric names that exist (the gateway's registry, Triton's documented list).

Shared by tests/test_deploy_monitoring.py (static checks) and the integration test that evaluates each
expression against a real Prometheus scraping the gateway and Triton.
"""

import json
import re
from collections.abc import Iterable, Iterator, Mapping
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


def to_promql(expr: str, window: str = "1m", variables: Mapping[str, str] | None = None) -> str:
    """A dashboard expression as plain PromQL: interval macros -> `window`, a variable named in `variables`
    -> its value (inserted as it is: a regex-safe name such as a model's), any other variable -> `.*`."""
    values = variables or {}

    def value(match: re.Match) -> str:
        return values.get(match.group(0).strip("${}"), ".*")

    return _VARIABLE.sub(value, _INTERVAL_MACRO.sub(window, expr))


def variable_queries(path: Path = DASHBOARD) -> dict[str, str]:
    """The dashboard's query variables: name -> its `label_values(...)` definition, in dashboard order."""
    variables = json.loads(Path(path).read_text()).get("templating", {}).get("list", [])
    return {variable["name"]: variable["definition"] for variable in variables if variable["type"] == "query"}


_COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})
_SET_OPERATORS = frozenset({"and", "or", "unless"})


def alert_operands(expr: str) -> list[str]:
    """The operands of an alert condition without its thresholds, as PromQL: `a > 1 and b == 0` -> [a, b],
    `absent(c)` -> [c]. Each is what must have data for the condition to mean something; the condition
    itself is empty while the system is healthy."""

    def split(node: promql_parser.Expr) -> list[promql_parser.Expr]:
        if isinstance(node, promql_parser.ParenExpr):
            return split(node.expr)
        if isinstance(node, promql_parser.Call) and node.func.name in ("absent", "absent_over_time"):
            return split(node.args[0])
        if isinstance(node, promql_parser.BinaryExpr):
            op = str(node.op)
            if op in _SET_OPERATORS:
                return split(node.lhs) + split(node.rhs)
            returns_bool = node.modifier is not None and node.modifier.return_bool
            if op in _COMPARISONS and not returns_bool:
                if isinstance(node.rhs, promql_parser.NumberLiteral):
                    return split(node.lhs)
                if isinstance(node.lhs, promql_parser.NumberLiteral):
                    return split(node.rhs)
        return [node]

    return list(dict.fromkeys(str(node) for node in split(promql_parser.parse(expr))))


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (parsed, not pattern-matched; `{__name__="x"}` included)."""
    return {name for name, _ in selector_labels(expr) if name}


def selector_labels(expr: str) -> list[tuple[str, frozenset[str]]]:
    """Each series selector of an expression (a dashboard's or plain PromQL): the metric name it selects
    ("" if none) and the names of the other labels it matches on."""
    selectors: list[tuple[str, frozenset[str]]] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers if node.matchers else []
            labels = frozenset(m.name for m in matchers if m.name != "__name__")
            named = [m.value for m in matchers if m.name == "__name__"]
            names = [name for name in (node.name, *named) if name]
            selectors.extend((name, labels) for name in names or [""])
        return True

    promql_parser.walk(promql_parser.parse(to_promql(expr)), visit)
    return selectors


def exposition_names(text: str) -> set[str]:
    """Series names of a Prometheus text exposition as Prometheus stores them (`x_total`, `x_bucket`, ...),
    read from the sample lines: prometheus_client's parser would append `_total` to Triton's counters."""
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return {_SAMPLE_NAME.match(line).group(0) for line in lines}
