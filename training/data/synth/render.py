"""Camera images of the voxel world: ray casting at reduced resolution, shading at full resolution.

Rays of every `scale`-th pixel walk the voxel grid (raycast.py); each full-resolution pixel then
takes its block's hit face (axis and plane), intersects its own ray with that plane, and shades
the exact surface point: per-class base colour and pattern, noise textures fixed to global
coordinates (so views and frames agree, as stereo and temporal models need), Lambert shading,
haze with distance, and a sky above the horizon. Beyond the grid the ground continues as a plane.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from occupancy.classes import FREE_CLASS

from .raycast import cast_rays
from .rig import Sensor
from .world import CLASS, GROUND_TOP_Z, LANE_WIDTH, Road

MAX_GROUND_DEPTH_M = 100.0  # beyond-grid ground farther than this counts as sky in the 2D labels
_SUN_GLOBAL = np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84])
_SKY_HORIZON = np.array([205.0, 220.0, 235.0])
_SKY_ZENITH = np.array([90.0, 140.0, 215.0])

# RGB base colours: distinct per class, loosely realistic.
_PALETTE = np.zeros((FREE_CLASS + 1, 3), np.float32)
for _name, _rgb in {
    "others": (120, 80, 140),
    "barrier": (235, 110, 30),
    "bicycle": (230, 120, 170),
    "bus": (235, 200, 40),
    "car": (40, 90, 190),
    "construction_vehicle": (20, 170, 170),
    "motorcycle": (150, 140, 30),
    "pedestrian": (200, 40, 40),
    "traffic_cone": (255, 140, 0),
    "trailer": (140, 80, 30),
    "truck": (150, 60, 170),
    "driveable_surface": (72, 72, 78),
    "other_flat": (150, 95, 80),
    "sidewalk": (170, 165, 155),
    "terrain": (115, 140, 65),
    "manmade": (190, 175, 150),
    "vegetation": (45, 115, 40),
}.items():
    _PALETTE[CLASS[_name]] = _rgb
# Amplitude of the fine and coarse texture noise per class (fraction of the colour).
_NOISE = np.full((FREE_CLASS + 1, 2), (0.06, 0.05), np.float32)
for _name, _amp in {
    "driveable_surface": (0.12, 0.08),
    "terrain": (0.2, 0.25),
    "vegetation": (0.35, 0.2),
    "sidewalk": (0.08, 0.06),
    "other_flat": (0.1, 0.08),
    "manmade": (0.05, 0.12),
}.items():
    _NOISE[CLASS[_name]] = _amp


class Textures:
    """Tileable noise images (256 x 256, zero mean, unit-ish range) from a seed."""

    SIZE = 256

    def __init__(self, rng: np.random.Generator):
        self.fine = self._noise(rng, 40.0)
        self.coarse = self._noise(rng, 6.0)

    def _noise(self, rng: np.random.Generator, cutoff: float) -> np.ndarray:
        """Periodic noise: white noise low-passed in the Fourier domain (so it tiles)."""
        frequency = np.fft.fftfreq(self.SIZE) * self.SIZE
        radius2 = frequency[:, None] ** 2 + frequency[None, :] ** 2
        spectrum = np.fft.fft2(rng.standard_normal((self.SIZE, self.SIZE))) * np.exp(
            -radius2 / (2 * cutoff**2)
        )
        noise = np.real(np.fft.ifft2(spectrum))
        return (noise / (3 * noise.std())).astype(np.float32)

    def sample(self, texture: np.ndarray, u: np.ndarray, v: np.ndarray, texel_m: float) -> np.ndarray:
        """Texture values (P,) at surface coordinates u, v (P,) in metres, one texel = `texel_m` metres."""
        count = len(u)
        if count == 0:
            return np.zeros(0, np.float32)
        rows = -(-count // 1024)  # OpenCV maps must be under 32767 on a side
        maps = np.zeros((2, rows * 1024), np.float32)
        maps[0, :count] = np.mod(u / texel_m, self.SIZE)
        maps[1, :count] = np.mod(v / texel_m, self.SIZE)
        maps = maps.reshape(2, rows, 1024)
        values = cv2.remap(texture, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        return values.reshape(-1)[:count]


@dataclass
class CameraCast:
    """The low-resolution ray cast of one camera; arrays are (h, w) with h = ceil(H / scale)."""

    t: np.ndarray  # camera depth (z in the optical frame, m) of the surface; inf for sky
    axis: np.ndarray  # int: ego axis of the hit face's normal (2 for the ground plane), -1 for sky
    plane: np.ndarray  # the hit face's coordinate along `axis` in the ego frame, m
    normal_sign: np.ndarray  # +1 or -1: the face normal points along +axis or -axis
    semantics: np.ndarray  # uint8 class of the surface; FREE_CLASS for sky
    tint: np.ndarray  # uint8 per-object colour variation
    scale: int


def pixel_rays(sensor: Sensor, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Ego-frame ray directions (..., 3) through pixels (u, v), scaled so that optical z = 1."""
    k = sensor.intrinsic
    x = (u - k[0, 2]) / k[0, 0]
    y = (v - k[1, 2]) / k[1, 1]
    r = sensor.rotation
    return np.stack([r[i, 0] * x + r[i, 1] * y + r[i, 2] for i in range(3)], axis=-1)


