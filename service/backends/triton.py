"""Backend `triton`: the gateway's tensors go to a Triton server over gRPC (async, binary tensors).

At start-up it discovers the models Triton serves (repository index, then each model's metadata and
config) and checks them against what the gateway sends (occupancy.model_contract, uint8 images and
float32 geometry); the occ.* description comes from the config's `parameters`, where the exporter
copies the ONNX metadata_props. It then follows Triton: every answer names the version that computed
it, a newer version than the one known starts a background re-read of the metadata, and so does a
readiness check or a request when the last re-read is older than `watch_interval_s`.

Failures, mapped to what the HTTP API answers:
- UNAVAILABLE (connection refused, Triton restarting, the connection dropped): inference is read-only,
  so it is retried `triton_retries` times with doubling waits, within `triton_timeout_s`; then
  BackendUnavailable (503 with Retry-After). The gRPC channel reconnects within a second once Triton
  is back, so the gateway recovers without a restart.
- NOT_FOUND (the model is not loaded): BackendUnavailable at once.
- DEADLINE_EXCEEDED (`triton_timeout_s` spent): BackendTimeout (504), never retried: Triton may still be
  computing it, and another try would only add load.
- INVALID_ARGUMENT: Triton refused the tensors, which the gateway made for the version it knew; Triton
  has swapped in a version with another input size since. Triton never runs a version on inputs of
  another shape, so the request answers 503 with Retry-After and the models are re-read at once.
The reasons (with Triton's address) go to the log; clients are told only that the backend is unavailable.
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from occupancy import model_contract as contract
from occupancy.errors import InputError
from occupancy.triton_access import TRITON_KEY_ENV, grpc_headers
from service.backends.base import (
    Backend,
    BackendTimeout,
    BackendUnavailable,
    Inference,
    ServedModel,
)
from service.core.config import Settings

log = logging.getLogger("service.triton")

# What service.pipeline.prepare_inputs sends: the model must take exactly these; a temporal model also
# what the gateway's sequence store sends (the previous frame's cameras, the history, the state).
SENT_DATATYPES: dict[str, str] = {
    contract.IMAGES: "UINT8",
    contract.INTRINSICS: "FP32",
    contract.SENSOR2EGO: "FP32",
    contract.POST_ROTS: "FP32",
    contract.POST_TRANS: "FP32",
}
TEMPORAL_DATATYPES: dict[str, str] = {contract.PREV_SENSOR2EGO: "FP32", contract.HISTORY: "INT32"}
SEMANTICS_DATATYPE = "UINT8"

UNAVAILABLE = "StatusCode.UNAVAILABLE"
NOT_FOUND = "StatusCode.NOT_FOUND"
DEADLINE_EXCEEDED = "StatusCode.DEADLINE_EXCEEDED"
INVALID_ARGUMENT = "StatusCode.INVALID_ARGUMENT"
PROBE_TIMEOUT_S = 1.0  # readiness and metadata calls: a healthy Triton answers in milliseconds
MAX_MESSAGE_BYTES = 2**31 - 1

# tritonclient's defaults (message sizes, keep-alive) plus a short reconnect backoff: gRPC's default
# grows to 120 s, which would keep the gateway answering 503 long after Triton is back.
CHANNEL_ARGS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonBackend(Backend):
    """Served models discovered on one Triton server; inference through a `tritonclient.grpc.aio` client.

    The async client is created at first use, on the app's event loop (a gRPC aio channel belongs to the
    loop that created it), so `load` itself may run in a worker thread.
    """

    kind = "triton"

    def __init__(self, settings: Settings, models: Mapping[str, ServedModel]):
        self._settings = settings
        self._models = dict(models)  # replaced as a whole, never mutated
        self._client: grpcaio.InferenceServerClient | None = None
        self._refresh: asyncio.Task | None = None
        self._refreshed_at = time.monotonic()

    @classmethod
    def load(cls, settings: Settings) -> "TritonBackend":
        """Wait (up to `triton_startup_timeout_s`) for Triton and a ready model, discover and check every
        ready model (or just `default_model`); InputError naming the URL and model otherwise."""
        client = grpcclient.InferenceServerClient(settings.triton_url, channel_args=CHANNEL_ARGS)
        try:
            names = _wait_for_models(client, settings)
            headers = _key_headers(settings)
            models = {name: _describe(client.get_model_metadata(name),
                                      client.get_model_config(name, headers=headers), settings.triton_url)
                      for name in names}
        except InferenceServerException as error:
            raise InputError(f"--triton-url {settings.triton_url}: {error.message()}") from None
        finally:
            client.close()
        log.info("triton %s serves %s", settings.triton_url,
                 ", ".join(f"{m.name} v{m.version}" for m in models.values()))
        return cls(settings, models)

    @property
    def models(self) -> Mapping[str, ServedModel]:
        return self._models

    async def infer(self, model: ServedModel, inputs: Mapping[str, np.ndarray]) -> Inference:
        """Triton's answer; a temporal model's state travels both ways as tensors (any Triton backend runs
        it) and its request names the version the state is of, so no other version ever reads it."""
        tensors = [_infer_input(name, inputs[name]) for name in model.input_names]
        outputs = [grpcaio.InferRequestedOutput(name) for name in model.output_names]
        version = model.version if model.temporal else ""
        result = await self._infer_with_retries(model.name, tensors, outputs, version)
        semantics = result.as_numpy(contract.SEMANTICS)
        state = {tensor.name: result.as_numpy(tensor.output) for tensor in model.state}
        version = result.get_response().model_version
        served = self._models[model.name]
        if version and version != served.version:
            self._refresh_soon(force=True)  # Triton serves another version now: learn about it
            served = dataclasses.replace(served, version=version)
        else:
            self._refresh_soon()
        return Inference(semantics, served, state)

    async def _infer_with_retries(self, model: str, tensors: list[grpcaio.InferInput],
                                  outputs: list[grpcaio.InferRequestedOutput], version: str = "",
                                  ) -> grpcaio.InferResult:
        settings = self._settings
        deadline = time.monotonic() + settings.triton_timeout_s
        attempt = 0
        while True:
            try:
                return await self._connect().infer(model, tensors, model_version=version, outputs=outputs,
                                                   client_timeout=max(deadline - time.monotonic(), 1e-3))
            except InferenceServerException as error:
                status = error.status()
                if status == DEADLINE_EXCEEDED:
                    message = f"backend: no answer within {settings.triton_timeout_s} s"
                    raise BackendTimeout(message) from error
                if status == NOT_FOUND:
                    self._refresh_soon(force=True)  # e.g. the version a temporal request pinned is gone
                    raise BackendUnavailable(f"triton does not serve {model!r} now") from error
                if status == INVALID_ARGUMENT:
                    self._refresh_soon(force=True)
                    raise BackendUnavailable(f"triton refused the inputs for {model!r}, the version it "
                                             f"serves changed: {error.message()}") from error
                if status != UNAVAILABLE:
                    raise
                wait = settings.triton_retry_backoff_s * 2**attempt
                if attempt == settings.triton_retries or time.monotonic() + wait >= deadline:
                    raise BackendUnavailable(f"triton at {settings.triton_url}: {error.message()}") from error
                attempt += 1
                log.info("triton unavailable (%s); retry %d in %.2f s", error.message(), attempt, wait)
                await asyncio.sleep(wait)

    async def ready(self) -> bool:
        """Triton's server readiness and every served model's readiness."""
        client = self._connect()
        try:
            if not await client.is_server_ready(client_timeout=PROBE_TIMEOUT_S):
                return False
            for name in self._models:
                if not await client.is_model_ready(name, client_timeout=PROBE_TIMEOUT_S):
                    return False
        except InferenceServerException:
            return False
        self._refresh_soon()
        return True

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _connect(self) -> grpcaio.InferenceServerClient:
        if self._client is None:
            self._client = grpcaio.InferenceServerClient(self._settings.triton_url, channel_args=CHANNEL_ARGS)
        return self._client

    def _refresh_soon(self, force: bool = False) -> None:
        """Start a background re-read of the served models unless one runs or the last one is recent."""
        if self._refresh is not None and not self._refresh.done():
            return
        interval = self._settings.watch_interval_s
        if force or (interval and time.monotonic() - self._refreshed_at >= interval):
            self._refreshed_at = time.monotonic()
            self._refresh = asyncio.create_task(self._reread_models())

    async def _reread_models(self) -> None:
        """Re-read every served model, and take up a model that Triton has loaded since (unless the
        gateway serves only its configured default model)."""
        client = self._connect()
        models = dict(self._models)
        for name in self._models.keys() | await self._newly_ready(client):
            try:
                metadata = await client.get_model_metadata(name, client_timeout=PROBE_TIMEOUT_S)
                config = await client.get_model_config(name, headers=_key_headers(self._settings),
                                                       client_timeout=PROBE_TIMEOUT_S)
                models[name] = _describe(metadata, config, self._settings.triton_url)
            except (InferenceServerException, InputError) as error:
                log.warning("model %s: %s, re-reading it failed: %s", name,
                            f"keeping version {self._models[name].version}" if name in self._models
                            else "not served", error)
        for name, model in models.items():
            if name not in self._models:
                log.info("model %s: triton serves it now (version %s), a new model", name, model.version)
                continue
            was = self._models[name].version
            if int(model.version) < int(was):
                log.warning("model %s: version %s disappeared, triton rolled back to version %s", name, was,
                            model.version)
            elif model.version != was:
                log.info("model %s: triton serves version %s (was %s)", name, model.version, was)
        self._models = models


    async def _newly_ready(self, client: grpcaio.InferenceServerClient) -> set[str]:
        """READY models of Triton's repository that the gateway does not serve yet."""
        if self._settings.default_model:
            return set()
        try:
            index = await client.get_model_repository_index(headers=_key_headers(self._settings),
                                                            client_timeout=PROBE_TIMEOUT_S)
        except InferenceServerException as error:
            log.warning("triton's repository index could not be read: %s", error)
            return set()
        return {model.name for model in index.models if model.state == "READY"} - self._models.keys()


