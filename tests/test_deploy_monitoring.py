"""Prometheus config and rules and the Grafana dashboard, checked with promtool and against the metrics
that exist: the gateway's registry after a real request, and Triton's documented metric names."""

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from deploy_promql import (
    DASHBOARD,
    DOCKER,
    PROMETHEUS_SERIES,
    RULE_FILES,
    TRITON_METRICS,
    dashboard_expressions,
    exposition_names,
    metric_names,
    recorded_names,
    rule_expressions,
    rules,
    to_promql,
)
from fastapi.testclient import TestClient
from service_fixtures import (
    build_test_model,
    calibration,
    frame_images,
    multipart_files,
    write_model,
    write_python_model,
)
from test_triton_local import start_triton

from service.core.config import Settings
from service.main import create_app

PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
RULE_TESTS = tuple(sorted((DOCKER / "prometheus" / "tests").glob("*.yml")))  # promtool test rules files
GRAFANA = DOCKER / "grafana"
COMPOSE = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is missing: apt-get install prometheus")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_config_and_finds_both_rule_files():
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout
    assert len(RULE_FILES) == 2


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


def test_every_alert_fires_on_its_condition_and_not_without_it():
    """promtool's rule unit tests (docker/prometheus/tests): for each alert, series that must fire it (after
    its `for`) and series that must not; every alert of the rules has such a test."""
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]
              for case in test.get("alert_rule_test", ())}
    assert tested == {rule["alert"] for rule in rules() if "alert" in rule}


def test_every_dashboard_expression_parses_in_promtool(tmp_path):
    """promtool parses each expression as a recording rule; Grafana's macros become a fixed window."""
    expressions = dashboard_expressions()
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:expr_{index}", "expr": to_promql(expr)}
            for index, expr in enumerate(expressions)
        ],
    }
    path = tmp_path / "dashboard.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(expressions)} rules found" in result.stdout


def test_a_broken_expression_fails_promtool(tmp_path):
    """The check above can fail: a missing bracket is reported."""
    path = tmp_path / "broken.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {"name": "g", "rules": [{"record": "x:y", "expr": "sum(rate(occ_frames_total[1m])"}]}
                ]
            }
        )
    )
    assert promtool("check", "rules", str(path)).returncode != 0


@pytest.fixture(scope="module")
def gateway_series(tmp_path_factory) -> set[str]:
    """Sample names of the gateway's /metrics after one answered request and one rejected one."""
    root = tmp_path_factory.mktemp("repository")
    input_size = (32, 64)
    write_model(root, "fake", (1,), build_test_model(input_size))
    with TestClient(create_app(Settings(model_repository=root))) as client:
        files = multipart_files(frame_images((90, 160)), calibration((90, 160)))
        assert client.post("/predict", files=files).status_code == 200
        assert client.post("/predict", files=files[:-1]).status_code >= 400
        return exposition_names(client.get("/metrics").text)


def test_the_gateway_exposes_the_documented_series(gateway_series):
    expected = {
        "occ_requests_total",
        "occ_frames_total",
        "occ_requests_in_flight",
        "occ_requests_queued",
        "occ_model_info",
        "occ_stage_latency_seconds_bucket",
        "occ_stage_latency_seconds_count",
    }
    assert expected <= gateway_series


def test_every_metric_of_the_dashboard_exists(gateway_series):
    used = set().union(*map(metric_names, dashboard_expressions()))
    unknown = used - gateway_series - TRITON_METRICS
    assert not unknown, f"the dashboard uses series that nothing exposes: {sorted(unknown)}"


def test_every_metric_of_the_rules_exists(gateway_series):
    used = set().union(*map(metric_names, rule_expressions()))
    unknown = used - gateway_series - TRITON_METRICS - recorded_names() - PROMETHEUS_SERIES
    assert not unknown, f"the rules use series that nothing exposes or records: {sorted(unknown)}"