def lowres_pixels(image_size: tuple[int, int], scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution pixel coordinates (u, v) of the centres of the scale x scale blocks, (h, w) each."""
    height, width = image_size
    u = (np.arange(-(-width // scale)) + 0.5) * scale - 0.5
    v = (np.arange(-(-height // scale)) + 0.5) * scale - 0.5
    return np.meshgrid(u, v)


def cast_camera(
    classes: np.ndarray,
    tint: np.ndarray,
    grid,
    sensor: Sensor,
    road: Road,
    ego2global: np.ndarray,
    scale: int,
    visible: np.ndarray | None = None,
) -> CameraCast:
    """Cast the camera's low-resolution rays through the ego-frame class grid (free = FREE_CLASS).

    Rays that leave the grid downwards meet the ground plane, classed by the road's ground map.
    `visible` (grid-shaped bool) collects the voxels the rays observe.
    """
    u, v = lowres_pixels(sensor.image_size, scale)
    directions = pixel_rays(sensor, u, v).reshape(-1, 3)
    origin = np.asarray(sensor.translation)
    hits = cast_rays(classes != FREE_CLASS, grid, origin, directions, visible)
    hit = hits.hit
    axis = np.where(hit, np.maximum(hits.axis, 0), -1)
    t = hits.t.copy()
    semantics = np.full(len(t), FREE_CLASS, np.uint8)
    tints = np.zeros(len(t), np.uint8)
    semantics[hit] = classes[tuple(hits.voxel[hit].T)]
    tints[hit] = tint[tuple(hits.voxel[hit].T)]
    # Beyond the grid: the ground plane.
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = (GROUND_TOP_Z - origin[2]) / directions[:, 2]
    ground = ~hit & (directions[:, 2] < 0) & (t_ground < 1e4)
    t[ground] = t_ground[ground]
    axis[ground] = 2
    points = origin + t[ground, None] * directions[ground]
    semantics[ground] = road.ground_class(points[:, :2] @ ego2global[:2, :2].T + ego2global[:2, 3])
    rows = np.arange(len(t))
    safe_axis = np.maximum(axis, 0)
    plane = np.where(axis >= 0, origin[safe_axis] + t * directions[rows, safe_axis], 0.0)
    normal_sign = -np.sign(directions[rows, safe_axis])
    shape = u.shape
    return CameraCast(
        t.reshape(shape),
        axis.reshape(shape),
        plane.reshape(shape),
        normal_sign.reshape(shape),
        semantics.reshape(shape),
        tints.reshape(shape),
        scale,
    )


def _upsample(array: np.ndarray, scale: int, image_size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a low-resolution buffer to the image size."""
    return np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)[: image_size[0], : image_size[1]]