def _wait_for_models(client: grpcclient.InferenceServerClient, settings: Settings) -> list[str]:
    """The names of the models to serve, once Triton is ready and has them loaded."""
    deadline = time.monotonic() + settings.triton_startup_timeout_s
    problem = "not ready"
    while True:
        try:
            if client.is_server_ready(client_timeout=PROBE_TIMEOUT_S):
                index = client.get_model_repository_index(headers=_key_headers(settings),
                                                          client_timeout=PROBE_TIMEOUT_S)
                ready = sorted({model.name for model in index.models if model.state == "READY"})
                wanted = [settings.default_model] if settings.default_model else ready
                if wanted and set(wanted) <= set(ready):
                    return wanted
                problem = (f"model {settings.default_model!r} is not loaded" if settings.default_model
                           else "no model is loaded") + f" (ready: {ready}; load one with `occ publish "
                problem += "--triton-url` or tritonserver --load-model)"
        except InferenceServerException as error:
            problem = f"does not answer ({error.message()})"
            if "restricted" in error.message():
                problem = (f"refuses its model-control API ({error.message()}): set {TRITON_KEY_ENV} to the "
                           "key Triton was started with")
        if time.monotonic() >= deadline:
            raise InputError(f"--triton-url {settings.triton_url}: {problem} after "
                             f"{settings.triton_startup_timeout_s:.0f} s")
        time.sleep(0.2)


