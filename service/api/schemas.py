"""Response bodies of the HTTP API (API.md), for validation-free building and for the OpenAPI description."""

from pydantic import BaseModel, Field

from service.backends.base import ServedModel
from service.core.sequences import RESETS


class ModelRef(BaseModel):
    name: str
    version: str


class GridInfo(BaseModel):
    shape: list[int] = Field(examples=[[200, 200, 16]])
    axes: str = "xyz"
    range_m: list[float]
    voxel_size_m: list[float]


class Occupancy(BaseModel):
    encoding: str = Field(description="`dense-uint8-zlib-base64` or `sparse`")
    data: str | None = Field(None, description="dense: uint8 [X, Y, Z] in C order, zlib, base64")
    voxels: list[list[int]] | None = Field(None, description="sparse: [x, y, z, class], non-free voxels")


class Timing(BaseModel):
    decode: float
    preprocess: float
    inference: float
    encode: float
    total: float


class Sequence(BaseModel):
    """A temporal model's frame within its sequence (docs/API.md "Temporal models")."""

    id: str
    frame_index: int = Field(description="frames of this sequence this replica answered before this one")
    history: int = Field(description="real past frames used (0: a cold start, 2: t-1 and t-2)")
    reset: str | None = Field(None, description=f"why a held sequence starts over: {', '.join(RESETS)}")
    gap_s: float | None = Field(None, description="seconds from the past frame used (t-1) to this one")


class PredictResponse(BaseModel):
    model: ModelRef
    grid: GridInfo
    classes: list[str]
    free_class: int
    occupancy: Occupancy
    timing_ms: Timing
    sequence: Sequence | None = Field(None, description="temporal models only")


class ModelDescription(BaseModel):
    name: str
    version: str = Field(description="the version served: the highest in the repository")
    versions: list[str]
    config: str
    input_size: list[int] = Field(description="[H, W] of the images the model takes")
    temporal: bool
    backend: str
    default: bool
    state_bytes: int | None = Field(None, description="temporal models: bytes of one frame's state")
    frame_gap_s: float | None = Field(None, description="temporal models: seconds between training frames")


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelDescription]


class Detail(BaseModel):
    """Every error answer: what went wrong, naming the field or part."""

    detail: str


def grid_info(model: ServedModel) -> GridInfo:
    return GridInfo(shape=list(model.grid_shape), range_m=list(model.range_m),
                    voxel_size_m=list(model.voxel_size_m))
