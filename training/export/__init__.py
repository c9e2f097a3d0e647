"""Export: the model behind the ONNX contract (onnx_export), a checked export artifact (artifact; placed
into the model repository by training/publish.py), Triton configs (triton_config) and TensorRT engines
(tensorrt).

Import the submodules themselves: this package imports nothing, so triton_config stays free of torch.
"""
