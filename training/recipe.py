"""How a config is trained: optimiser, schedule, EMA, batch, augmentation and precision.

A recipe lives in its model config's entry (`ModelConfig.recipe`), so a checkpoint that stores its
config's values also records how it was trained. The defaults are FlashOCC's (flashocc-r50.py and its
siblings): AdamW lr 1e-4 at a global batch of 32 (4 samples on each of 8 GPUs, the `--autoscale-lr`
base), weight decay 1e-2, gradients clipped to norm 5, 200 warm-up iterations, MEGVII's EMA, 24 epochs,
float32 (the reference's fp16 line is commented out).
"""

from dataclasses import dataclass, field, replace

from training.data.augment import AugmentConfig
from training.data.rays import RaySampling

# What supervises a training: "3d" the Occ3D voxel labels (the head's loss), "2d" per-pixel depth and
# semantic labels through the rendering head alone (RenderOcc's 2D-only training), "3d+2d" both (UniOcc,
# the seed's RenderOcc configs). The depth net's own depth loss applies in all three where a config has it.
SUPERVISIONS = ("3d", "2d", "3d+2d")


@dataclass(frozen=True)
class TrainRecipe:
    """Optimisation settings of a config."""

    lr: float = 1e-4  # at `global_batch`
    weight_decay: float = 1e-2
    grad_max_norm: float = 5.0
    warmup_iters: int = 200
    warmup_ratio: float = 0.001  # lr factor at iteration 0
    cosine_min_ratio: float | None = None  # None: constant lr after warm-up (the reference's); else
    # cosine annealing to this fraction of lr at the last iteration
    ema_decay: float | None = 0.999  # None: no EMA
    ema_init_updates: int = 10560  # MEGVIIEMAHook's init_updates: where the decay ramp starts
    batch_size: int = 4  # samples per process and step (samples_per_gpu)
    global_batch: int | None = 32  # samples per optimiser step over all processes, reached by gradient
    # accumulation on fewer processes; None: batch_size times the process count
    max_epochs: int = 24
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixed_precision: bool = False  # autocast: bf16 where the device has it (CPUs with AVX-512 BF16/AMX,
    # GPUs from Ampere), else fp16 with loss scaling on GPUs; `occ train --amp` / `--fp32` override it
    supervision: str = "3d"  # one of SUPERVISIONS; `occ train --supervision` overrides it
    rays: RaySampling = field(default_factory=RaySampling)  # the rendering supervision's rays ("2d" in it)

    def __post_init__(self) -> None:
        if self.supervision not in SUPERVISIONS:
            raise ValueError(f"supervision {self.supervision!r}: expected one of {', '.join(SUPERVISIONS)}")

    @property
    def voxel_labels(self) -> bool:
        """Whether the Occ3D voxel labels supervise (the head's 3D loss)."""
        return "3d" in self.supervision

    @property
    def pixel_labels(self) -> bool:
        """Whether rays with 2D labels supervise through the rendering head."""
        return "2d" in self.supervision


# demo-tiny learns from scratch in 2,550 CPU iterations (30 epochs of the demo data): a 20x larger lr
# annealed by cosine (2e-3 beat 1e-3 by 1.1 mIoU), a short warm-up, and an EMA whose ramp starts at 0
# so that it follows the weights closely in short runs. The reference's resize range is added to the
# scale 704 / 1600; at 352 pixels wide the same relative range is half. bf16 autocast makes a CPU step
# 1.3x faster where the CPU has bf16 instructions (AVX-512 BF16, AMX); with the loss over the visible
# voxels only, 2,550 iterations instead of 1,700 fit in the 30-minute budget, and the longer run
# scores 30.5 mIoU where 1,700 scored 28.3.
DEMO_TINY_RECIPE = TrainRecipe(lr=2e-3, warmup_iters=50, ema_init_updates=0, batch_size=2, global_batch=None,
                               max_epochs=30, cosine_min_ratio=0.01,
                               augment=AugmentConfig(resize_lim=(-0.03, 0.055)), mixed_precision=True)

# demo-tiny's recipe from 2D labels alone (demo-tiny-2d): the same schedule; 1,024 of the reference's
# 38,400 drawn rays rendered per sample (all of them cost a 2-core CPU several seconds a step), sky
# pixels among them: without them nothing told the network that the space above the surfaces is empty,
# and at 1,000 iterations the slices 4.2-5 m up were opaque over every free column.
DEMO_TINY_2D_RECIPE = replace(DEMO_TINY_RECIPE, supervision="2d",
                              rays=RaySampling(rendered_rays=1024, sky=True))

# demo-tiny-4d-stereo: demo-tiny's recipe over 24 epochs (2,040 iterations of the demo data) instead of 30.
# A step also runs t-1's backbone and depth net and t-2's first stage: 1.65x demo-tiny's time in the
# calmer of two measurements on the shared 2-core machine (3.2x in the other, under a load of 6-7), so
# 2,040 iterations at demo-tiny's 0.61 s x 1.65-2.2 should take 35-46 minutes on an idle one.
DEMO_TINY_4D_STEREO_RECIPE = replace(DEMO_TINY_RECIPE, max_epochs=24)
