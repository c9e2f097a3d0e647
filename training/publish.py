"""Publishing: an export artifact as a new numbered version of a model in the Triton-layout repository,
and Triton told to load it.

The version is written by occupancy.model_repository.write_version, the one writer of versions (atomic:
readers see either no new version or a complete one). `config.pbtxt` is rendered from the artifact's
ONNX graph for the runtime that serves the model (training/export/triton_config.py). Older versions
beyond `keep` are deleted only once the new one is in place and, with a Triton URL, loaded and ready.
"""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from occupancy.errors import InputError
from occupancy.model_repository import (
    CARD_FILES,
    CONFIG_FILE,
    ONNX_FILE,
    PLAN_FILE,
    PYTHON_MODEL_FILE,
    WARMUP_DIR,
    Runtime,
    model_runtime,
    prune,
    remove_version,
    write_version,
)
from occupancy.triton_access import TRITON_KEY_ENV, grpc_headers
from training.export.triton_config import (
    check_contract,
    python_backend_source,
    read_signature,
    render_config,
    triton_config,
)

log = logging.getLogger("occ.publish")


@dataclass(frozen=True)
class Artifact:
    """What publishing places into a version: the exported ONNX model (always: its metadata describes the
    model), for TensorRT the engine built from it and its warm-up frame, and the model card files."""

    onnx: Path
    plan: Path | None = None
    warmup: Path | None = None  # a folder of raw input files, published as <model>/warmup/
    cards: tuple[Path, ...] = ()

    @classmethod
    def from_files(cls, onnx: Path | None = None, plan: Path | None = None) -> "Artifact":
        """An artifact of files given by hand (`occ publish --onnx/--plan`): an engine's ONNX model is
        `onnx`, else model.onnx or <stem>.onnx beside the engine; the card files beside the source."""
        if plan is not None:
            if not plan.is_file():
                raise InputError(f"--plan {plan}: no such file")
            candidates = [onnx] if onnx else [plan.parent / ONNX_FILE, plan.with_suffix(".onnx")]
            onnx = next((path for path in candidates if path.is_file()), None)
            if onnx is None:
                raise InputError(f"--plan {plan}: no ONNX model beside it "
                                 f"({' or '.join(map(str, candidates))}); give the one it was built from "
                                 "with --onnx")
        elif onnx is None or not onnx.is_file():
            raise InputError(f"--onnx {onnx}: no such file")
        source = plan or onnx
        return cls(onnx=onnx, plan=plan, cards=cards_beside(source))


def cards_beside(path: Path) -> tuple[Path, ...]:
    """The model card files beside a checkpoint or an exported file."""
    return tuple(path.parent / name for name in CARD_FILES if (path.parent / name).is_file())


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    version_dir: Path
    runtime: Runtime
    removed: tuple[int, ...]  # versions deleted to keep the last `keep`
    ready_seconds: float | None  # load request to ready in Triton, when one was asked


def publish(
    repository: Path, name: str, artifact: Artifact, *, runtime: Runtime | None = None,
    version: int | None = None, keep: int | None = None, max_batch_size: int = 8, gpu: bool = False,
    triton_url: str | None = None, ready_timeout_s: float = 120.0, max_queue_delay_us: int = 2000,
) -> Published:
    """Add `artifact` as a version (the next one unless `version`) of `repository/<name>`; see the module
    doc for the guarantees.

    `runtime` defaults to the one the model is served with now, else TensorRT for an engine and ONNX
    Runtime otherwise. With `triton_url` Triton (explicit model control) loads the model and the call
    returns once the new version is ready; InputError saying why otherwise (the new version is then
    removed again). `max_queue_delay_us` is how long Triton's dynamic batching may hold a request.
    """
    if keep is not None and keep < 1:
        raise InputError(f"--keep {keep}: must keep at least the new version (1 or more)")
    if max_batch_size < 1:
        raise InputError(f"max batch size {max_batch_size}: must be at least 1")
    model_dir = repository / name
    runtime = runtime or model_runtime(model_dir) or (Runtime.TENSORRT if artifact.plan
                                                      else Runtime.ONNXRUNTIME)
    if runtime is Runtime.TENSORRT and artifact.plan is None:
        raise InputError(f"{name} is served by TensorRT: publishing needs an engine (--plan FILE, or "
                         "`occ export --format tensorrt`)")
    signature = read_signature(artifact.onnx)
    check_contract(signature, artifact.onnx)
    # A warm-up frame written by an engine export stays valid for every later version.
    warmup = artifact.warmup is not None or (model_dir / WARMUP_DIR).is_dir()
    config_text = render_config(triton_config(runtime, name, signature, max_batch_size, gpu=gpu,
                                              warmup=warmup, max_queue_delay_us=max_queue_delay_us))
    previous_config = (model_dir / CONFIG_FILE).read_text() if (model_dir / CONFIG_FILE).is_file() else None
    version_dir = write_version(repository, name, _version_files(artifact, runtime), config_text, version,
                                artifact.warmup if runtime is Runtime.TENSORRT else None)
    log.info("%s: version %s in place (%s)", model_dir, version_dir.name, runtime)
    ready_seconds = None
    if triton_url is not None:
        try:
            ready_seconds = load_in_triton(triton_url, name, int(version_dir.name), ready_timeout_s)
        except InputError:
            remove_version(version_dir, previous_config)
            log.warning("%s: removed again, Triton did not load it", version_dir)
            raise
    removed = prune(model_dir, keep) if keep is not None else ()
    return Published(name, int(version_dir.name), version_dir, runtime, removed, ready_seconds)


def _version_files(artifact: Artifact, runtime: Runtime) -> dict[str, Path]:
    """The files of a version folder by name: the ONNX model always, the engine or the python backend's
    runner as the runtime needs, and the model card."""
    files = {ONNX_FILE: artifact.onnx}
    if runtime is Runtime.TENSORRT:
        files[PLAN_FILE] = artifact.plan
    elif runtime is Runtime.PYTHON:
        files[PYTHON_MODEL_FILE] = python_backend_source()
    return {**files, **{card.name: card for card in artifact.cards}}


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
