"""Write the CPU python-backend variant of every model in a Triton model repository.

Used by Dockerfile.triton-cpu: `python docker/python_backend_repository.py SOURCE TARGET`. Every version of
each onnxruntime (or python) model of SOURCE is written to TARGET with the same name and version, served by
service/triton_python_backend/model.py on CPU (occupancy.model_repository.python_backend_view, with copies
rather than links: the image keeps TARGET only). TensorRT models are left out, with a line saying so.
"""

import sys
from pathlib import Path

from occupancy.model_repository import python_backend_view
from service.triton_local import PYTHON_BACKEND_MODEL


def main(source: Path, target: Path) -> int:
    for name, outcome in python_backend_view(source, target, PYTHON_BACKEND_MODEL, link=False).items():
        print(f"{name}: {outcome} -> {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
