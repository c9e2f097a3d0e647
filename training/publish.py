"""Publishing: a new numbered version of a model in the Triton-layout repository, and Triton told to load it.

The version appears atomically: every file is written into a hidden staging folder inside the model's
folder (same file system), which is then renamed to the next number. Readers of the repository (the
embedded gateway's watcher, Triton's repository poller) therefore see either no new version or a
complete one. `config.pbtxt` is rewritten from the new model (training/export/triton_config.py) and
replaced with os.replace, also atomic. Older versions beyond `keep` are deleted only once the new one
is in place and, with a Triton URL, loaded and ready.
"""

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from occupancy.errors import InputError
from occupancy.triton_access import TRITON_KEY_ENV, grpc_headers
from training.export.triton_config import (
    CONFIG_FILE,
    ONNX_FILE,
    PLAN_FILE,
    WARMUP_DIR,
    onnxruntime_config,
    read_signature,
    tensorrt_config,
    write_config,
    write_python_backend_model,
)

BackendKind = Literal["onnxruntime", "python", "tensorrt"]
BACKEND_KINDS: tuple[str, ...] = ("onnxruntime", "python", "tensorrt")
CARD_FILES: tuple[str, ...] = ("model_card.md", "card.json")  # copied along when beside the source
STAGING_PREFIX = ".publish-"  # not a number: Triton and the gateway ignore it

log = logging.getLogger("occ.publish")


@dataclass(frozen=True)
class Artifact:
    """What to publish: the exported ONNX model (always: its metadata describes the model) and, for
    TensorRT, the engine built from it."""

    onnx: Path
    plan: Path | None = None

    @classmethod
    def from_plan(cls, plan: Path, onnx: Path | None = None) -> "Artifact":
        """An engine and its ONNX model: `onnx`, else model.onnx or <stem>.onnx beside the engine."""
        candidates = [onnx] if onnx else [plan.parent / ONNX_FILE, plan.with_suffix(".onnx")]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise InputError(f"--plan {plan}: no ONNX model beside it ({' or '.join(map(str, candidates))}); "
                             "give the one it was built from with --onnx")
        return cls(onnx=found, plan=plan)

    @property
    def source(self) -> Path:
        return self.plan or self.onnx


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    version_dir: Path
    kind: BackendKind
    removed: tuple[int, ...]  # versions deleted to keep the last `keep`
    ready_seconds: float | None  # load request to ready in Triton, when one was asked


def version_numbers(model_dir: Path) -> list[int]:
    """The numbered version folders of a model, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(path.name) for path in model_dir.iterdir() if path.is_dir() and path.name.isdigit())


def current_kind(model_dir: Path) -> BackendKind | None:
    """How the model's config.pbtxt serves it now, or None without one."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return None
    text = path.read_text()
    if re.search(r'^backend:\s*"python"', text, re.M):
        return "python"
    if re.search(r'^platform:\s*"tensorrt_plan"', text, re.M):
        return "tensorrt"
    return "onnxruntime"


def export_checkpoint(checkpoint: Path, config_name: str, scratch: Path) -> Path:
    """Export a checkpoint with `occ export`'s exporter (ONNX Runtime against PyTorch parity check
    included) into `scratch`; the ONNX path, with the checkpoint's model card beside it."""
    from training.export.repository_export import export_to_repository

    version_dir = export_to_repository(config_name, checkpoint, scratch, name="export", version=1,
                                       log=log.info)
    return version_dir / ONNX_FILE


def publish(
    repository: Path, name: str, artifact: Artifact, *, kind: BackendKind | None = None,
    keep: int | None = None, max_batch_size: int = 8, gpu: bool = False, triton_url: str | None = None,
    ready_timeout_s: float = 120.0,
) -> Published:
    """Add `artifact` as the next version of `repository/<name>`; see the module doc for the guarantees.

    `kind` defaults to the current config's kind, else tensorrt for an engine and onnxruntime otherwise.
    With `triton_url` Triton (explicit model control) loads the model and the call returns once the new
    version is ready; InputError saying why otherwise (the new version is then removed again).
    """
    if keep is not None and keep < 1:
        raise InputError(f"--keep {keep}: must keep at least the new version (1 or more)")
    model_dir = repository / name
    kind = kind or current_kind(model_dir) or ("tensorrt" if artifact.plan else "onnxruntime")
    if kind == "tensorrt" and artifact.plan is None:
        raise InputError("--backend-kind tensorrt: needs an engine (--plan FILE)")
    model_dir.mkdir(parents=True, exist_ok=True)
    version = (version_numbers(model_dir) or [0])[-1] + 1
    previous_config = (model_dir / CONFIG_FILE).read_text() if (model_dir / CONFIG_FILE).is_file() else None

    version_dir = _place(model_dir, version, artifact, kind, max_batch_size, gpu)
    log.info("%s: version %d in place (%s)", model_dir, version, kind)
    ready_seconds = None
    if triton_url is not None:
        try:
            ready_seconds = load_in_triton(triton_url, name, version, ready_timeout_s)
        except InputError:
            _unpublish(model_dir, version_dir, previous_config)
            raise
    removed = prune(model_dir, keep) if keep is not None else ()
    return Published(name, version, version_dir, kind, removed, ready_seconds)