@pytest.fixture(scope="module")
def triton_series(tmp_path_factory) -> set[str]:
    """Sample names of a real tritonserver (the CPU build in nvidia-pytriton) with the python-backend model
    loaded, after one inference. It has no GPU, so GPU metrics stay checked against the documented list."""
    onnx_path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    onnx_path.write_bytes(build_test_model((32, 64)))
    root = tmp_path_factory.mktemp("triton-repository")
    write_python_model(root, "fake", onnx_path)
    triton = start_triton(root, load_models=("fake",))
    try:
        with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
            return exposition_names(response.read().decode())
    finally:
        triton.stop()


def test_triton_exposes_the_documented_names(triton_series):
    non_gpu = {name for name in TRITON_METRICS if not name.startswith(("nv_gpu_", "nv_energy_"))}
    assert non_gpu <= triton_series, sorted(non_gpu - triton_series)


def test_every_triton_metric_of_the_dashboard_and_rules_is_exposed_or_a_gpu_metric(triton_series):
    used = set().union(*map(metric_names, [*dashboard_expressions(), *rule_expressions()]))
    triton_used = {name for name in used if name.startswith("nv_")}
    gpu = {name for name in triton_used if name.startswith(("nv_gpu_", "nv_energy_"))}
    assert triton_used - gpu <= triton_series
    assert gpu <= TRITON_METRICS


def test_metric_names_come_from_the_parse_tree():
    expr = (
        'sum by (model) (rate(a_total{model=~"$model"}[$__rate_interval])) / on() group_left {__name__="b"}'
    )
    assert metric_names(expr) == {"a_total", "b"}
    quantile = "histogram_quantile(0.5, sum by (le) (rate(c_bucket[5m]))) or vector(0)"
    assert metric_names(quantile) == {"c_bucket"}


def test_the_dashboard_shows_what_the_design_asks_for():
    expressions = dashboard_expressions()
    used = set().union(*map(metric_names, expressions))
    assert {
        "occ_requests_total",
        "occ_frames_total",
        "occ_stage_latency_seconds_bucket",
        "occ_requests_in_flight",
        "occ_requests_queued",
        "occ_model_info",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_request_success",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
    } <= used
    latency = [expr for expr in expressions if "occ_stage_latency_seconds_bucket" in expr]
    for quantile in ("0.5", "0.9", "0.99"):
        assert any(f"histogram_quantile({quantile}, sum by (le)" in e for e in latency), quantile
        assert any(f"histogram_quantile({quantile}, sum by (stage, le)" in e for e in latency), quantile


def test_the_alerts_cover_latency_errors_triton_and_frames():
    alerts = {rule["alert"]: rule["expr"] for rule in rules() if "alert" in rule}
    assert "p99" in alerts["OccLatencyP99High"]
    assert "errors" in alerts["OccErrorRatioHigh"]
    assert 'up{job="triton"}' in alerts["TritonDown"]
    assert "occ_frames" in alerts["OccNoFramesProcessed"]


def test_grafana_provisioning_matches_the_dashboard_and_compose():
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "Occupancy gateway"
    targets = [target for panel in dashboard["panels"] for target in panel.get("targets", [])]
    uids = {target["datasource"]["uid"] for target in targets}
    assert uids == {source["uid"]}
    assert source["url"] == "http://prometheus:9090" and "prometheus" in COMPOSE["services"]

    grafana = COMPOSE["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "occupancy.yml").read_text())[
        "providers"
    ]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == Path(provider["options"]["path"]) and (GRAFANA / "dashboards" / home.name).is_file()


def test_prometheus_scrapes_the_compose_services_on_their_ports():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["gateway"] == ["gateway:8000"]
    assert targets["triton"] == ["triton:8002"]
    mounts = dict(volume.split(":")[:2] for volume in COMPOSE["services"]["prometheus"]["volumes"])
    assert mounts["./prometheus"] == "/etc/prometheus"
