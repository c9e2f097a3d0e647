"""A real Triton server on this machine, from the `tritonserver` binary that PyPI's nvidia-pytriton bundles.

For tests and local runs without Docker: CPU only. The bundled server has the python backend but no
onnxruntime or TensorRT backend, so a repository with onnxruntime models (such as the committed
model_repository/) is served through a python-backend view of it, made at start-up in the server's work
folder (occupancy.model_repository.python_backend_view: each version runs its model.onnx with ONNX Runtime
in service/triton_python_backend/model.py). A repository of python-backend models is served as it is, so
versions published into it later load. With explicit model control and no model named, every model loads.

What running the bundled binary takes, as pytriton's own launcher does it:
- a backend directory holding the python backend (libtriton_python.so, triton_python_backend_utils.py)
  and the python stub built for this interpreter's version (the package ships one per Python 3.x);
- LD_LIBRARY_PATH with the package's `nvidia_pytriton.libs` (the copied stub loses its RPATH) and this
  interpreter's LIBDIR, so the stub embeds the same libpython as this interpreter;
- PATH starting with this interpreter's bin directory: the embedded interpreter finds its prefix
  through `python3` on PATH, so a virtual environment's site-packages (numpy, onnxruntime) are importable.
Every endpoint listens on 127.0.0.1 only.
"""

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from occupancy.errors import InputError
from occupancy.model_repository import (
    PYTHON_MODEL_FILE,
    Runtime,
    model_runtime,
    python_backend_view,
    scan_repository,
)
from occupancy.triton_access import restricted_flags

ModelControl = Literal["explicit", "poll", "none"]
LOOPBACK = "127.0.0.1"
PYTHON_BACKEND_MODEL = Path(__file__).parent / "triton_python_backend" / PYTHON_MODEL_FILE


