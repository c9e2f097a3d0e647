"""The Triton-layout model repository, read by the gateway and written by `occ export`/`publish`/`refresh`.

Layout: `<root>/<name>/config.pbtxt`, `<root>/<name>/<version>/` (numbered from 1) holding `model.onnx`
(always: its metadata describes the model), `model.plan` (a TensorRT engine), `model.py` (the python
backend's runner) and the model card; `<root>/<name>/warmup/` holds a TensorRT config's warm-up frame.

Which runtime serves a model is one vocabulary, `Runtime`, shared by export, the BEV pooling formulation,
publishing, the Triton configs and the command lines. `write_version` is the only writer of a version: it
stages everything in a hidden folder inside the model's folder and renames it into place, so a reader (the
gateway's watcher, Triton's poller) sees either no new version or a complete one.
"""

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from occupancy.errors import InputError

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
PYTHON_MODEL_FILE = "model.py"
WARMUP_DIR = "warmup"  # Triton reads model_warmup input_data_file from <model>/warmup/
CARD_MARKDOWN = "model_card.md"  # the model card, for people
CARD_JSON = "card.json"  # the same facts for `occ refresh` (which checkpoint, which mIoU to beat)
CARD_FILES = (CARD_MARKDOWN, CARD_JSON)  # travel from beside a checkpoint into its version
STAGING_PREFIX = ".staging-"  # not a number: Triton and the gateway ignore such folders


class Runtime(StrEnum):
    """What runs a served model: the exported graph differs by runtime only in its BEV pooling."""

    ONNXRUNTIME = "onnxruntime"  # model.onnx in ONNX Runtime: the embedded gateway, Triton's onnxruntime
    TENSORRT = "tensorrt"  # model.plan, a TensorRT FP16 engine built from model.onnx (GPU)
    PYTHON = "python"  # model.onnx in ONNX Runtime inside Triton's python backend (a CPU Triton without
    # the onnxruntime backend, such as the one nvidia-pytriton bundles)

    @property
    def graph(self) -> "Runtime":
        """The runtime whose pooling formulation the exported ONNX graph gets."""
        return Runtime.TENSORRT if self is Runtime.TENSORRT else Runtime.ONNXRUNTIME


# `occ export --format`: the file the export produces, as its flag has always named it.
EXPORT_FORMATS: dict[str, Runtime] = {"onnx": Runtime.ONNXRUNTIME, "tensorrt": Runtime.TENSORRT}
# How a config.pbtxt names each runtime: a `platform` or a `backend`.
TRITON_PLATFORMS: dict[Runtime, tuple[str, str]] = {
    Runtime.ONNXRUNTIME: ("platform", "onnxruntime_onnx"),
    Runtime.TENSORRT: ("platform", "tensorrt_plan"),
    Runtime.PYTHON: ("backend", "python"),
}


def version_numbers(model_dir: Path) -> list[int]:
    """The numbered version folders of a model, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(path.name) for path in model_dir.iterdir() if path.is_dir() and path.name.isdigit())


@dataclass(frozen=True)
class ModelVersions:
    """One model folder and its numbered versions that hold an ONNX file, oldest first."""

    name: str
    directory: Path
    versions: tuple[int, ...]

    @property
    def latest(self) -> int:
        return self.versions[-1]

    def onnx_path(self, version: int) -> Path:
        return self.directory / str(version) / ONNX_FILE


def scan_repository(root: Path) -> dict[str, ModelVersions]:
    """Models of a repository by name; folders without config.pbtxt or an ONNX version are skipped."""
    if not root.is_dir():
        return {}
    models = {}
    for directory in sorted(p for p in root.iterdir() if (p / CONFIG_FILE).is_file()):
        versions = tuple(v for v in version_numbers(directory) if (directory / str(v) / ONNX_FILE).is_file())
        if versions:
            models[directory.name] = ModelVersions(directory.name, directory, versions)
    return models


def require_models(root: Path, default_model: str | None = None) -> dict[str, ModelVersions]:
    """`scan_repository`, raising InputError with what to do when nothing (or not the default) is served."""
    models = scan_repository(root)
    if not models:
        raise InputError(f"model repository {root} has no model (expected <name>/{CONFIG_FILE} and "
                         f"<name>/<version>/{ONNX_FILE}); export one with `occ export demo-tiny "
                         f"--repository {root}`")
    if default_model is not None and default_model not in models:
        raise InputError(f"model {default_model!r} is not in {root}; it serves {sorted(models)}")
    return models


def served_runtime(config_text: str) -> Runtime | None:
    """The runtime a config.pbtxt names, or None when it names none of ours."""
    for runtime, (key, value) in TRITON_PLATFORMS.items():
        if re.search(rf'^{key}:\s*"{value}"', config_text, re.M):
            return runtime
    return None


def model_runtime(model_dir: Path) -> Runtime | None:
    """How the model's config.pbtxt serves it now, or None without one."""
    path = model_dir / CONFIG_FILE
    return served_runtime(path.read_text()) if path.is_file() else None


