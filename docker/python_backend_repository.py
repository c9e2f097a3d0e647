"""Write the CPU python-backend variant of every model in a Triton model repository.

Used by Dockerfile.triton-cpu: `python docker/python_backend_repository.py SOURCE TARGET`. For each
`SOURCE/<name>/<version>/model.onnx` (the highest version of each model) it writes `TARGET/<name>` with
the same name and version, served by service/triton_python_backend/model.py on CPU. Models without an
ONNX file (engine-only folders) are left out, with a line saying so.
"""

import sys
from pathlib import Path

from training.export.triton_config import ONNX_FILE, write_python_backend_model


def latest_onnx(model_dir: Path) -> tuple[int, Path] | None:
    """(version, path) of the highest numbered version folder of `model_dir` that holds an ONNX file."""
    versions = [
        int(path.name)
        for path in model_dir.iterdir()
        if path.is_dir() and path.name.isdigit() and (path / ONNX_FILE).is_file()
    ]
    return (max(versions), model_dir / str(max(versions)) / ONNX_FILE) if versions else None


def main(source: Path, target: Path) -> int:
    for model_dir in sorted(path for path in source.iterdir() if path.is_dir()):
        found = latest_onnx(model_dir)
        if found is None:
            print(f"{model_dir.name}: no <version>/{ONNX_FILE}, left out")
            continue
        version, onnx_path = found
        write_python_backend_model(target, model_dir.name, onnx_path, version=version)
        print(f"{model_dir.name}: version {version} -> {target / model_dir.name}")
    target.mkdir(parents=True, exist_ok=True)  # Triton needs the folder even when it is empty
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
