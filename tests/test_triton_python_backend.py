"""The python-backend model's execute(), with a stand-in for Triton's triton_python_backend_utils.

Batching requests together must give each request exactly what ONNX Runtime gives it alone, and a bad
request must get an error without failing the others. (test_triton_local.py runs it in a real Triton.)
"""

import importlib.util
import json
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest
from service_fixtures import write_python_model
from test_triton_config import tiny_frames, write_tiny_model

from occupancy import model_contract as contract
from training.export import triton_config


class _Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors, error


def _fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = _Response
    module.TritonError = str
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    return module


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    model_dir = write_python_model(tmp_path, "tiny", write_tiny_model(tmp_path / "tiny.onnx"),
                                   max_batch_size=8)
    spec = importlib.util.spec_from_file_location("occ_triton_model", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Triton passes the config as JSON in protobuf's field names; these are the fields model.py reads.
    signature = triton_config.read_signature(model_dir / "1" / "model.onnx")
    config = {"input": [{"name": s.name} for s in signature.inputs],
              "output": [{"name": s.name} for s in signature.outputs], "max_batch_size": 8,
              "parameters": {"ort_intra_op_threads": {"string_value": "1"}}}
    instance = module.TritonPythonModel()
    instance.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir),
                         "model_version": "1"})
    yield instance, model_dir / "1" / "model.onnx"
    instance.finalize()


def test_batched_requests_equal_separate_runs(model):
    instance, onnx_path = model
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    requests = [{n: _Tensor(n, a) for n, a in tiny_frames(b, rng).items()} for b in (1, 3, 2)]
    responses = instance.execute(requests)
    assert len(responses) == 3
    for request, response in zip(requests, responses, strict=True):
        assert response.error is None
        (tensor,) = response.output_tensors
        feeds = {name: t.as_numpy() for name, t in request.items()}
        expected = session.run([contract.SEMANTICS], feeds)[0]
        assert tensor.name() == contract.SEMANTICS
        assert tensor.as_numpy().dtype == np.uint8
        np.testing.assert_array_equal(tensor.as_numpy(), expected)
    # The frames differ, so their grids differ: a split in the wrong place would not go unnoticed.
    assert not np.array_equal(responses[0].output_tensors[0].as_numpy()[0],
                              responses[1].output_tensors[0].as_numpy()[0])


def test_bad_request_gets_an_error_and_the_others_run(model):
    instance, _ = model
    rng = np.random.default_rng(2)
    good = {n: _Tensor(n, a) for n, a in tiny_frames(1, rng).items()}
    missing = {n: t for n, t in good.items() if n != contract.POST_TRANS}
    two_frames = tiny_frames(2, rng)[contract.INTRINSICS]
    mixed = {**good, contract.INTRINSICS: _Tensor(contract.INTRINSICS, two_frames)}
    responses = instance.execute([missing, good, mixed])
    assert "post_trans" in responses[0].error
    assert "batch size" in responses[2].error
    assert responses[1].error is None
    assert responses[1].output_tensors[0].as_numpy().shape == (1, 200, 200, 16)
