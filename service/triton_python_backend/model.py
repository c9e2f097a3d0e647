"""Triton python-backend model: the exported model.onnx beside this file, run with ONNX Runtime on CPU.

Triton runs this file in its python stub process (one per model instance), not in the gateway, so it
imports nothing of the project: tensor names come from the model's config.pbtxt, and it needs only numpy
and onnxruntime in the stub's interpreter. Requests that dynamic batching hands over together run as one
batch (concatenated along the batch dimension) and are split again per request.

Parameters read from config.pbtxt (optional): `ort_intra_op_threads` (default: ONNX Runtime's choice).
"""

import itertools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input_names = [entry["name"] for entry in config["input"]]
        self.output_names = [entry["name"] for entry in config["output"]]
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        if "ort_intra_op_threads" in parameters:
            options.intra_op_num_threads = int(parameters["ort_intra_op_threads"])
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_FILE
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        """One response per request, in order; a request with bad inputs gets an error, the others run."""
        responses: list = [None] * len(requests)
        batch: list[tuple[int, dict[str, np.ndarray]]] = []
        for index, request in enumerate(requests):
            try:
                batch.append((index, self._inputs(request)))
            except ValueError as error:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
        if batch:
            try:
                outputs = self._run([feeds for _, feeds in batch])
                for (index, _), per_request in zip(batch, outputs, strict=True):
                    tensors = [pb_utils.Tensor(name, array) for name, array in per_request.items()]
                    responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            except Exception as error:  # a failed run answers every request of the batch, never hangs them
                for index, _ in batch:
                    responses[index] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"ONNX Runtime failed: {error}"))
        return responses

    def _inputs(self, request) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            feeds[name] = tensor.as_numpy()
        sizes = {array.shape[0] for array in feeds.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sorted(sizes)}")
        return feeds

    def _run(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run all requests as one batch; the outputs split back into per-request dicts."""
        sizes = [next(iter(feeds.values())).shape[0] for feeds in requests]
        joined = {name: np.concatenate([feeds[name] for feeds in requests]) for name in self.input_names}
        results = self.session.run(self.output_names, joined)
        bounds = np.cumsum([0, *sizes])
        return [
            {name: result[start:stop] for name, result in zip(self.output_names, results, strict=True)}
            for start, stop in itertools.pairwise(bounds)
        ]

    def finalize(self) -> None:
        self.session = None
