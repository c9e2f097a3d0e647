"""Training augmentations: BEVDet's image-view augmentation and the BEV flips of FlashOcc's occupancy configs.

Image view (BEVDet `PrepareImageInputs.sample_augmentation`, drawn per camera): scale the source
image to the input width plus a random offset in `resize_lim`, keep a random horizontal window
and the bottom rows (`crop_h`), mirror left-right with probability 1/2, rotate by an angle in
`rot_lim` degrees. The result is an `occupancy.preprocess.ImageTransform`, the same
representation as the test-time transform, so the model receives the augmentation as
post_rot/post_tran and the geometry stays exact.

BEV (the reference's `bda`, `LoadAnnotationsBEVDepth` + `LoadOccGTFromFile`): flip the ego frame
along x and/or along y, each with probability 1/2. The occupancy configs set rot_lim = 0 and
scale_lim = 1, so flips are the only BEV augmentation; the labels are flipped with them.
"""

from dataclasses import dataclass

import numpy as np

from occupancy.preprocess import ImageTransform, Size, test_time_transform


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation ranges; the defaults are the `data_config` / `bda_aug_conf` of every FlashOCC config."""

    resize_lim: tuple[float, float] = (-0.06, 0.11)  # added to the scale input_width / source_width
    rot_lim: tuple[float, float] = (-5.4, 5.4)  # degrees, counter-clockwise as displayed
    flip: bool = True  # mirror images left-right with probability 1/2
    crop_h: tuple[float, float] = (0.0, 0.0)  # fraction of resized rows dropped at the bottom
    flip_dx_ratio: float = 0.5  # probability of flipping the ego x axis
    flip_dy_ratio: float = 0.5  # probability of flipping the ego y axis


@dataclass(frozen=True)
class BevFlip:
    """Which ego axes a sample is mirrored along (x -> -x, y -> -y)."""

    flip_x: bool = False
    flip_y: bool = False

    @property
    def matrix(self) -> np.ndarray:
        """float32 (3, 3) `bda`: maps ego coordinates to augmented ego coordinates."""
        return np.diag([-1.0 if self.flip_x else 1.0, -1.0 if self.flip_y else 1.0, 1.0]).astype(np.float32)

    def apply_to_grid(self, grid: np.ndarray) -> np.ndarray:
        """Mirror a label array indexed [x, y, ...] alike (the Occ3D grid is symmetric about x = y = 0)."""
        axes = [axis for axis, flipped in ((0, self.flip_x), (1, self.flip_y)) if flipped]
        return np.ascontiguousarray(np.flip(grid, axis=axes)) if axes else grid


def sample_image_transform(
    rng: np.random.Generator, source_size: Size, input_size: Size, config: AugmentConfig
) -> ImageTransform:
    """A random resize, crop, flip and rotation of a `source_size` (H, W) image onto `input_size` (H, W)."""
    input_height, input_width = input_size
    scale = input_width / source_size[1] + rng.uniform(*config.resize_lim)
    resized = ImageTransform.identity(source_size).resize(scale)
    new_height, new_width = resized.size
    top = int((1.0 - rng.uniform(*config.crop_h)) * new_height) - input_height
    left = int(rng.uniform(0, max(0, new_width - input_width)))
    transform = resized.crop(top, left, input_size)
    if config.flip and rng.integers(2):
        transform = transform.flip()
    return transform.rotate(rng.uniform(*config.rot_lim))


def eval_image_transform(source_size: Size, input_size: Size, config: AugmentConfig) -> ImageTransform:
    """The deterministic test-time transform (no augmentation); keeps the bottom rows like training does."""
    return test_time_transform(source_size, input_size, bottom_crop=float(np.mean(config.crop_h)))


def sample_bev_flip(rng: np.random.Generator, config: AugmentConfig) -> BevFlip:
    """Independent flips of x and y with the configured probabilities."""
    return BevFlip(flip_x=bool(rng.uniform() < config.flip_dx_ratio),
                   flip_y=bool(rng.uniform() < config.flip_dy_ratio))
