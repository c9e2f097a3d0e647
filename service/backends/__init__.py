"""Inference backends: where the exported model runs (in-process ONNX Runtime, or Triton over gRPC)."""
