"""The Triton-layout model repository: `<root>/<name>/config.pbtxt`, `<root>/<name>/<version>/model.onnx`."""

from dataclasses import dataclass
from pathlib import Path

from occupancy.errors import InputError

ONNX_FILE = "model.onnx"
EXPORT_HINT = "export one with `occ export demo-tiny --repository {root}`"


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
    for directory in sorted(p for p in root.iterdir() if (p / "config.pbtxt").is_file()):
        versions = sorted(int(v.name) for v in directory.iterdir()
                          if v.name.isdigit() and (v / ONNX_FILE).is_file())
        if versions:
            models[directory.name] = ModelVersions(directory.name, directory, tuple(versions))
    return models


def require_models(root: Path, default_model: str | None = None) -> dict[str, ModelVersions]:
    """`scan_repository`, raising InputError with what to do when nothing (or not the default) is served."""
    models = scan_repository(root)
    if not models:
        raise InputError(
            f"model repository {root} has no model (expected <name>/config.pbtxt and "
            f"<name>/<version>/{ONNX_FILE}); " + EXPORT_HINT.format(root=root)
        )
    if default_model is not None and default_model not in models:
        raise InputError(f"model {default_model!r} is not in {root}; it serves {sorted(models)}")
    return models