def _place(model_dir: Path, version: int, artifact: Artifact, kind: BackendKind, max_batch_size: int,
           gpu: bool) -> Path:
    """Write the version and its config into a staging folder, then rename both into place."""
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=model_dir))
    try:
        staged_model = _stage(staging, model_dir, version, artifact, kind, max_batch_size, gpu)
        version_dir = model_dir / str(version)
        try:
            (staged_model / str(version)).rename(version_dir)  # fails if another publisher took the number
        except OSError as error:
            raise InputError(f"{version_dir}: could not be created ({error}); is another publish "
                             "running?") from None
        (staged_model / CONFIG_FILE).replace(model_dir / CONFIG_FILE)
        return version_dir
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage(staging: Path, model_dir: Path, version: int, artifact: Artifact, kind: BackendKind,
           max_batch_size: int, gpu: bool) -> Path:
    """`staging/<name>/config.pbtxt` and `staging/<name>/<version>/...`; returns `staging/<name>`."""
    name = model_dir.name
    staged_model = staging / name
    if kind == "python":
        write_python_backend_model(staging, name, artifact.onnx, version=version,
                                   max_batch_size=max_batch_size)
    else:
        signature = read_signature(artifact.onnx)
        (staged_model / str(version)).mkdir(parents=True)
        shutil.copyfile(artifact.onnx, staged_model / str(version) / ONNX_FILE)
        if kind == "tensorrt":
            shutil.copyfile(artifact.plan, staged_model / str(version) / PLAN_FILE)
            # A warm-up sample written by the engine export stays valid for every version.
            warmup = (model_dir / WARMUP_DIR).is_dir()
            config = tensorrt_config(name, signature, max_batch_size, warmup=warmup)
        else:
            config = onnxruntime_config(name, signature, max_batch_size, gpu)
        write_config(staged_model, config)
    for card in CARD_FILES:
        if (artifact.source.parent / card).is_file():
            shutil.copyfile(artifact.source.parent / card, staged_model / str(version) / card)
    return staged_model


def _unpublish(model_dir: Path, version_dir: Path, previous_config: str | None) -> None:
    """Take back a version that Triton refused: the repository is as it was before."""
    shutil.rmtree(version_dir, ignore_errors=True)
    if previous_config is not None:
        staged = model_dir / f"{STAGING_PREFIX}{CONFIG_FILE}"
        staged.write_text(previous_config)
        staged.replace(model_dir / CONFIG_FILE)
    log.warning("%s: removed again, Triton did not load it", version_dir)


def prune(model_dir: Path, keep: int) -> tuple[int, ...]:
    """Delete all but the newest `keep` versions; the deleted numbers."""
    old = version_numbers(model_dir)[:-keep]
    for version in old:
        shutil.rmtree(model_dir / str(version))
    return tuple(old)


def load_in_triton(url: str, name: str, version: int, timeout_s: float) -> float:
    """Ask Triton (explicit model control) to (re)load `name` and wait until `version` is ready;
    seconds taken. InputError with Triton's reason if it refuses or is not ready within `timeout_s`.
    Where Triton restricts its model control, the key comes from the environment (OCC_TRITON_KEY)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    started = time.monotonic()
    client = grpcclient.InferenceServerClient(url)
    headers = grpc_headers(os.environ.get(TRITON_KEY_ENV))  # Triton's model control may need its key
    try:
        # Triton loads the new version beside the old one and retires the old one only once the new
        # one is ready: requests keep being answered throughout.
        client.load_model(name, headers=headers, client_timeout=timeout_s)
        while not client.is_model_ready(name, str(version), client_timeout=5.0):
            if time.monotonic() - started > timeout_s:
                raise InputError(f"--triton-url {url}: {name} version {version} not ready after "
                                 f"{timeout_s:.0f} s ({_state(client, name, version, headers)})")
            time.sleep(0.1)
    except InferenceServerException as error:
        raise InputError(f"--triton-url {url}: loading {name} version {version} failed: "
                         f"{error.message()}") from None
    finally:
        client.close()
    return time.monotonic() - started


def _state(client, name: str, version: int, headers: dict[str, str] | None) -> str:
    """Triton's state and reason for one model version, from its repository index."""
    for model in client.get_model_repository_index(headers=headers).models:
        if model.name == name and model.version == str(version):
            return f"state {model.state or 'unknown'}: {model.reason or 'no reason given'}"
    return "Triton does not list this version"
