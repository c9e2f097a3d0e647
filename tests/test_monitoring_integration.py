"""The Grafana dashboard and the Prometheus rules against a real Prometheus that scrapes a real gateway
(`occ serve --backend triton`) and a real tritonserver (nvidia-pytriton's, CPU python-backend model), all on
loopback: every expression must return data once frames have flowed.

One gateway on the triton backend gives every metric data: the gateway's series (occ_*) come from its
own /metrics, Triton's per-model series (nv_inference_*) count only what reaches Triton, which the
embedded backend would never call. GPU series (nv_gpu_*) exist only where Triton sees a GPU; without one,
their names are checked against Triton's documented list instead.

Prometheus runs docker/prometheus/prometheus.yml with its rule files, changed only where a test must:
targets on the loopback ports, scrape and rule evaluation every second instead of every 5 and 15 s.
The dashboard's expressions are evaluated with its variables set to the served model and backend, twice:
while the gateway is healthy (200s and 4xx only) and after a burst it refuses with 503. Alerts are
checked as ALERT_CONDITIONS says, rule by rule.
"""

import asyncio
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import promql_parser
import pytest
import yaml
from deploy_promql import (
    DOCKER,
    RULE_FILES,
    TRITON_METRICS,
    alert_operands,
    dashboard_expressions,
    metric_names,
    recorded_names,
    rules,
    selector_labels,
    to_promql,
    variable_queries,
)
from service_fixtures import multipart_files
from test_triton_gateway import MODEL, frame, onnx_files, repository, triton  # noqa: F401 (fixtures)
from test_triton_local import free_ports

from service.triton_local import TritonLocal

pytestmark = pytest.mark.integration
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
INTERVAL = "1s"  # scrape and rule evaluation
WINDOW = "1m"  # Grafana's $__rate_interval
# The dashboard's variables as a user would pick them: the served model on the backend in use.
VARIABLES = {"backend": "triton", "model": MODEL}
GPU_PREFIXES = ("nv_gpu_", "nv_energy_")

# Every alert, with what the test asserts of its condition. All are evaluated as a whole (a well-formed
# vector) and by their operands without thresholds (alert_operands: each must have data).
# "quiet": the condition must be empty here; "either": it may hold here or not, for the reason given.
ALERT_CONDITIONS = {
    "OccGatewayDown": ("quiet", "up == 0 only while the gateway does not answer its scrape"),
    "OccLatencyP99High": ("either", "p99 over 1 s depends on the machine; frames take milliseconds here"),
    "OccErrorRatioHigh": ("either", "the deliberate 503s are a few percent, near the 5 % threshold"),
    "OccNoFramesProcessed": ("quiet", "every 200 here is a frame"),
    "TritonDown": ("quiet", "Triton answers its scrape (absent() is empty while up exists)"),
    "TritonInferenceFailures": ("quiet", "Triton fails no request here"),
}
# Recording rules without data while no request failed (no 5xx), each a known gap of the rules, with why.
# The test fails once one of them has data, so that its entry goes.
# Recording rules allowed to record nothing in a healthy system (none: ratios use `or vector(0)`).
HEALTHY_RULE_GAPS: dict[str, str] = {}


class Prometheus:
    """Prometheus' HTTP API at `url`."""

    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params) -> dict:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector of `expr` now; fails on anything but a vector (a parse error included)."""
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def has_data(self, expr: str) -> bool:
        """Whether `expr` returns a sample with a finite value (Grafana draws NaN as nothing)."""
        return any(math.isfinite(float(sample["value"][1])) for sample in self.query(expr))


@contextmanager
def running(command: list[str], log: Path, env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Run `command` (output to `log`) for the body of the `with`; always stopped afterwards."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   env=env)
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise AssertionError(f"{what}: not within {timeout_s} s\n{tail}")
        time.sleep(0.2)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def write_prometheus_config(folder: Path, targets: Mapping[str, str]) -> Path:
    """docker/prometheus/prometheus.yml and its rule files under `folder`, with every job's target from
    `targets` (job name -> host:port) and every interval INTERVAL; all else as it is."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    config["global"] |= {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    (folder / "rules").mkdir(parents=True)
    for path in RULE_FILES:
        content = yaml.safe_load(path.read_text())
        for group in content["groups"]:
            group["interval"] = INTERVAL
        (folder / "rules" / path.name).write_text(yaml.safe_dump(content, sort_keys=False))
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # rule_files: rules/*.yml, beside it
    return path


