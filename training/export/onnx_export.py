"""The exported model: OccupancyModel behind the model contract, its ONNX export and its parity check.

The graph (occupancy.model_contract) takes uint8 B, G, R images (the reference's channel order) and the
calibration tensors, normalises the images as the reference does, runs the camera geometry and the BEV
pooling and returns the argmax class per voxel as uint8, so 640 KB per frame leave the model instead
of 46 MB of logits. The pooling's formulation
depends on the runtime the graph is for (training/models/bev_pool.py `export_target`): ONNX Runtime
gets a sort + prefix-sum form, TensorRT one ScatterElements(reduction=add); both are exact on the
duplicate indices of real frustums. The batch axis is dynamic; the BEV augmentation is the
identity. Exported with PyTorch's TorchScript-based exporter (`dynamo=False`), which handles the
geometry and the scatter.
"""

import io
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from occupancy import model_contract as contract
from occupancy.classes import CLASS_NAMES
from occupancy.model_contract import ModelMetadata
from occupancy.model_repository import Runtime
from training.batch import CameraBatch
from training.data.dataset import normalize_images
from training.export.rig import nuscenes_like_batch
from training.models.bev_pool import export_target
from training.models.configs import ModelConfig
from training.models.occupancy_model import OccupancyModel

DEFAULT_OPSET = 17  # ScatterElements gained `reduction` in opset 16
MIN_OPSET = 16
BATCH_AXIS = "batch"
# Parity of ONNX Runtime FP32 against PyTorch: argmax agreement over all voxels, and the largest
# differences of logits and BEV feature relative to their largest values (sums run in another order).
MIN_ARGMAX_AGREEMENT = 0.999
MAX_RELATIVE_DIFF = 1e-3
MAX_BEV_CELLS_DIFFERING = 1e-3  # fraction of BEV cells, for points on cell boundaries (see Parity)


class ExportModel(nn.Module):
    """OccupancyModel with the contract's inputs and output.

    Inputs: images uint8 B x 6 x 3 x H x W, channels B, G, R; intrinsics B x 6 x 3 x 3; sensor2ego
    B x 6 x 4 x 4; post_rots B x 6 x 3 x 3; post_trans B x 6 x 3 (float32). Output: semantics uint8
    B x X x Y x Z.
    """

    def __init__(self, model: OccupancyModel) -> None:
        super().__init__()
        self.model = model

    def logits(self, images: Tensor, intrinsics: Tensor, sensor2ego: Tensor, post_rots: Tensor,
               post_trans: Tensor) -> Tensor:
        """B x X x Y x Z x classes, what `forward` takes the argmax of."""
        normalised = normalize_images(images)
        bda = torch.eye(3, dtype=intrinsics.dtype, device=intrinsics.device).expand(images.shape[0], 3, 3)
        return self.model(CameraBatch(normalised, intrinsics, sensor2ego, post_rots, post_trans, bda))

    def forward(self, images: Tensor, intrinsics: Tensor, sensor2ego: Tensor, post_rots: Tensor,
                post_trans: Tensor) -> Tensor:
        return self.logits(images, intrinsics, sensor2ego, post_rots, post_trans).argmax(-1).to(torch.uint8)