def write_version(repository: Path, name: str, files: Mapping[str, Path], config_text: str,
                  version: int | None = None, warmup: Path | None = None) -> Path:
    """Add a version of `repository/<name>` atomically; returns its folder.

    `files` maps names in the version folder to the files copied there; `config_text` replaces the
    model's config.pbtxt and `warmup`, a folder, its warm-up files. `version` defaults to one above the
    highest; an existing one is an InputError, and so is a number another writer takes meanwhile.
    """
    model_dir = repository / name
    version = (version_numbers(model_dir) or [0])[-1] + 1 if version is None else version
    if version < 1:
        raise InputError(f"version {version}: versions are numbered from 1")
    version_dir = model_dir / str(version)
    if version_dir.exists():
        raise InputError(f"version {version_dir} exists already; choose another version or leave it out")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
    try:
        staged_version = staging / str(version)
        staged_version.mkdir()
        for file_name, source in files.items():
            shutil.copyfile(source, staged_version / file_name)
        (staging / CONFIG_FILE).write_text(config_text)
        if warmup is not None:
            shutil.copytree(warmup, staging / WARMUP_DIR)
        try:
            os.rename(staged_version, version_dir)  # fails if another writer took the number
        except OSError as error:
            raise InputError(f"{version_dir}: could not be created ({error}); is another publish "
                             "running?") from None
        if warmup is not None:
            shutil.rmtree(model_dir / WARMUP_DIR, ignore_errors=True)
            os.rename(staging / WARMUP_DIR, model_dir / WARMUP_DIR)
        os.replace(staging / CONFIG_FILE, model_dir / CONFIG_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version_dir


def remove_version(version_dir: Path, previous_config: str | None) -> None:
    """Take a version back (Triton refused it): the model folder is as it was before `write_version`."""
    model_dir = version_dir.parent
    shutil.rmtree(version_dir, ignore_errors=True)
    if previous_config is not None:
        staged = model_dir / f"{STAGING_PREFIX}{CONFIG_FILE}"
        staged.write_text(previous_config)
        staged.replace(model_dir / CONFIG_FILE)


def prune(model_dir: Path, keep: int) -> tuple[int, ...]:
    """Delete all but the newest `keep` versions; the deleted numbers."""
    old = version_numbers(model_dir)[:-keep]
    for version in old:
        shutil.rmtree(model_dir / str(version))
    return tuple(old)


def python_backend_config(config_text: str) -> str:
    """An onnxruntime_onnx config.pbtxt rewritten for Triton's python backend on CPU (same tensors,
    batching and parameters): what `occ publish --backend-kind python` writes for the same model."""
    key, value = TRITON_PLATFORMS[Runtime.PYTHON]
    text = re.sub(r'^platform:\s*"onnxruntime_onnx"\s*$', f'{key}: "{value}"', config_text, flags=re.M)
    text = re.sub(rf'^default_model_filename:\s*"{re.escape(ONNX_FILE)}"\s*\n', "", text, flags=re.M)
    return text.replace("kind: KIND_GPU", "kind: KIND_CPU")


def python_backend_view(source: Path, target: Path, model_py: Path, link: bool = True) -> dict[str, str]:
    """Write into `target` the repository `source` as a Triton with only the python backend serves it:
    onnxruntime and python models become python-backend models whose versions hold `model_py` and the
    source's model.onnx (a symlink with `link`, else a copy); TensorRT models are left out. Returns
    what happened to each model, by name."""
    target.mkdir(parents=True, exist_ok=True)
    outcome = {}
    for name, entry in scan_repository(source).items():
        runtime = model_runtime(entry.directory)
        if runtime not in (Runtime.ONNXRUNTIME, Runtime.PYTHON):
            outcome[name] = f"left out: served by {runtime or 'an unknown runtime'}, which needs a GPU Triton"
            continue
        config_text = (entry.directory / CONFIG_FILE).read_text()
        (target / name).mkdir(exist_ok=True)
        (target / name / CONFIG_FILE).write_text(python_backend_config(config_text))
        for version in entry.versions:
            version_dir = target / name / str(version)
            version_dir.mkdir(exist_ok=True)
            shutil.copyfile(model_py, version_dir / PYTHON_MODEL_FILE)
            onnx = entry.onnx_path(version).resolve()
            destination = version_dir / ONNX_FILE
            destination.unlink(missing_ok=True)
            if link:
                destination.symlink_to(onnx)
            else:
                shutil.copyfile(onnx, destination)
        numbers = ", ".join(map(str, entry.versions))
        outcome[name] = f"version{'s' if len(entry.versions) > 1 else ''} {numbers} on the python backend"
    return outcome