def send_frames(url: str, files: list, count: int, pause_s: float = 0.1) -> list[int]:
    """`count` good frames, `pause_s` apart so that rates rise over several scrapes (a counter that
    only ever had one value has a rate of 0 and a histogram with it no quantile), and a 422 and a 415
    after every tenth, for the error panels."""
    missing_camera = {"files": files[1:]}
    not_multipart = {"content": b"{}", "headers": {"content-type": "text/plain"}}
    statuses = []
    with httpx.Client(timeout=30) as client:
        for index in range(count):
            statuses.append(client.post(url, files=files).status_code)
            if index % 10 == 0:
                statuses += [client.post(url, **missing_camera).status_code,
                             client.post(url, **not_multipart).status_code]
            time.sleep(pause_s)
    return statuses


async def _burst(url: str, files: list, size: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as client:
        answers = await asyncio.gather(*(client.post(url, files=files) for _ in range(size)))
    return [answer.status_code for answer in answers]


def overload(url: str, files: list, size: int = 4, tries: int = 5) -> list[int]:
    """Bursts of `size` concurrent frames at a gateway without a wait queue until one is refused (503)."""
    statuses: list[int] = []
    for _ in range(tries):
        statuses += asyncio.run(_burst(url, files, size))
        if 503 in statuses:
            break
    return statuses


def chosen_variables(prometheus: Prometheus) -> dict[str, str]:
    """VARIABLES, each checked to be among the values its dashboard query finds in Prometheus."""
    queries = variable_queries()
    assert set(queries) == set(VARIABLES)
    chosen: dict[str, str] = {}
    for name, definition in queries.items():
        selector, label = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition).groups()
        match = {"match[]": to_promql(selector, WINDOW, chosen)}
        values = prometheus.get(f"/api/v1/label/{label}/values", **match)
        assert VARIABLES[name] in values, (name, definition, values)
        chosen[name] = VARIABLES[name]
    return chosen


