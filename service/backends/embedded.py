"""Backend `embedded`: the exported ONNX models run in this process with ONNX Runtime."""

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from occupancy import model_contract as contract
from occupancy.errors import InputError
from service.backends.base import Backend, ServedModel, served_model_from_metadata
from service.core.config import Settings
from service.repository import require_models


@dataclass(frozen=True)
class _Loaded:
    model: ServedModel
    session: ort.InferenceSession


class EmbeddedBackend(Backend):
    """One InferenceSession per served model (its highest version), run on a bounded thread pool.

    The pool has `max_concurrent` threads: a caller that gives up (timeout) cancels its job if it has
    not started yet, so abandoned work never piles up; a running ONNX Runtime call cannot be interrupted.
    """

    kind = "embedded"

    def __init__(self, loaded: Mapping[str, _Loaded], workers: int):
        self._loaded = dict(loaded)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="occ-ort")

    @classmethod
    def load(cls, settings: Settings) -> "EmbeddedBackend":
        """Load every model of `settings.model_repository`; InputError if there is none or one is unusable."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.ort_intra_op_threads
        options.inter_op_num_threads = settings.ort_inter_op_threads
        loaded = {}
        for name, entry in require_models(settings.model_repository, settings.default_model).items():
            path = entry.onnx_path(entry.latest)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            _check_signature(session, path)
            versions = tuple(str(v) for v in entry.versions)
            metadata = session.get_modelmeta().custom_metadata_map
            model = served_model_from_metadata(name, str(entry.latest), versions, metadata, str(path))
            loaded[name] = _Loaded(model, session)
        return cls(loaded, settings.max_concurrent)

    @property
    def models(self) -> Mapping[str, ServedModel]:
        return {name: entry.model for name, entry in self._loaded.items()}

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        session = self._loaded[model].session
        feeds = {name: inputs[name] for name in contract.INPUT_NAMES}
        outputs = await asyncio.get_running_loop().run_in_executor(
            self._executor, session.run, [contract.SEMANTICS], feeds
        )
        return outputs[0]

    async def ready(self) -> bool:
        return bool(self._loaded)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loaded.clear()


def _check_signature(session: ort.InferenceSession, path) -> None:
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if inputs != set(contract.INPUT_NAMES) or contract.SEMANTICS not in outputs:
        raise InputError(
            f"{path}: inputs {sorted(inputs)} and outputs {sorted(outputs)} do not match the model contract "
            f"(inputs {list(contract.INPUT_NAMES)}, output {contract.SEMANTICS!r}); re-export the model"
        )