def sample_inputs(config: ModelConfig, batch_size: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A frame of the nuScenes-like rig (training/export/rig.py) as contract inputs, with random uint8
    images: realistic geometry, so the pooling sees the duplicate-heavy indices of real frustums."""
    batch = nuscenes_like_batch(config.input_size, batch_size, seed)
    rng = np.random.default_rng(seed)
    return {
        contract.IMAGES: rng.integers(0, 256, batch.images.shape, dtype=np.uint8),
        contract.INTRINSICS: batch.intrinsics.numpy(),
        contract.SENSOR2EGO: batch.sensor2ego.numpy(),
        contract.POST_ROTS: batch.post_rots.numpy(),
        contract.POST_TRANS: batch.post_trans.numpy(),
    }


def metadata(config: ModelConfig) -> ModelMetadata:
    """What the exported graph says about itself in its metadata_props (the gateway and Triton configs
    read them)."""
    grid = config.grid
    return ModelMetadata(config=config.name, input_size=tuple(config.input_size), grid_shape=grid.shape,
                         range_m=tuple(grid.range_m), voxel_size_m=(grid.voxel_size,) * 3,
                         classes=tuple(CLASS_NAMES), temporal=False)


def export_onnx(model: OccupancyModel, config: ModelConfig, path: Path, opset: int = DEFAULT_OPSET,
                runtime: Runtime = Runtime.ONNXRUNTIME) -> Path:
    """Export `model` (eval mode) behind the contract to `path`, with a dynamic batch axis and metadata;
    the graph gets the BEV pooling formulation of `runtime`."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: the pooling needs ScatterElements with reduction (opset >= 16)")
    wrapper = ExportModel(model).eval()
    inputs = sample_inputs(config)
    example = tuple(torch.from_numpy(inputs[name]) for name in contract.INPUT_NAMES)
    axes = {name: {0: BATCH_AXIS} for name in (*contract.INPUT_NAMES, *contract.OUTPUT_NAMES)}
    buffer = io.BytesIO()
    with torch.no_grad(), export_target(runtime):
        torch.onnx.export(wrapper, example, buffer, input_names=list(contract.INPUT_NAMES),
                          output_names=list(contract.OUTPUT_NAMES), dynamic_axes=axes, opset_version=opset,
                          dynamo=False, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    _fix_output_shape(proto, (*config.grid.shape,))
    onnx.helper.set_model_props(proto, metadata(config).to_props())
    proto.doc_string = f"{config.name}: {config.description} (BEV pooling for {runtime.graph})"
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def _fix_output_shape(proto, grid_shape: tuple[int, ...]) -> None:
    """Declare semantics as [batch, X, Y, Z]: the exporter leaves X and Y symbolic (they come from Shape
    ops), but Triton configs and clients want the fixed grid."""
    (output,) = proto.graph.output
    dims = output.type.tensor_type.shape.dim
    for dim, size in zip(dims[1:], grid_shape, strict=True):
        dim.Clear()
        dim.dim_value = size


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime FP32 against PyTorch on one input batch.

    Untrained weights give logits that hardly depend on the input, so the BEV feature (the view
    transformer's output: camera geometry + pooling) is compared too, cell by cell: a cell differs
    when any channel differs by more than MAX_RELATIVE_DIFF of the largest value. A frustum point
    within float rounding of a cell boundary may land on either side (geometry computed in another
    order), which moves its share between two neighbouring cells; a pooling or geometry bug changes
    many cells.
    """

    max_abs_logit_diff: float
    max_abs_logit: float
    max_abs_bev_diff: float
    max_abs_bev: float
    bev_cells_differing: int
    bev_cells: int
    argmax_agreement: float  # fraction of voxels with the same class
    voxels: int
    seconds_onnx: float  # ONNX Runtime's run, including the extra outputs
    seconds_torch: float

    @property
    def ok(self) -> bool:
        return (self.argmax_agreement >= MIN_ARGMAX_AGREEMENT
                and self.max_abs_logit_diff <= MAX_RELATIVE_DIFF * max(1.0, self.max_abs_logit)
                and self.bev_cells_differing <= MAX_BEV_CELLS_DIFFERING * self.bev_cells)

    def summary(self) -> str:
        return (f"parity {'ok' if self.ok else 'FAILED'}: max |logit diff| {self.max_abs_logit_diff:.3g} "
                f"(largest |logit| {self.max_abs_logit:.3g}), max |BEV feature diff| "
                f"{self.max_abs_bev_diff:.3g} (largest {self.max_abs_bev:.3g}; cells differing "
                f"{self.bev_cells_differing} of {self.bev_cells}), argmax agreement "
                f"{self.argmax_agreement:.4%} of {self.voxels} voxels "
                f"(ONNX Runtime {self.seconds_onnx:.2f} s, PyTorch {self.seconds_torch:.2f} s)")


def instrumented_model(onnx_path: Path) -> tuple[bytes, str, str]:
    """The exported graph with two more outputs, serialised, and their names: the logits (the ArgMax's
    input) and the BEV feature (the view transformer's output, read by the BEV encoder).

    The check then runs the very graph that is served, instead of a second export that could differ.
    """
    import onnx

    proto = onnx.load(str(onnx_path))
    (argmax,) = [node for node in proto.graph.node if node.op_type == "ArgMax"]
    produced_by_view = {out for node in proto.graph.node if node.name.startswith(_VIEW_SCOPE)
                        for out in node.output}
    (bev,) = {name for node in proto.graph.node if node.name.startswith(_BEV_ENCODER_SCOPE)
              for name in node.input if name in produced_by_view}
    for name in (argmax.input[0], bev):
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return proto.SerializeToString(), argmax.input[0], bev


_VIEW_SCOPE = "/model/img_view_transformer/"  # node names of the TorchScript exporter: module paths
_BEV_ENCODER_SCOPE = "/model/img_bev_encoder_backbone/"


def check_parity(model: OccupancyModel, onnx_path: Path, inputs: Mapping[str, np.ndarray]) -> Parity:
    """Run the exported graph (ONNX Runtime, CPU, FP32) and the PyTorch model on `inputs` and compare."""
    import onnxruntime as ort

    graph, logits_name, bev_name = instrumented_model(onnx_path)
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    semantics, onnx_logits, onnx_bev = session.run([contract.SEMANTICS, logits_name, bev_name], dict(inputs))
    seconds_onnx = time.perf_counter() - started
    captured: list[Tensor] = []
    hook = model.img_view_transformer.register_forward_hook(lambda _m, _i, out: captured.append(out[0]))
    started = time.perf_counter()
    try:
        with torch.no_grad():
            torch_logits = ExportModel(model).eval().logits(
                *(torch.from_numpy(inputs[name]) for name in contract.INPUT_NAMES)).numpy()
    finally:
        hook.remove()
    seconds_torch = time.perf_counter() - started
    torch_bev = captured[0].numpy()
    for what, from_onnx, from_torch in (("logits", onnx_logits, torch_logits), ("BEV", onnx_bev, torch_bev)):
        if from_onnx.shape != from_torch.shape:
            raise ValueError(f"{what} of shape {from_onnx.shape} from ONNX, {from_torch.shape} from PyTorch")
    bev_diff = np.abs(onnx_bev - torch_bev)
    max_abs_bev = float(np.abs(torch_bev).max())
    cell_diff = bev_diff.max(axis=1)  # B x [Z x] Y x X: the largest difference over the channels
    return Parity(
        max_abs_logit_diff=float(np.abs(onnx_logits - torch_logits).max()),
        max_abs_logit=float(np.abs(torch_logits).max()),
        max_abs_bev_diff=float(bev_diff.max()),
        max_abs_bev=max_abs_bev,
        bev_cells_differing=int((cell_diff > MAX_RELATIVE_DIFF * max_abs_bev).sum()),
        bev_cells=int(cell_diff.size),
        argmax_agreement=float((semantics == torch_logits.argmax(-1)).mean()),
        voxels=int(semantics.size),
        seconds_onnx=seconds_onnx,
        seconds_torch=seconds_torch,
    )
