"""Inference backends: where the exported model runs (in-process ONNX Runtime now, Triton later)."""
