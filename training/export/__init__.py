"""Export: the model behind the ONNX contract (onnx_export), a checked new version in the Triton model
repository (repository_export, `occ export`), Triton configs (triton_config) and TensorRT engines (tensorrt).

Import the submodules themselves: this package imports nothing, so triton_config stays free of torch.
"""
