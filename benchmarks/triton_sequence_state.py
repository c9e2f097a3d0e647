"""Temporal models' state on the local CPU Triton: can the sequence batcher keep it (implicit state), and
what does sending it with every request (explicit state, the gateway's way) cost?

1. Implicit state: a python-backend model `counter` with `sequence_batching { state [...] }` adds its input
   to the state it is given and returns the sum as its output and its output state; three requests of one
   sequence show whether Triton fed the returned state back (1, 2, 3) or the initial one each time (1, 1, 1).
2. Explicit state: a python-backend model `echo` returns the state tensor it was sent, as the gateway's
   temporal models return their next state; the round trip per request (gRPC in and out on loopback, the
   python stub's shared memory both ways) for no state, the state of demo-tiny-4d-stereo (3.8 MiB) and of
   the ResNet-50 4D-Stereo configs (75 MiB; docs/temporal_design.md section 7).

The server is `occ triton-local`'s (nvidia-pytriton's tritonserver, which has only the python backend).

Run: `.venv/bin/python -m benchmarks.triton_sequence_state [--repeats 5]`
"""

import argparse
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from benchmarks.http_predict import load_average
from benchmarks.timing import markdown_table, report_header
from clients.local_gateway import free_port
from service.triton_local import TritonLocal

STATE_SIZES_MIB = {"no state": 0.0, "demo-tiny-4d-stereo": 3.80, "R50 4D-Stereo (256 x 704)": 74.9}

COUNTER_CONFIG = """
name: "counter"
backend: "python"
max_batch_size: 1
input [ { name: "INPUT", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "OUTPUT", data_type: TYPE_FP32, dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 60000000
  state [ { input_name: "INPUT_STATE", output_name: "OUTPUT_STATE", data_type: TYPE_FP32, dims: [ 1 ],
            initial_state: { data_type: TYPE_FP32, dims: [ 1 ], zero_data: true, name: "zero" } } ]
}
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""
COUNTER_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            total = (pb_utils.get_input_tensor_by_name(request, "INPUT_STATE").as_numpy()
                     + pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy())
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT", total), pb_utils.Tensor("OUTPUT_STATE", total)]))
        return responses
'''
ECHO_CONFIG = """
name: "echo"
backend: "python"
max_batch_size: 1
input [ { name: "state", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "next_state", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""
ECHO_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "next_state", pb_utils.get_input_tensor_by_name(request, "state").as_numpy())])
            for request in requests]
'''


def write_repository(root: Path) -> None:
    models = (("counter", COUNTER_CONFIG, COUNTER_MODEL), ("echo", ECHO_CONFIG, ECHO_MODEL))
    for name, config, model in models:
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(textwrap.dedent(config).lstrip())
        (root / name / "1" / "model.py").write_text(textwrap.dedent(model).lstrip())


def implicit_state(client) -> list[float]:
    """OUTPUT of three requests of one sequence, each sending 1."""
    import tritonclient.grpc as grpcclient

    outputs = []
    for index in range(3):
        tensor = grpcclient.InferInput("INPUT", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 1), np.float32))
        result = client.infer("counter", [tensor], sequence_id=7, sequence_start=index == 0,
                              sequence_end=index == 2)
        outputs.append(float(result.as_numpy("OUTPUT")[0, 0]))
    return outputs


def explicit_round_trip(client, mib: float, repeats: int) -> list[float]:
    """Seconds per request that sends a state of `mib` MiB and gets it back."""
    import tritonclient.grpc as grpcclient

    state = np.random.default_rng(0).random((1, max(1, round(mib * 2**20 / 4))), dtype=np.float32)
    seconds = []
    for _ in range(repeats + 1):  # the first is a warm-up
        tensor = grpcclient.InferInput("state", list(state.shape), "FP32")
        tensor.set_data_from_numpy(state)
        started = time.perf_counter()
        result = client.infer("echo", [tensor], outputs=[grpcclient.InferRequestedOutput("next_state")])
        returned = result.as_numpy("next_state")
        seconds.append(time.perf_counter() - started)
        assert returned.shape == state.shape
    return seconds[1:]


def main() -> None:
    import tritonclient.grpc as grpcclient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load_at_start = load_average()
    with tempfile.TemporaryDirectory() as scratch:
        write_repository(Path(scratch))
        ports = [free_port() for _ in range(3)]
        server = TritonLocal(Path(scratch), http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                             load_models=("counter", "echo"), exit_timeout_s=1)
        server.start()
        try:
            server.wait_ready(timeout_s=120)
            client = grpcclient.InferenceServerClient(server.grpc_url, channel_args=[
                ("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)])
            version = client.get_server_metadata().version
            counted = implicit_state(client)
            rows = [[name, f"{mib:.1f}", f"{1000 * statistics.median(times):.1f}",
                     f"{1000 * min(times):.1f}"]
                    for name, mib in STATE_SIZES_MIB.items()
                    for times in [explicit_round_trip(client, mib, args.repeats)]]
        finally:
            server.kill()
    print(f"## Sequence state on the local CPU Triton (tritonserver {version}, python backend)\n")
    print("\n".join(report_header(load_at_start)))
    advanced = counted == [1.0, 2.0, 3.0]
    print(f"\nImplicit state: three requests of one sequence, each adding 1 to the state it is given, "
          f"answered {counted}: Triton {'fed back' if advanced else 'did NOT feed back'} the state the model "
          "returned.\n")
    print(f"Explicit state, request and answer both carrying it (median and best of {args.repeats}):\n")
    print(markdown_table(["state", "MiB", "median ms", "best ms"], rows))


if __name__ == "__main__":
    main()
