"""Backend `embedded`: the exported ONNX models run in this process with ONNX Runtime.

It follows the repository: every `watch_interval_s` a thread looks at each served model's newest
version, loads it, answers one dummy frame with it, and only then swaps it in. A request runs on the
session of the version it resolved when it arrived (its inputs are made for that version's input
size), so no request fails during a swap.
"""

import asyncio
import dataclasses
import logging
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from occupancy import model_contract as contract
from occupancy.errors import InputError
from occupancy.model_repository import ModelVersions, require_models, scan_repository
from service.backends.base import Backend, BackendUnavailable, Inference, ServedModel
from service.backends.watch import Poller, warmup_inputs
from service.core.config import Settings

log = logging.getLogger("service.embedded")

Stamp = tuple[int, int]  # (version, mtime in ns of its model.onnx): a change means "load again"


@dataclass(frozen=True)
class _Loaded:
    model: ServedModel
    session: ort.InferenceSession
    stamp: Stamp


class EmbeddedBackend(Backend):
    """One InferenceSession per served model (its highest version), run on a bounded thread pool.

    The pool has `max_concurrent` threads, one per admission slot. A running ONNX Runtime call cannot
    be interrupted: a request that timed out keeps its slot until its call ends (service.core.admission),
    so abandoned work never piles up.
    """

    kind = "embedded"

    def __init__(self, root: Path, loaded: Mapping[str, _Loaded], options: ort.SessionOptions, workers: int,
                 watch_interval_s: float = 0.0):
        self._root, self._options = root, options
        # Replaced as a whole on a swap, never mutated: readers on other threads need no lock.
        self._loaded: dict[str, _Loaded] = {}
        # Sessions by the identity of a ServedModel: while a request holds the model it resolved, that
        # version's session stays here, also after a newer version replaced it in `_loaded`.
        self._sessions: dict[int, ort.InferenceSession] = {}
        for name, entry in loaded.items():
            self._replace(name, entry)
        self._failed: set[tuple[str, Stamp]] = set()  # versions that did not load: not retried
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="occ-ort")
        self._poller = Poller(self.refresh, watch_interval_s, "occ-watch") if watch_interval_s else None
        if self._poller is not None:
            self._poller.start()

    @classmethod
    def load(cls, settings: Settings) -> "EmbeddedBackend":
        """Load every model of `settings.model_repository`; InputError if there is none or one is unusable."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.ort_intra_op_threads
        options.inter_op_num_threads = settings.ort_inter_op_threads
        spinning = "1" if settings.ort_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        models = require_models(settings.model_repository, settings.default_model)
        loaded = {name: _load(entry, options) for name, entry in models.items()}
        return cls(settings.model_repository, loaded, options, settings.max_concurrent,
                   settings.watch_interval_s)

    @property
    def models(self) -> Mapping[str, ServedModel]:
        return {name: entry.model for name, entry in self._loaded.items()}

    async def infer(self, model: ServedModel, inputs: Mapping[str, np.ndarray]) -> Inference:
        session = self._sessions.get(id(model))
        if session is None:
            raise BackendUnavailable(f"model {model.name} version {model.version} is not loaded here")
        feeds = {name: inputs[name] for name in model.input_names}
        semantics, *state = await asyncio.get_running_loop().run_in_executor(
            self._executor, session.run, list(model.output_names), feeds
        )
        return Inference(semantics, model, {tensor.name: value for tensor, value in zip(model.state, state,
                                                                                         strict=True)})

    def refresh(self) -> list[str]:
        """Swap in the newest version of every model whose newest version changed, and start serving a
        model that appeared, once it has loaded and answered a dummy frame; a version that fails is
        logged and skipped. Returns the names swapped in. Runs on the watch thread (or a test's)."""
        swapped = []
        for name, entry in scan_repository(self._root).items():
            current, stamp = self._loaded.get(name), _stamp(entry)
            if (name, stamp) in self._failed:
                continue
            if current is not None and stamp == current.stamp:
                if entry.versions != tuple(int(v) for v in current.model.versions):  # old ones were pruned
                    self._replace(name, dataclasses.replace(
                        current, model=dataclasses.replace(current.model, versions=_names(entry))))
                continue
            started = time.perf_counter()
            try:
                fresh = _load(entry, self._options)
                fresh.session.run([contract.SEMANTICS], warmup_inputs(fresh.model))
            except Exception as error:  # a broken version must never replace a working one
                self._failed.add((name, stamp))
                log.error("model %s version %s: not served, it failed to load or warm up: %s",
                          name, entry.latest, error)
                continue
            self._replace(name, fresh)
            swapped.append(name)
            seconds = time.perf_counter() - started
            if current is None:
                log.info("model %s: version %s is now served, a new model (loaded and warmed up in %.2f s)",
                         name, fresh.model.version, seconds)
            elif entry.latest < int(current.model.version):
                log.warning("model %s: version %s disappeared from the repository, rolled back to version %s "
                            "(loaded and warmed up in %.2f s)", name, current.model.version,
                            fresh.model.version, seconds)
            else:
                log.info("model %s: version %s replaces %s (loaded and warmed up in %.2f s)", name,
                         fresh.model.version, current.model.version, seconds)
        return swapped

    def _replace(self, name: str, entry: _Loaded) -> None:
        key = id(entry.model)
        self._sessions[key] = entry.session
        weakref.finalize(entry.model, self._sessions.pop, key, None)  # once no request holds the model
        self._loaded = {**self._loaded, name: entry}

    async def ready(self) -> bool:
        return bool(self._loaded)

    async def close(self) -> None:
        if self._poller is not None:
            await asyncio.to_thread(self._poller.stop)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loaded, self._sessions = {}, {}


def _stamp(entry: ModelVersions) -> Stamp:
    return entry.latest, entry.onnx_path(entry.latest).stat().st_mtime_ns


def _names(entry: ModelVersions) -> tuple[str, ...]:
    return tuple(str(v) for v in entry.versions)


def _load(entry: ModelVersions, options: ort.SessionOptions) -> _Loaded:
    """The session and description of `entry`'s newest version; InputError if it breaks the contract."""
    stamp = _stamp(entry)
    path = entry.onnx_path(entry.latest)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    model = ServedModel.described(entry.name, str(entry.latest), _names(entry), metadata, str(path))
    _check_signature(session, model, path)
    return _Loaded(model, session, stamp)


def _check_signature(session: ort.InferenceSession, model: ServedModel, path) -> None:
    """The graph takes and returns what the contract says a model of its kind (temporal or not) does."""
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if inputs != set(model.input_names) or not set(model.output_names) <= outputs:
        raise InputError(
            f"{path}: inputs {sorted(inputs)} and outputs {sorted(outputs)} do not match the model contract "
            f"(inputs {list(model.input_names)}, outputs {list(model.output_names)}); re-export the model"
        )