def _key_headers(settings: Settings) -> dict[str, str] | None:
    """Headers of Triton's restricted calls (model config, repository index): the key, where one is set."""
    return grpc_headers(None if settings.triton_key is None else settings.triton_key.get_secret_value())


def _describe(
    metadata: service_pb2.ModelMetadataResponse, config: service_pb2.ModelConfigResponse, url: str
) -> ServedModel:
    """The ServedModel of Triton's metadata and config; InputError if it breaks the model contract."""
    source = f"triton {url} model {metadata.name!r}"
    if config.config.max_batch_size < 1:
        raise InputError(f"{source}: max_batch_size {config.config.max_batch_size}, but the gateway "
                         "sends a batch dimension")
    parameters = {key: value.string_value for key, value in config.config.parameters.items()}
    versions = tuple(sorted(metadata.versions, key=int))
    if not versions:
        raise InputError(f"{source}: no version is ready")
    model = ServedModel.described(metadata.name, versions[-1], versions, parameters, source)
    inputs = {tensor.name: tensor for tensor in metadata.inputs}
    outputs = {tensor.name: tensor for tensor in metadata.outputs}
    served_types = {name: tensor.datatype for name, tensor in inputs.items()}
    served_outputs = {name: tensor.datatype for name, tensor in outputs.items()}
    sent, read = _datatypes(model)
    if served_types != sent or any(served_outputs.get(name) != datatype for name, datatype in read.items()):
        raise InputError(f"{source}: inputs {served_types} and outputs {served_outputs} do not match what "
                         f"the gateway sends ({sent}) and reads ({read}); re-export the model")
    image_shape = tuple(inputs[contract.IMAGES].shape)  # [-1, 6, 3, H, W]
    if image_shape[-2:] != model.input_size:
        raise InputError(f"{source}: images of shape {list(image_shape)}, but occ.input_size is "
                         f"{list(model.input_size)}")
    return model


def _datatypes(model: ServedModel) -> tuple[dict[str, str], dict[str, str]]:
    """The Triton datatypes of what the gateway sends a model and reads from it."""
    sent, read = dict(SENT_DATATYPES), {contract.SEMANTICS: SEMANTICS_DATATYPE}
    if model.temporal:
        sent |= TEMPORAL_DATATYPES
        for tensor in model.state:
            sent[tensor.name] = read[tensor.output] = np_to_triton_dtype(np.dtype(tensor.dtype))
    return sent, read


def _infer_input(name: str, array: np.ndarray) -> grpcaio.InferInput:
    """One input as raw bytes (gRPC raw_input_contents): never a JSON list of numbers."""
    array = np.ascontiguousarray(array)
    tensor = grpcaio.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor
