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
from training.export.rig import nuscenes_like_batch, nuscenes_like_drive
from training.models.bev_pool import export_target
from training.models.configs import ModelConfig
from training.models.occupancy_model import OccupancyModel
from training.models.temporal import StreamState

DEFAULT_OPSET = 17  # ScatterElements gained `reduction` in opset 16
MIN_OPSET = 16
BATCH_AXIS = "batch"
# Parity of ONNX Runtime FP32 against PyTorch: argmax agreement over all voxels, and the largest
# differences of logits and BEV feature relative to their largest values (sums run in another order).
MIN_ARGMAX_AGREEMENT = 0.999
MAX_RELATIVE_DIFF = 1e-3
MAX_BEV_CELLS_DIFFERING = 1e-3  # fraction of BEV cells, for points on cell boundaries (see Parity)
# Every temporal config trains on keyframes 0.5 s apart: nuScenes' 2 Hz samples and the synthetic world's
# (training/data/synth/world.py FRAME_INTERVAL_S); the served model says so (occ.frame_gap_s).
TRAINED_FRAME_GAP_S = 0.5
PARITY_FRAMES = 3  # a temporal model's parity runs a cold start, the second frame and a steady one
MAX_STATE_ELEMENTS_DIFFERING = 1e-2  # fraction of the state's elements (see SequenceParity)


def contract_batch(images: Tensor, intrinsics: Tensor, sensor2ego: Tensor, post_rots: Tensor,
                   post_trans: Tensor) -> CameraBatch:
    """The CameraBatch of the contract's frame inputs: images normalised as the reference, no BEV flips."""
    bda = torch.eye(3, dtype=intrinsics.dtype, device=intrinsics.device).expand(images.shape[0], 3, 3)
    return CameraBatch(normalize_images(images), intrinsics, sensor2ego, post_rots, post_trans, bda)


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
        """B x X x Y x Z x classes scores whose argmax is the class (the logits of most heads)."""
        batch = contract_batch(images, intrinsics, sensor2ego, post_rots, post_trans)
        return self.model.scores(self.model(batch))

    def forward(self, images: Tensor, intrinsics: Tensor, sensor2ego: Tensor, post_rots: Tensor,
                post_trans: Tensor) -> Tensor:
        return self.logits(images, intrinsics, sensor2ego, post_rots, post_trans).argmax(-1).to(torch.uint8)


class TemporalExportModel(nn.Module):
    """A BEVStereo4D model (training/models/temporal.py) behind the temporal contract: a sequence's frame.

    Inputs: ExportModel's, then prev_sensor2ego B x 6 x 4 x 4 (float32), history B x 1 (int32) and the state
    (occupancy.model_contract STATE_NAMES, B x 6 x ...). Outputs: semantics uint8 B x X x Y x Z, then this
    frame's state (`next_state` names, the same shapes).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, intrinsics: Tensor, sensor2ego: Tensor, post_rots: Tensor,
                post_trans: Tensor, prev_sensor2ego: Tensor, history: Tensor, state_stereo: Tensor,
                state_reduced: Tensor, state_cost: Tensor) -> tuple[Tensor, ...]:
        output, state = self._step(images, intrinsics, sensor2ego, post_rots, post_trans, prev_sensor2ego,
                                   history, state_stereo, state_reduced, state_cost)
        return self.model.scores(output).argmax(-1).to(torch.uint8), *state

    def logits_and_state(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """The scores the classes are the argmax of (logits, a RenderOcc head's scores), then the state."""
        output, state = self._step(*inputs)
        return self.model.scores(output), *state

    def _step(self, images: Tensor, intrinsics: Tensor, sensor2ego: Tensor, post_rots: Tensor,
              post_trans: Tensor, prev_sensor2ego: Tensor, history: Tensor, state_stereo: Tensor,
              state_reduced: Tensor, state_cost: Tensor):
        """The head's output and this frame's state tensors (B x N x ...)."""
        b, n = images.shape[:2]
        frames = history[:, 0].long()
        state = StreamState(state_stereo.flatten(0, 1), state_reduced.flatten(0, 1), state_cost.flatten(0, 1),
                            frames)
        bev, _, new = self.model.stream_step(contract_batch(images, intrinsics, sensor2ego, post_rots,
                                                            post_trans), prev_sensor2ego, frames, state)
        return self.model.head(bev), tuple(tensor.view(b, n, *tensor.shape[1:])
                                           for tensor in (new.stereo, new.reduced, new.cost))


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


def sequence_inputs(config: ModelConfig, state: tuple[contract.StateTensor, ...], frames: int = PARITY_FRAMES,
                    seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Frames of a drive through the nuScenes-like rig (training/export/rig.py `nuscenes_like_drive`) as
    temporal contract inputs, with random uint8 images, `history` as a sequence's frames have it and
    zero state tensors of the shapes `state` gives (each frame's run replaces them with the last frame's)."""
    frames_inputs = []
    for index, frame in enumerate(nuscenes_like_drive(config.input_size, frames, seed)):
        rng = np.random.default_rng((seed, index))
        inputs = {
            contract.IMAGES: rng.integers(0, 256, frame.images.shape, dtype=np.uint8),
            contract.INTRINSICS: frame.intrinsics.numpy(),
            contract.SENSOR2EGO: frame.sensor2ego.numpy(),
            contract.POST_ROTS: frame.post_rots.numpy(),
            contract.POST_TRANS: frame.post_trans.numpy(),
            contract.PREV_SENSOR2EGO: frame.history.sensor2keyego[:, 0].numpy(),
            contract.HISTORY: np.full((1, 1), min(index, contract.MAX_HISTORY), contract.HISTORY_DTYPE),
        }
        frames_inputs.append(inputs | contract.zero_state(state))
    return frames_inputs


def state_tensors(model: nn.Module, config: ModelConfig) -> tuple[contract.StateTensor, ...]:
    """The state a temporal model leaves after a frame, with its shapes (from a cold start on the rig)."""
    frame = {name: torch.from_numpy(value) for name, value in sample_inputs(config).items()}
    with torch.no_grad():
        _, _, state = model.stream_step(contract_batch(*(frame[name] for name in contract.INPUT_NAMES)),
                                        frame[contract.SENSOR2EGO], torch.zeros(1, dtype=torch.long), None)
    cameras = frame[contract.IMAGES].shape[1]
    return tuple(contract.StateTensor(name, (cameras, *tensor.shape[1:]))
                 for name, tensor in zip(contract.STATE_NAMES, (state.stereo, state.reduced, state.cost),
                                         strict=True))


def metadata(config: ModelConfig, state: tuple[contract.StateTensor, ...] = ()) -> ModelMetadata:
    """What the exported graph says about itself in its metadata_props (the gateway and Triton configs
    read them); temporal models also their state, trained frame gap and test path."""
    grid = config.grid
    temporal = {}
    if config.temporal:
        aavt = config.temporal.align_after_view_transformation
        temporal = {"state": state, "frame_gap_s": TRAINED_FRAME_GAP_S,
                    "test_path": contract.TEST_PATHS[1] if aavt else contract.TEST_PATHS[0]}
    return ModelMetadata(config=config.name, input_size=tuple(config.input_size), grid_shape=grid.shape,
                         range_m=tuple(grid.range_m), voxel_size_m=(grid.voxel_size,) * 3,
                         classes=tuple(CLASS_NAMES), temporal=bool(config.temporal), **temporal)


def export_onnx(model: nn.Module, config: ModelConfig, path: Path, opset: int = DEFAULT_OPSET,
                runtime: Runtime = Runtime.ONNXRUNTIME) -> Path:
    """Export `model` (eval mode) behind the contract to `path`, with a dynamic batch axis and metadata;
    the graph gets the BEV pooling formulation of `runtime`. A temporal config's model is exported one frame
    at a time (TemporalExportModel), its state tensors named and sized in the metadata."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: the pooling needs ScatterElements with reduction (opset >= 16)")
    if config.temporal:
        described = metadata(config, state_tensors(model, config))
        wrapper: nn.Module = TemporalExportModel(model).eval()
        inputs = sequence_inputs(config, described.state, frames=1)[0]
    else:
        described = metadata(config)
        wrapper = ExportModel(model).eval()
        inputs = sample_inputs(config)
    example = tuple(torch.from_numpy(inputs[name]) for name in described.input_names)
    axes = {name: {0: BATCH_AXIS} for name in (*described.input_names, *described.output_names)}
    buffer = io.BytesIO()
    with torch.no_grad(), export_target(runtime):
        torch.onnx.export(wrapper, example, buffer, input_names=list(described.input_names),
                          output_names=list(described.output_names), dynamic_axes=axes, opset_version=opset,
                          dynamo=False, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    _fix_output_shapes(proto, {contract.SEMANTICS: config.grid.shape,
                               **{tensor.output: tensor.shape for tensor in described.state}})
    onnx.helper.set_model_props(proto, described.to_props())
    proto.doc_string = f"{config.name}: {config.description} (BEV pooling for {runtime.graph})"
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def _fix_output_shapes(proto, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Declare the outputs' shapes after the batch ([batch, X, Y, Z] for semantics): the exporter leaves
    some symbolic (they come from Shape ops), but Triton configs and clients want them fixed."""
    for output in proto.graph.output:
        dims = output.type.tensor_type.shape.dim
        for dim, size in zip(dims[1:], shapes[output.name], strict=True):
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
    input) and the BEV feature (the BEV encoder's input: the view transformer's output, or for temporal
    models the two frames' features it fuses).

    The check then runs the very graph that is served, instead of a second export that could differ.
    """
    import onnx

    proto = onnx.load(str(onnx_path))
    (argmax,) = [node for node in proto.graph.node if node.op_type == "ArgMax"]
    inside = [node for node in proto.graph.node if _BEV_ENCODER_SCOPE in node.name]
    produced_inside = {out for node in inside for out in node.output}
    (bev,) = {name for node in inside for name in node.input
              if name in _input_dependent(proto) and name not in produced_inside}
    for name in (argmax.input[0], bev):
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return proto.SerializeToString(), argmax.input[0], bev


def _input_dependent(proto) -> set[str]:
    """The tensors of a graph that depend on its inputs (not weights, nor what is folded from them)."""
    dependent = {value.name for value in proto.graph.input}
    for node in proto.graph.node:  # topologically sorted, as ONNX requires
        if dependent.intersection(node.input):
            dependent.update(node.output)
    return dependent


# Node names of the TorchScript exporter are module paths (`/model/...`, or `/...` below a method called
# directly, as the temporal wrapper calls `stream_step`).
_BEV_ENCODER_SCOPE = "/img_bev_encoder_backbone/"


class _Instrumented:
    """The exported graph in ONNX Runtime (CPU, FP32) with its logits and BEV feature as outputs too."""

    def __init__(self, onnx_path: Path) -> None:
        import onnxruntime as ort

        graph, self.logits_name, self.bev_name = instrumented_model(onnx_path)
        self.session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])

    def run(self, outputs: list[str], inputs: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], float]:
        """`outputs`, then the logits and the BEV feature, and the seconds taken."""
        started = time.perf_counter()
        values = self.session.run([*outputs, self.logits_name, self.bev_name], dict(inputs))
        return values, time.perf_counter() - started


def _torch_run(model: nn.Module, forward) -> tuple[object, np.ndarray, float]:
    """`forward()` without gradients, the BEV encoder's input it computed (what `_Instrumented` reads from
    the graph) and the seconds taken."""
    seen: list[Tensor] = []
    hook = model.img_bev_encoder_backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    started = time.perf_counter()
    try:
        with torch.no_grad():
            result = forward()
    finally:
        hook.remove()
    return result, seen[0].numpy(), time.perf_counter() - started


def _compare(semantics: np.ndarray, onnx_logits: np.ndarray, torch_logits: np.ndarray, onnx_bev: np.ndarray,
             torch_bev: np.ndarray, seconds_onnx: float, seconds_torch: float) -> Parity:
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


def check_parity(model: OccupancyModel, onnx_path: Path, inputs: Mapping[str, np.ndarray]) -> Parity:
    """Run the exported graph (ONNX Runtime, CPU, FP32) and the PyTorch model on `inputs` and compare."""
    onnx_run = _Instrumented(onnx_path)
    (semantics, onnx_logits, onnx_bev), seconds_onnx = onnx_run.run([contract.SEMANTICS], inputs)
    frame = [torch.from_numpy(inputs[name]) for name in contract.INPUT_NAMES]
    wrapper = ExportModel(model).eval()
    torch_logits, torch_bev, seconds_torch = _torch_run(model, lambda: wrapper.logits(*frame).numpy())
    return _compare(semantics, onnx_logits, torch_logits, onnx_bev, torch_bev, seconds_onnx, seconds_torch)


@dataclass(frozen=True)
class SequenceParity:
    """A temporal model's parity over a sequence: each frame's Parity, ONNX Runtime chained on its own state
    and PyTorch on its own, and how the state tensors compare.

    An element of a state differs when it is off by more than MAX_RELATIVE_DIFF of its tensor's largest
    value. The cost volume is allowed a few such elements: the reference biases a depth hypothesis whose
    warped feature is exactly 0 (stereo.cost_volume), and where the feature is 0 around a sample, a grid
    point a rounding error away decides whether the sample is exactly 0 or not, which moves that pixel's
    softmax by a lot. (A camera that has not moved, as at a cold start, no longer contributes: its cost
    volume is the exact uniform one, stereo.LSSViewTransformerBEVStereo.stereo_cost.) A wrong matching or
    pose changes most elements.
    """

    frames: tuple[Parity, ...]
    max_relative_state_diff: float
    state_elements_differing: int
    state_elements: int

    @property
    def ok(self) -> bool:
        return (all(frame.ok for frame in self.frames)
                and self.state_elements_differing <= MAX_STATE_ELEMENTS_DIFFERING * self.state_elements)

    def summary(self) -> str:
        lines = [f"sequence parity {'ok' if self.ok else 'FAILED'} over {len(self.frames)} frames (history "
                 f"0, 1, 2...): state elements differing {self.state_elements_differing} of "
                 f"{self.state_elements} (largest difference {self.max_relative_state_diff:.3g} of its "
                 "tensor's largest value)"]
        lines += [f"  frame {index}: {frame.summary()}" for index, frame in enumerate(self.frames)]
        return "\n".join(lines)


def check_sequence_parity(model: nn.Module, onnx_path: Path, frames: list[dict[str, np.ndarray]],
                          ) -> SequenceParity:
    """Stream `frames` (`sequence_inputs`) through the exported graph and through PyTorch's `stream_step`
    (which equals the offline three-frame forward), each fed the state it returned for the frame before."""
    metadata_ = ModelMetadata.from_props(_props(onnx_path), str(onnx_path))
    onnx_run, wrapper = _Instrumented(onnx_path), TemporalExportModel(model).eval()
    outputs = [contract.SEMANTICS, *(tensor.output for tensor in metadata_.state)]
    onnx_state = torch_state = {}
    results, worst, differing, elements = [], 0.0, 0, 0
    for frame in frames:
        (semantics, *onnx_next, onnx_logits, onnx_bev), seconds_onnx = onnx_run.run(outputs,
                                                                                     frame | onnx_state)
        feeds = [torch.from_numpy((frame | torch_state)[name]) for name in metadata_.input_names]
        (torch_logits, *torch_next), torch_bev, seconds_torch = _torch_run(
            model, lambda feeds=feeds: wrapper.logits_and_state(*feeds))
        torch_logits, torch_next = torch_logits.numpy(), [tensor.numpy() for tensor in torch_next]
        for from_onnx, from_torch in zip(onnx_next, torch_next, strict=True):
            scale = max(float(np.abs(from_torch).max()), 1e-12)
            relative = np.abs(from_onnx - from_torch) / scale
            worst = max(worst, float(relative.max()))
            differing += int((relative > MAX_RELATIVE_DIFF).sum())
            elements += relative.size
        results.append(_compare(semantics, onnx_logits, torch_logits, onnx_bev, torch_bev, seconds_onnx,
                                seconds_torch))
        onnx_state = {tensor.name: value for tensor, value in zip(metadata_.state, onnx_next, strict=True)}
        torch_state = {tensor.name: value for tensor, value in zip(metadata_.state, torch_next, strict=True)}
    return SequenceParity(tuple(results), worst, differing, elements)


def _props(onnx_path: Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}