def shade_image(
    cast: CameraCast,
    sensor: Sensor,
    road: Road,
    ego2global: np.ndarray,
    textures: Textures,
    rng: np.random.Generator,
) -> np.ndarray:
    """The camera's full-resolution image (H, W, 3) uint8 BGR, shaded from its low-resolution cast."""
    size = sensor.image_size
    height, width = size
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    directions = pixel_rays(sensor, u, v).astype(np.float32)
    axis = _upsample(cast.axis, cast.scale, size)
    semantics = _upsample(cast.semantics, cast.scale, size)
    surface = axis >= 0
    safe_axis = np.maximum(axis, 0)[..., None]
    origin = np.asarray(sensor.translation, np.float32)
    along = np.take_along_axis(directions, safe_axis, axis=-1)[..., 0]
    coarse_t = _upsample(cast.t, cast.scale, size)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (_upsample(cast.plane, cast.scale, size) - origin[safe_axis[..., 0]]) / along
    # A pixel whose own ray runs almost parallel to its block's face keeps the block's depth.
    bad = ~np.isfinite(t) | (t <= 0) | (t > 2 * coarse_t + 1) | (t < 0.5 * coarse_t)
    t = np.where(surface & ~bad, t, np.where(surface, coarse_t, 0)).astype(np.float32)

    image = np.empty((height, width, 3), np.float32)
    ys, xs = np.nonzero(surface)
    points = origin + t[ys, xs, None] * directions[ys, xs]
    image[ys, xs] = _shade_surface(
        points,
        semantics[ys, xs],
        axis[ys, xs],
        _upsample(cast.normal_sign, cast.scale, size)[ys, xs],
        _upsample(cast.tint, cast.scale, size)[ys, xs],
        t[ys, xs],
        road,
        ego2global,
        textures,
    )
    ys, xs = np.nonzero(~surface)
    image[ys, xs] = _sky(directions[ys, xs], ego2global, textures)
    image += rng.standard_normal(image.shape, dtype=np.float32) * 2.5
    return np.clip(image[..., ::-1], 0, 255).astype(np.uint8)


def _shade_surface(
    points: np.ndarray,
    semantics: np.ndarray,
    axis: np.ndarray,
    normal_sign: np.ndarray,
    tint: np.ndarray,
    depth: np.ndarray,
    road: Road,
    ego2global: np.ndarray,
    textures: Textures,
) -> np.ndarray:
    """RGB (P, 3) of ego-frame surface points (P, 3) with their class, face axis and depth."""
    rotation = ego2global[:3, :3].astype(np.float32)
    global_xy = points[:, :2] @ rotation[:2, :2].T + ego2global[:2, 3].astype(np.float32)
    height = points[:, 2] - GROUND_TOP_Z
    # Surface coordinates: (x, y) on horizontal faces, (along the face, height) on vertical ones.
    tangent = np.where(axis[:, None] == 0, rotation[:2, 1], rotation[:2, 0])
    along = np.sum(global_xy * tangent, axis=1)
    vertical = axis != 2
    tex_u = np.where(vertical, along, global_xy[:, 0])
    tex_v = np.where(vertical, height, global_xy[:, 1])
    fine = textures.sample(textures.fine, tex_u, tex_v, 0.02)
    coarse = textures.sample(textures.coarse, tex_u, tex_v, 0.1)

    variation = 1.0 + (tint.astype(np.float32) / 255.0 - 0.5) * 0.3
    colour = _PALETTE[semantics] * variation[:, None]
    amplitude = _NOISE[semantics]
    colour *= 1.0 + amplitude[:, :1] * fine[:, None] + amplitude[:, 1:] * coarse[:, None]
    _patterns(colour, semantics, vertical, tex_u, tex_v, height, global_xy, road)

    normal = np.zeros_like(points)
    normal[np.arange(len(points)), axis] = normal_sign
    sun = _SUN_GLOBAL @ ego2global[:3, :3]  # the sun's direction in the ego frame
    light = 0.55 + 0.5 * np.clip(normal @ sun.astype(np.float32), 0.0, None)
    colour *= light[:, None]
    haze = (1.0 - np.exp(-depth / 140.0))[:, None]
    return colour * (1 - haze) + _SKY_HORIZON * haze


def _frac(value: np.ndarray, period: float) -> np.ndarray:
    """Position within a repeating pattern of `period` metres, in [0, 1)."""
    return np.mod(value, period) / period