@dataclass(frozen=True)
class TritonDistribution:
    """Where nvidia-pytriton keeps the server binary, its libraries, the python backend and the stubs."""

    root: Path  # site-packages/pytriton/tritonserver

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def libs(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"

    def has_backend(self, name: str) -> bool:
        return (self.root / "backends" / name).is_dir()

    def stub(self, version: tuple[int, int]) -> Path:
        stubs = self.root / "python_backend_stubs"
        return stubs / f"{version[0]}.{version[1]}" / "triton_python_backend_stub"


def find_distribution() -> TritonDistribution:
    """The installed nvidia-pytriton's server; InputError saying how to get one if it is not installed."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise InputError("tritonserver not found: install the dev extra (`pip install -e '.[dev]'`, which "
                         "brings nvidia-pytriton and its bundled tritonserver), or run Triton's container")
    distribution = TritonDistribution(Path(spec.origin).parent / "tritonserver")
    stub = distribution.stub(sys.version_info[:2])
    for needed in (distribution.binary, distribution.python_backend, stub):
        if not needed.exists():
            raise InputError(f"nvidia-pytriton is incomplete or does not support Python "
                             f"{sys.version_info[0]}.{sys.version_info[1]}: {needed} is missing")
    return distribution


def server_environment(distribution: TritonDistribution) -> dict[str, str]:
    """This process's environment plus what the server and its python stub need (see the module doc)."""
    env = dict(os.environ)
    libdirs = [str(distribution.libs)]
    libdir, libpython = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if libdir and libpython and (Path(libdir) / libpython).exists():
        libdirs.insert(0, libdir)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libdirs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def prepare_backends(distribution: TritonDistribution, directory: Path) -> Path:
    """A backend directory with the python backend and this interpreter's stub; returns it."""
    python_dir = directory / "python"
    shutil.copytree(distribution.python_backend, python_dir, ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    shutil.copy2(distribution.stub(sys.version_info[:2]), python_dir / "triton_python_backend_stub")
    return directory


class TritonLocal:
    """Start, wait for, stop and kill one local tritonserver process serving `repository`.

    Usable as a context manager (stops on exit). The server runs in its own process group, so `kill`
    also ends the python stub processes it started.
    """

    def __init__(
        self,
        repository: Path,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        model_control: ModelControl = "explicit",
        load_models: tuple[str, ...] | None = None,
        exit_timeout_s: int = 5,
        log_verbose: int = 0,
        restricted_key: str | None = None,
    ):
        if not repository.is_dir():
            raise InputError(f"--repository {repository}: no such directory")
        self.repository = repository.resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.model_control = model_control
        self.load_models = load_models
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose
        self.restricted_key = restricted_key  # model control only with this key (occupancy.triton_access)
        self.distribution = find_distribution()
        self.served_repository = self.repository  # a python-backend view of it, where start() makes one
        self.view: dict[str, str] = {}  # what the view made of each model, when there is one
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def command(self, backend_directory: Path) -> list[str]:
        command = [
            str(self.distribution.binary),
            f"--model-repository={self.served_repository}",
            f"--backend-directory={backend_directory}",
            f"--model-control-mode={self.model_control}",
            f"--http-address={LOOPBACK}", f"--http-port={self.http_port}",
            f"--grpc-address={LOOPBACK}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={LOOPBACK}", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.model_control == "poll":
            command.append("--repository-poll-secs=5")
        if self.model_control == "explicit":
            names = ("*",) if self.load_models is None else self.load_models  # None: every model
            command += [f"--load-model={name}" for name in names]
        if self.restricted_key is not None:
            command += restricted_flags(self.restricted_key)
        return command

    def start(self) -> None:
        """Prepare the backend directory and launch the server (returns at once; see wait_ready)."""
        if self._process is not None:
            raise RuntimeError("this TritonLocal is already started")
        _require_free(self.http_port, self.grpc_port, self.metrics_port)
        self._workdir = tempfile.TemporaryDirectory(prefix="occ-triton-")
        workdir = Path(self._workdir.name)
        backends = prepare_backends(self.distribution, workdir / "backends")
        if self._needs_view():
            self.served_repository = workdir / "repository"
            self.view = python_backend_view(self.repository, self.served_repository, PYTHON_BACKEND_MODEL)
        self.log_path = workdir / "tritonserver.log"
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(backends), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=server_environment(self.distribution), cwd=workdir, start_new_session=True,
            )

    def _needs_view(self) -> bool:
        """Whether some model needs a backend this server lacks (ONNX Runtime's, the python one has it)."""
        models = scan_repository(self.repository).values()
        return not self.distribution.has_backend(Runtime.ONNXRUNTIME.value) and any(
            model_runtime(entry.directory) is Runtime.ONNXRUNTIME for entry in models)

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Block until GET /v2/health/ready answers 200 and the metrics endpoint answers (tritonserver
        opens its metrics port after the HTTP one); seconds since start. RuntimeError with the server's
        log tail if it exits or is not ready in time."""
        if self._process is None:
            raise RuntimeError("start() first")
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self._process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self._process.returncode}:\n{self.log_tail()}")
            if self.is_ready() and _answers(self.metrics_url):
                return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        return _answers(f"http://{self.http_url}/v2/health/ready")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait(self) -> int:
        """Block until the server exits on its own; its exit code."""
        if self._process is None:
            raise RuntimeError("start() first")
        return self._process.wait()

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (Triton finishes in-flight requests, up to exit_timeout_s), then kill if it lingers."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s if timeout_s is not None else self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._finish()

    def kill(self) -> int | None:
        """SIGKILL the server's process group (the server and its python stubs) at once."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        return self._finish()

    def _finish(self) -> int | None:
        code = self._process.returncode if self._process else None
        self._kill_stragglers()
        if self._workdir is not None:
            self._workdir.cleanup()
        self._process, self._workdir = None, None
        self.served_repository, self.view = self.repository, {}
        return code

    def _kill_stragglers(self) -> None:
        """Stubs share the server's process group; one left after the server exited is ended here."""
        with contextlib.suppress(ProcessLookupError, PermissionError, AttributeError):
            os.killpg(self._process.pid, signal.SIGKILL)

    def __enter__(self) -> "TritonLocal":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _require_free(*ports: int) -> None:
    """InputError naming a port another process listens on: readiness checks would ask that process."""
    for port in ports:
        with socket.socket() as probe:
            # As servers bind: connections of a server that just stopped (TIME_WAIT) do not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOOPBACK, port))
            except OSError as error:
                raise InputError(f"port {port} on {LOOPBACK} is in use ({error.strerror}); stop what listens "
                                 "there or choose other --http-port/--grpc-port/--metrics-port") from None


def _answers(url: str) -> bool:
    """Whether GET url answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as answer:
            return answer.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