def without_data(prometheus: Prometheus, expressions: list[str], timeout_s: float) -> list[str]:
    """The expressions still without data after waiting up to `timeout_s` for all of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        empty = [expr for expr in expressions if not prometheus.has_data(expr)]
        if not empty or time.monotonic() > deadline:
            return empty
        time.sleep(0.5)


def is_gpu_expression(expr: str) -> bool:
    return all(name.startswith(GPU_PREFIXES) for name in metric_names(expr))


@contextmanager
def monitored_gateway(triton_server: TritonLocal, folder: Path) -> Iterator[tuple[str, Prometheus]]:
    """`occ serve --backend triton` and a Prometheus scraping it and `triton_server`, both up and scraped;
    yields the gateway's URL and the Prometheus. Both processes are stopped on leaving, failures included."""
    prometheus_binary = shutil.which("prometheus")
    if prometheus_binary is None:
        pytest.skip("prometheus is missing: apt-get install prometheus")
    gateway_port, prometheus_port = free_ports(2)
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    prometheus = Prometheus(f"http://127.0.0.1:{prometheus_port}")
    config = write_prometheus_config(folder / "prometheus", {
        "gateway": f"127.0.0.1:{gateway_port}", "triton": f"127.0.0.1:{triton_server.metrics_port}",
        "prometheus": f"127.0.0.1:{prometheus_port}"})
    # No wait queue: a burst of concurrent frames is refused with 503 (overload), so 5xx panels have data.
    env = {**os.environ, "OCC_MAX_QUEUE": "0", "OCC_MAX_CONCURRENT": "1"}
    gateway = [sys.executable, "-m", "occ", "serve", "--port", str(gateway_port), "--backend", "triton",
               "--triton-url", triton_server.grpc_url, "--model", MODEL]
    server = [prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
              f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"]
    gateway_log, prometheus_log = folder / "gateway.log", folder / "prometheus.log"
    with running(gateway, gateway_log, env), running(server, prometheus_log):
        wait_until(lambda: answers(f"{gateway_url}/readyz"), 60, "gateway ready", gateway_log)
        wait_until(lambda: answers(f"{prometheus.url}/-/ready"), 30, "prometheus ready", prometheus_log)
        wait_until(lambda: all_targets_up(prometheus), 30, "both targets up", prometheus_log)
        yield gateway_url, prometheus


def test_every_dashboard_and_rule_expression_has_data_in_a_real_prometheus(triton, frame, tmp_path):  # noqa: F811
    started = time.monotonic()
    files = multipart_files(*frame)
    recordings = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    operands = [op for rule in rules() if "alert" in rule for op in alert_operands(rule["expr"])]
    with monitored_gateway(triton, tmp_path) as (gateway_url, prometheus):
        up_at = time.monotonic()
        variables = chosen_variables(prometheus)
        dashboard = [to_promql(expr, WINDOW, variables) for expr in dashboard_expressions()]
        gpu = [expr for expr in dashboard if is_gpu_expression(expr)]
        panels = [expr for expr in dashboard if expr not in gpu]

        statuses = send_frames(f"{gateway_url}/predict", files, count=30)
        assert sorted(statuses) == [200] * 30 + [415] * 3 + [422] * 3, statuses
        # Healthy (no 5xx yet): every panel has data, the 5xx ratio included; the rules have known gaps.
        gaps = without_data(prometheus, panels, 20)
        assert gaps == [], f"panels without data while healthy: {gaps}"
        rule_gaps = {name for name, expr in recordings.items() if not prometheus.has_data(expr)}
        assert rule_gaps == set(HEALTHY_RULE_GAPS), "a gap closed? remove it from HEALTHY_RULE_GAPS"
        healthy_at = time.monotonic()

        statuses = overload(f"{gateway_url}/predict", files)
        assert 503 in statuses and set(statuses) <= {200, 503}, statuses
        send_frames(f"{gateway_url}/predict", files, count=10)
        expected = [*panels, *recordings.values(), *sorted(recorded_names()), *operands]
        gaps = without_data(prometheus, expected, 20)
        assert gaps == [], f"expressions without data: {gaps}"
        check_alerts(prometheus)
        check_backend_filters(prometheus)
        check_gpu_panels(prometheus, gpu)
        check_rule_health(prometheus)
        assert all_targets_up(prometheus)
        checked_at = time.monotonic()
    print(f"\n{len(dashboard)} dashboard expressions ({len(gpu)} GPU), {len(recordings)} recording rules, "
          f"{len(ALERT_CONDITIONS)} alerts: servers up after {up_at - started:.1f} s, healthy panels "
          f"checked {healthy_at - up_at:.1f} s later, everything {checked_at - healthy_at:.1f} s later; "
          f"{time.monotonic() - started:.1f} s with the shutdown")


def all_targets_up(prometheus: Prometheus) -> bool:
    targets = prometheus.get("/api/v1/targets")["activeTargets"]
    health = {target["labels"]["job"]: target["health"] for target in targets}
    return health.get("gateway") == "up" and health.get("triton") == "up"


def check_alerts(prometheus: Prometheus) -> None:
    alerts = {rule["alert"]: rule["expr"] for rule in rules() if "alert" in rule}
    assert set(alerts) == set(ALERT_CONDITIONS), "document every alert in ALERT_CONDITIONS"
    for name, expr in alerts.items():
        result = prometheus.query(expr)  # a vector, whatever it holds
        if ALERT_CONDITIONS[name][0] == "quiet":
            assert result == [], f"{name} holds in a healthy system: {result}"


def check_backend_filters(prometheus: Prometheus) -> None:
    """Every dashboard selector of a gateway series with a `backend` label filters on it; the series
    without (the in-flight and queued gauges) were checked above to show data with the variable set."""
    found = prometheus.query('count by (__name__) ({job="gateway", backend!=""})')
    labelled = {sample["metric"]["__name__"] for sample in found}
    unfiltered = {(name, expr) for expr in dashboard_expressions() for name, labels in selector_labels(expr)
                  if name in labelled and "backend" not in labels}
    assert labelled and unfiltered == set(), unfiltered


def check_gpu_panels(prometheus: Prometheus, gpu: list[str]) -> None:
    """With GPU series scraped, the GPU panels must show them; without, their names must be Triton's."""
    if prometheus.query('count({__name__=~"nv_gpu_.*"})'):
        assert without_data(prometheus, gpu, 5) == []
    else:
        assert gpu and set().union(*map(metric_names, gpu)) <= TRITON_METRICS


def check_rule_health(prometheus: Prometheus) -> None:
    """The loaded rules are the files' rules, each evaluated without an error."""
    loaded = [rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    errors = [(rule["name"], rule.get("lastError")) for rule in loaded if rule["health"] != "ok"]
    assert errors == []
    written = {(rule.get("record") or rule["alert"], normal_form(rule["expr"])) for rule in rules()}
    assert {(rule["name"], normal_form(rule["query"])) for rule in loaded} == written


def normal_form(expr: str) -> str:
    return str(promql_parser.parse(expr))