def _marks(
    name: str, u: np.ndarray, v: np.ndarray, h: np.ndarray, vertical: np.ndarray, xy: np.ndarray, road: Road
) -> list[tuple[np.ndarray, tuple[float, float, float] | float]]:
    """A class's markings as (mask, RGB to paint or factor to darken by) over its pixels: surface
    coordinates u, v (m), height above ground h (m), vertical faces, global x, y."""
    match name:
        case "driveable_surface":
            x, y = road.to_local(xy)
            d = np.abs(road.lateral(x, y))
            lines = np.abs(d - (road.half_width - 0.3)) < 0.08  # edge lines
            for k in range(1, road.lanes_per_direction):  # dashed lane dividers
                lines |= (np.abs(d - k * LANE_WIDTH) < 0.07) & (_frac(x, 9.0) < 0.4)
            return [(lines, (225, 225, 220)), (d < 0.12, (220, 190, 60))]
        case "sidewalk":
            return [((_frac(u, 0.8) < 0.05) | (_frac(v, 0.8) < 0.05), 0.75)]  # paving joints
        case "other_flat":
            shifted = u + 0.25 * (_frac(v, 0.5) < 0.5)
            return [((_frac(v, 0.25) < 0.12) | (_frac(shifted, 0.5) < 0.06), 0.7)]  # bricks
        case "manmade":
            across, up = _frac(u, 3.0), _frac(h, 3.0)
            windows = vertical & (h > 1.0) & (across > 0.25) & (across < 0.75) & (up > 0.3) & (up < 0.8)
            return [(windows, (70, 85, 105))]
        case "barrier":
            return [(_frac(u + h, 0.8) < 0.5, (240, 240, 235))]
        case "traffic_cone":
            return [((h > 0.3) & (h < 0.45), (245, 245, 245))]
        case "car" | "truck":
            return [(vertical & (h > 1.05) & (h < 1.45), (35, 40, 50)), (h < 0.45, 0.35)]  # windows, wheels
        case "bus":
            return [(vertical & (h > 1.3) & (h < 2.4), (40, 45, 60)), (h < 0.45, 0.35)]
        case "trailer":
            return [(_frac(h, 0.35) < 0.2, 0.75)]
        case "construction_vehicle":
            return [(_frac(u - h, 1.0) < 0.3, (40, 40, 40))]
        case "bicycle" | "motorcycle":
            return [(h < 0.7, (30, 30, 30))]
        case "pedestrian":
            return [(h < 0.85, (40, 50, 90)), (h > 1.45, (225, 180, 150))]  # trousers, head
        case "vegetation":
            return [(vertical & (h < 1.6), 0.8)]
    return []


def _patterns(
    colour: np.ndarray,
    semantics: np.ndarray,
    vertical: np.ndarray,
    tex_u: np.ndarray,
    tex_v: np.ndarray,
    height: np.ndarray,
    global_xy: np.ndarray,
    road: Road,
) -> None:
    """Paint every class's markings into `colour` (P, 3), in place, one class's pixels at a time."""
    for name, class_id in CLASS.items():
        pixels = np.flatnonzero(semantics == class_id)
        if not pixels.size:
            continue
        marks = _marks(
            name, tex_u[pixels], tex_v[pixels], height[pixels], vertical[pixels], global_xy[pixels], road
        )
        for mask, paint in marks:
            if isinstance(paint, tuple):
                colour[pixels[mask]] = paint
            else:
                colour[pixels[mask]] *= paint


def _sky(directions: np.ndarray, ego2global: np.ndarray, textures: Textures) -> np.ndarray:
    """RGB (P, 3) of the sky along ego-frame directions (P, 3): a gradient with clouds."""
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    elevation = np.clip(unit[:, 2], 0.0, 1.0)
    blend = np.sqrt(elevation)[:, None]
    colour = _SKY_HORIZON * (1 - blend) + _SKY_ZENITH * blend
    global_dir = unit @ ego2global[:3, :3].T
    heading = np.arctan2(global_dir[:, 1], global_dir[:, 0])
    clouds = textures.sample(textures.coarse, heading * 40.0, elevation * 60.0, 0.5)
    cover = np.clip(clouds * 2.0, 0.0, 1.0)[:, None] * (elevation[:, None] > 0.02)
    return colour * (1 - cover) + 235.0 * cover


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()
