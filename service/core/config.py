"""Gateway settings, read from environment variables prefixed `OCC_` (e.g. `OCC_MAX_CONCURRENT=2`)."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from occupancy.network_input import FAST, Resampling
from occupancy.sequence import SequenceRules

_RULES = SequenceRules()  # the defaults of the sequence rules, spelled once (occupancy/sequence.py)

# The Triton-layout model repository committed next to the code: <name>/config.pbtxt, <name>/<version>/.
DEFAULT_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


class Settings(BaseSettings):
    """Everything the gateway reads from its environment; validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="OCC_", frozen=True)

    model_repository: Path = DEFAULT_REPOSITORY
    default_model: str | None = Field(None, description="served when a request names none; else the first")
    backend: Literal["embedded", "triton"] = "embedded"
    # embedded: look for a new version in the repository; triton: re-read the served version.
    watch_interval_s: float = Field(2.0, ge=0, description="seconds between version checks; 0: never")

    # Backend `triton`: gRPC endpoint and how patiently to call it.
    triton_url: str = Field("127.0.0.1:8001", description="Triton's gRPC endpoint, HOST:PORT")
    triton_timeout_s: float = Field(10.0, gt=0, description="an inference, retries included")
    triton_retries: int = Field(2, ge=0, description="retries of an inference Triton refused as UNAVAILABLE")
    triton_retry_backoff_s: float = Field(0.05, ge=0, description="first retry's wait; doubles each retry")
    triton_startup_timeout_s: float = Field(30.0, ge=0, description="wait for Triton and its models at start")
    # Triton's restricted model-control APIs (occupancy.triton_access): the key it was started with.
    triton_key: SecretStr | None = Field(None, description="sent on Triton's restricted calls")

    max_body_bytes: int = Field(64 * 2**20, gt=0, description="whole request body, bytes")
    body_timeout_s: float = Field(30.0, gt=0, description="to receive the whole body; beyond it, 408")
    # Bodies being received and parsed at once (before admission); beyond it, 503. The memory they hold
    # is at most max_uploads x max_body_bytes (x 2 while a JSON body's base64 is decoded).
    max_uploads: int = Field(8, ge=1, description="bodies received and parsed at the same time")
    # Checked from the JPEG/PNG header before decoding, so a decompression bomb is never decoded; `occ
    # serve` also sets OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS) to it.
    max_pixels: int = Field(4096 * 4096, gt=0, description="width x height of any one image")
    request_timeout_s: float = Field(30.0, gt=0, description="queue wait + decode + inference + encode")
    # fast: reduced JPEG decoding and OpenCV resampling; reference: a full decode and PIL's bicubic resize,
    # as the reference pipelines (docs/preprocessing.md has the difference and the cost).
    resampling: Resampling = Field(FAST, description="how images become model inputs: fast or reference")

    ort_intra_op_threads: int = Field(0, ge=0, description="0: ONNX Runtime's default (all cores)")
    ort_inter_op_threads: int = Field(1, ge=0)
    # ONNX Runtime's worker threads spin for a while after each run, waiting for more work, which takes the
    # cores from the next request's image decoding: off, demo-tiny's decode took 14.9 ms against 15-20 ms,
    # inference unchanged (benchmarks/http_predict_results.md).
    ort_spinning: bool = Field(False, description="let ONNX Runtime's intra-op threads spin between runs")
    max_concurrent: int = Field(1, ge=1, description="frames processed at the same time")
    max_queue: int = Field(8, ge=0, description="frames waiting for a slot; beyond that, 503")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of a 503")

    # Temporal models (docs/API.md "Temporal models"): sequences held per process, and the history rules of
    # occupancy/sequence.py (the trained frame gap is each model's own, from its metadata).
    max_sequences: int = Field(32, ge=1, description="sequences kept; beyond, the least recently used goes")
    sequence_ttl_s: float = Field(60.0, gt=0, description="a sequence without a frame this long is dropped")
    sequence_tolerance_s: float = Field(_RULES.tolerance_s, ge=0,
                                        description="past frames younger than the trained gap minus this are "
                                                    "not used")
    sequence_max_gap_s: float = Field(_RULES.max_gap_s, gt=0,
                                      description="a frame this much after the last one starts over")
    sequence_max_jump_m: float = Field(_RULES.max_jump_m, gt=0,
                                       description="an ego move this large since the last frame starts over")
    sequence_frames: int = Field(_RULES.max_frames, ge=1, description="past frames kept per sequence")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Comma-separated in the environment; empty: no authentication.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    def sequence_rules(self) -> SequenceRules:
        """The history rules of these settings (SequenceRules.for_model puts in a model's trained gap)."""
        return SequenceRules(_RULES.frame_gap_s, self.sequence_tolerance_s, self.sequence_max_gap_s,
                             self.sequence_max_jump_m, self.sequence_frames)

    @model_validator(mode="after")
    def _rules_hold(self) -> "Settings":
        self.sequence_rules()  # ValueError naming the rule broken
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value
