"""benchmarks/gpu.py in its CPU mode, so the GPU benchmark cannot rot between the sessions that have a GPU."""

import json

from tiny_dataset import MICRO_CONFIG

from benchmarks import gpu
from training.models.configs import CONFIGS


def test_tiny_mode_gives_every_row_a_number_or_a_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(CONFIGS, MICRO_CONFIG.name, MICRO_CONFIG)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--tiny", "--configs", MICRO_CONFIG.name, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {row["runtime"]: row for row in report["rows"]}
    assert {"eager FP32", "eager FP16 autocast", "CUDA graph FP16", "torch.compile FP16",
            "ORT CPU provider FP32", "ORT TensorRT provider FP16"} == set(rows)
    for row in report["rows"]:
        measured = row["latency_ms"] is not None and row["throughput_fps"] is not None
        assert measured != (row["reason"] is not None), row
    assert rows["eager FP32"]["latency_ms"] > 0 and rows["ORT CPU provider FP32"]["throughput_fps"] > 0
    assert rows["CUDA graph FP16"]["reason"] == "needs CUDA"
    assert report["device"].startswith("CPU")
    printed = capsys.readouterr().out
    assert printed.startswith("## CPU") and "| test-micro | eager FP32 |" in printed


def test_full_size_configs_are_the_reference_ones_and_a_broken_one_is_a_reason(monkeypatch):
    names = gpu.full_size_configs()
    assert "flashocc-r50-256x704" in names and "demo-tiny" not in names

    def unbuildable(config):
        raise NotImplementedError("temporal")

    monkeypatch.setattr(gpu, "build_model", unbuildable)
    plan = gpu.Plan(device=gpu.torch.device("cpu"), repeats=1, batch=1, budget_s=60, compile=False,
                    started=gpu.time.perf_counter())
    (row,) = gpu.bench_config(names[0], plan, folder=None)
    assert (row.runtime, row.reason) == ("build", "NotImplementedError: temporal")


def test_without_cuda_the_full_run_says_so(capsys):
    if gpu.torch.cuda.is_available():
        return  # on a GPU machine the full run is the real benchmark, minutes long
    assert gpu.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
