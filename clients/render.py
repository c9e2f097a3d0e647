"""Pictures of occupancy grids with OpenCV: a bird's-eye view, an oblique 3D view, comparisons, legends.

Grids are uint8 [X, Y, Z] in the ego frame (x forward, y left, z up), one class index per voxel
(occupancy.classes). Every picture is a BGR uint8 image (H, W, 3), as cv2.imwrite takes it. In the
bird's-eye view forward is up and left is left, one voxel column per `cell` x `cell` pixels, with the ego
vehicle at the centre.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from occupancy.cameras import CAMERA_NAMES
from occupancy.classes import CLASS_COLORS, CLASS_NAMES, FREE_CLASS
from occupancy.errors import InputError
from occupancy.grid import OCC3D_GRID

PALETTE_BGR = np.array(CLASS_COLORS, dtype=np.float32)[:, ::-1]  # CLASS_COLORS are RGB
BACKGROUND = (40, 40, 40)
TEXT = (235, 235, 235)
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Brightness of the top-most voxel at the lowest level; the highest level keeps its class colour exactly.
MIN_HEIGHT_SHADE = 0.6
MAX_MOSAIC_WIDTH = 1200  # camera pictures are context: keep them smaller than the grids
EGO_SIZE_M = (4.1, 1.8)  # length along x, width along y: a nuScenes car, drawn at the grid centre


@dataclass(frozen=True)
class LoadedGrid:
    """A grid read from a file, with the camera visibility mask where the file has one."""

    semantics: np.ndarray  # uint8 [X, Y, Z]
    mask_camera: np.ndarray | None  # bool [X, Y, Z]: voxels seen by a camera
    name: str


def load_grid(path: Path) -> LoadedGrid:
    """A grid from `.npy` (the array), or `.npz` with `semantics` (labels.npz, `occ eval` predictions)."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            semantics, mask = data, None
        else:
            with data:
                if "semantics" not in data:
                    raise InputError(f"{path}: no 'semantics' array (has {', '.join(data.files)})")
                semantics = data["semantics"]
                mask = data["mask_camera"].astype(bool) if "mask_camera" in data else None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a .npy or .npz grid ({error})") from error
    if semantics.ndim != 3 or semantics.dtype != np.uint8 or semantics.max(initial=0) > FREE_CLASS:
        raise InputError(f"{path}: expected uint8 class indices [X, Y, Z], got {semantics.dtype} "
                         f"of shape {list(semantics.shape)}")
    if mask is not None and mask.shape != semantics.shape:
        raise InputError(f"{path}: mask_camera has shape {list(mask.shape)}, "
                         f"semantics {list(semantics.shape)}")
    return LoadedGrid(semantics, mask, path.name)


def top_voxels(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column (x, y): the class and z index of the highest voxel that is not free ([X, Y] each).

    Columns with no such voxel have class FREE_CLASS and z index -1.
    """
    occupied = grid != FREE_CLASS
    from_top = np.argmax(occupied[..., ::-1], axis=2)
    top_z = np.where(occupied.any(axis=2), grid.shape[2] - 1 - from_top, -1)
    top_class = np.take_along_axis(grid, np.maximum(top_z, 0)[..., None], axis=2)[..., 0]
    return np.where(top_z >= 0, top_class, FREE_CLASS), top_z


def bev_image(grid: np.ndarray, mask: np.ndarray | None = None, cell: int = 3) -> np.ndarray:
    """Bird's-eye view, BGR (X*cell, Y*cell, 3): each column's top voxel in its class colour, darker the
    lower it lies; a top voxel that no camera sees (`mask` False) is drawn grey. Forward (+x) is up."""
    top_class, top_z = top_voxels(grid)
    shade = MIN_HEIGHT_SHADE + (1 - MIN_HEIGHT_SHADE) * (top_z + 1) / grid.shape[2]
    colours = PALETTE_BGR[top_class] * shade[..., None]
    if mask is not None:
        seen = np.take_along_axis(mask, np.maximum(top_z, 0)[..., None], axis=2)[..., 0]
        colours = np.where(seen[..., None], colours, _grey(colours))
    colours[top_z < 0] = BACKGROUND
    image = _bev_orientation(colours.round().astype(np.uint8))
    image = cv2.resize(image, None, fx=cell, fy=cell, interpolation=cv2.INTER_NEAREST)
    _draw_ego(image, cell, grid.shape)
    return image


def diff_image(first: np.ndarray, second: np.ndarray, mask: np.ndarray | None = None,
               cell: int = 3) -> np.ndarray:
    """Bird's-eye map of disagreement, BGR: per column the number of voxels whose classes differ (inside
    `mask` where given), from dark red (one) to yellow (the whole column); agreeing columns with any
    occupied voxel are dark grey."""
    differ = first != second
    if mask is not None:
        differ &= mask
    count = differ.sum(axis=2)
    heat = cv2.applyColorMap((80 + 175 * count / first.shape[2]).astype(np.uint8), cv2.COLORMAP_HOT)
    occupied = ((first != FREE_CLASS) | (second != FREE_CLASS)).any(axis=2)
    image = np.where((count > 0)[..., None], heat, np.where(occupied[..., None], 70, 0).astype(np.uint8))
    image = np.where(image.sum(axis=2, keepdims=True) == 0, np.array(BACKGROUND, np.uint8), image)
    image = cv2.resize(_bev_orientation(image), None, fx=cell, fy=cell, interpolation=cv2.INTER_NEAREST)
    _draw_ego(image, cell, first.shape)
    return image


@dataclass(frozen=True)
class ObliqueView:
    """An orthographic view given by the pixel offset (du, dv) of one voxel step along x, y and z.

    The default looks forward from behind, right and above the ego vehicle: forward goes up the image
    (with a slight slant to the right, so the right-hand sides of objects show), left goes left, up goes up.
    """

    x_step: tuple[int, int] = (1, -3)
    y_step: tuple[int, int] = (-4, 0)
    z_step: tuple[int, int] = (0, -4)
    margin: int = 8

    @property
    def projection(self) -> np.ndarray:
        """2 x 3 integer matrix: pixel offset (du, dv) = projection @ (dx, dy, dz) in voxels."""
        return np.array([self.x_step, self.y_step, self.z_step], dtype=np.int64).T

    @property
    def direction(self) -> np.ndarray:
        """Unit viewing direction in voxel space (from the eye into the scene, pointing down)."""
        u, v = self.projection.astype(np.float64)
        direction = np.cross(u, v)  # the one direction the projection collapses to a point
        direction *= -np.sign(direction[2]) if direction[2] else 1.0
        return direction / np.linalg.norm(direction)


# Brightness of the three visible faces: top, the face across x, the face across y.
_FACE_SHADES = np.array([1.0, 0.78, 0.6], dtype=np.float32)


def oblique_image(
    grid: np.ndarray, mask: np.ndarray | None = None, view: ObliqueView = ObliqueView()
) -> np.ndarray:
    """An oblique 3D rendering of the non-free voxels as shaded cubes, BGR; invisible voxels grey.

    Every cube projects to the same sprite, so the painter's algorithm becomes a per-pixel maximum of
    (nearness rank, sprite pixel) over all sprite pixels of the surface voxels.
    """
    coords = _surface_voxels(grid, view.direction)
    sprite_uv, sprite_face = _cube_sprite(view)
    corners = np.array(np.meshgrid(*[[0, n] for n in grid.shape], indexing="ij")).reshape(3, -1)
    extent = view.projection @ corners
    lower = extent.min(axis=1) + sprite_uv.min(axis=0) - view.margin
    width, height = extent.max(axis=1) + sprite_uv.max(axis=0) + view.margin - lower + 1
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND
    if len(coords):
        order = np.argsort(-(coords @ view.direction), kind="stable")  # farthest first
        origins = coords[order] @ view.projection.T - lower  # (N, 2) pixel (u, v)
        pixels = origins[:, None, :] + sprite_uv[None]  # (N, P, 2)
        flat = (pixels[..., 1] * width + pixels[..., 0]).ravel()
        count = len(sprite_face)
        keys = (np.arange(len(order))[:, None] * count + np.arange(count)[None]).ravel()
        nearest = np.full(height * width, -1, dtype=np.int64)
        np.maximum.at(nearest, flat, keys)
        hit = np.flatnonzero(nearest >= 0)
        voxel = coords[order[nearest[hit] // count]]
        colours = PALETTE_BGR[grid[tuple(voxel.T)]] * _FACE_SHADES[sprite_face[nearest[hit] % count]][:, None]
        if mask is not None:
            colours = np.where(mask[tuple(voxel.T)][:, None], colours, _grey(colours))
        image.reshape(-1, 3)[hit] = colours.round().astype(np.uint8)
    _draw_ego_footprint(image, view, grid.shape, lower)
    return image


def legend_image(height: int, with_mask: bool = False, classes: Sequence[int] | None = None) -> np.ndarray:
    """A column of colour swatches and class names (all non-free classes by default), BGR."""
    classes = [c for c in range(len(CLASS_NAMES)) if c != FREE_CLASS] if classes is None else list(classes)
    entries = [(PALETTE_BGR[c], CLASS_NAMES[c]) for c in classes]
    if with_mask:
        entries.append((_grey(PALETTE_BGR[4][None])[0], "not seen by a camera"))
    row = 22
    image = np.empty((max(height, row * len(entries) + 16), 210, 3), np.uint8)
    image[:] = BACKGROUND
    for index, (colour, name) in enumerate(entries):
        top = 12 + index * row
        cv2.rectangle(image, (10, top), (26, top + 14), tuple(int(c) for c in colour), cv2.FILLED)
        cv2.rectangle(image, (10, top), (26, top + 14), (120, 120, 120), 1)
        cv2.putText(image, name, (34, top + 12), FONT, 0.45, TEXT, 1, cv2.LINE_AA)
    return image


def camera_mosaic(images: Mapping[str, Path | np.ndarray], width: int) -> np.ndarray:
    """The cameras in two rows of three (front: FRONT_LEFT, FRONT, FRONT_RIGHT; back: BACK_LEFT, BACK,
    BACK_RIGHT), labelled, `width` pixels wide; cameras not given are left out."""
    tiles = []
    tile_width = width // 3
    for name in CAMERA_NAMES:
        source = images.get(name)
        if source is None:
            tile = None
        elif isinstance(source, np.ndarray):
            tile = source
        else:
            tile = cv2.imread(str(source), cv2.IMREAD_COLOR)
            if tile is None:
                raise InputError(f"--camera-images {name}: cannot read {source} as an image")
        if tile is not None:
            tile = cv2.resize(tile, (tile_width, round(tile.shape[0] * tile_width / tile.shape[1])),
                              interpolation=cv2.INTER_AREA)
            cv2.putText(tile, name, (8, 22), FONT, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, name, (8, 22), FONT, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    rows = [[t for t in tiles[i:i + 3] if t is not None] for i in (0, 3)]
    return stack([stack(row, axis=1, gap=2) for row in rows if row], axis=0, gap=2)


def render_grid(grid: LoadedGrid, use_mask: bool = False, cell: int = 3) -> np.ndarray:
    """One grid: its bird's-eye view and oblique view side by side, titled with the file name."""
    mask = grid.mask_camera if use_mask else None
    return stack([titled(bev_image(grid.semantics, mask, cell), f"{grid.name}: bird's-eye view"),
                  titled(oblique_image(grid.semantics, mask), f"{grid.name}: 3D view")], axis=1)


def render_comparison(
    first: LoadedGrid, second: LoadedGrid, use_mask: bool = False, cell: int = 3
) -> np.ndarray:
    """Two grids side by side (bird's-eye row, then 3D row), with the bird's-eye map of where they differ.

    With `use_mask`, the mask_camera of either grid (ground truth carries one) greys out the unseen voxels
    in both and limits the difference to the voxels a camera sees, as the Occ3D evaluation does.
    """
    if first.semantics.shape != second.semantics.shape:
        raise InputError(f"--compare: grids of different shapes {list(first.semantics.shape)} and "
                         f"{list(second.semantics.shape)}")
    masks = [g.mask_camera for g in (first, second) if g.mask_camera is not None and use_mask]
    seen = masks[0] if masks else None
    differ = first.semantics != second.semantics
    if seen is None:
        diff_title = f"differ: {int(differ.sum())} of {differ.size} voxels"
    else:
        diff_title = f"differ: {int((differ & seen).sum())} of {int(seen.sum())} seen voxels"
    bev_row = stack([titled(bev_image(g.semantics, seen, cell), f"{g.name}: bird's-eye view")
                     for g in (first, second)]
                    + [titled(diff_image(first.semantics, second.semantics, seen, cell), diff_title)], axis=1)
    oblique_row = stack([titled(oblique_image(g.semantics, seen), f"{g.name}: 3D view")
                         for g in (first, second)], axis=1)
    return stack([bev_row, oblique_row], axis=0)


def compose(body: np.ndarray, with_mask: bool, cameras: Mapping[str, Path] | None = None) -> np.ndarray:
    """The final picture: optional camera mosaic on top, `body`, and the legend on the right."""
    if cameras:
        body = stack([camera_mosaic(cameras, min(body.shape[1], MAX_MOSAIC_WIDTH)), body], axis=0)
    return stack([body, legend_image(body.shape[0], with_mask)], axis=1)


def titled(image: np.ndarray, title: str) -> np.ndarray:
    """`image` under a 28-pixel bar with `title`."""
    bar = np.empty((28, image.shape[1], 3), np.uint8)
    bar[:] = BACKGROUND
    cv2.putText(bar, title, (6, 19), FONT, 0.55, TEXT, 1, cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


def stack(images: Sequence[np.ndarray], axis: int, gap: int = 6) -> np.ndarray:
    """Images one after another along `axis` (0: down, 1: right), padded with the background."""
    across = max(image.shape[1 - axis] for image in images)
    parts = []
    for index, image in enumerate(images):
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[1 - axis] = (0, across - image.shape[1 - axis])
        pad[axis] = (0, gap if index < len(images) - 1 else 0)
        parts.append(np.stack([np.pad(image[..., c], pad[:2], constant_values=BACKGROUND[c])
                               for c in range(3)], axis=-1))
    return np.concatenate(parts, axis=axis)


def _grey(colours: np.ndarray) -> np.ndarray:
    """Colours (..., 3) washed out towards a mid grey, keeping a hint of the class: voxels no camera sees."""
    return 0.25 * colours + 0.75 * 110


def _bev_orientation(columns: np.ndarray) -> np.ndarray:
    """[X, Y, ...] columns -> image rows and columns: +x (forward) up, +y (left) to the left."""
    return np.ascontiguousarray(columns[::-1, ::-1])


def _draw_ego(image: np.ndarray, cell: int, shape: tuple[int, ...]) -> None:
    half = np.array(EGO_SIZE_M) / OCC3D_GRID.voxel_size / 2 * cell  # (rows, columns) half size in pixels
    centre = np.array(shape[:2]) * cell / 2
    top_left = tuple(int(v) for v in (centre[1] - half[1], centre[0] - half[0]))
    bottom_right = tuple(int(v) for v in (centre[1] + half[1], centre[0] + half[0]))
    cv2.rectangle(image, top_left, bottom_right, (255, 255, 255), 1)
    tip = (int(centre[1]), int(centre[0] - half[0]) - 2 * cell)  # pointing forward
    cv2.line(image, (int(centre[1]), int(centre[0])), tip, (255, 255, 255), 1)


def _draw_ego_footprint(
    image: np.ndarray, view: ObliqueView, shape: tuple[int, ...], lower: np.ndarray
) -> None:
    """The ego vehicle's outline on the ground plane (z = 0 m), white."""
    half = np.array(EGO_SIZE_M) / OCC3D_GRID.voxel_size / 2
    ground = -OCC3D_GRID.z_range[0] / OCC3D_GRID.voxel_size
    centre = np.array([shape[0] / 2, shape[1] / 2, ground])
    signs = np.array([(1, 1, 0), (1, -1, 0), (-1, -1, 0), (-1, 1, 0)])
    corners = centre + signs * np.array([half[0], half[1], 0.0])
    points = np.array([view.projection @ corner - lower for corner in corners]).round().astype(np.int32)
    cv2.polylines(image, [points], True, (255, 255, 255), 1, cv2.LINE_AA)


def _surface_voxels(grid: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Indices (N, 3) of the non-free voxels with a free (or out-of-grid) neighbour across a face that the
    view shows: the only voxels that can appear in the picture."""
    occupied = grid != FREE_CLASS
    exposed = np.zeros_like(occupied)
    for axis in range(3):
        step = -1 if direction[axis] > 0 else 1  # the visible face looks back towards the eye
        neighbour_free = np.ones_like(occupied)
        source = [slice(None)] * 3
        target = [slice(None)] * 3
        source[axis] = slice(None, -1) if step == 1 else slice(1, None)
        target[axis] = slice(1, None) if step == 1 else slice(None, -1)
        neighbour_free[tuple(source)] = ~occupied[tuple(target)]
        exposed |= neighbour_free
    return np.argwhere(occupied & exposed)


def _cube_sprite(view: ObliqueView) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets (P, 2) from a voxel's projected origin covered by its cube, and each pixel's face
    (0 top, 1 across x, 2 across y) among the three faces the view shows."""
    direction = view.direction
    near = [0 if direction[axis] > 0 else 1 for axis in range(3)]  # the coordinate of each visible face
    quads = {}
    for face, axis in ((0, 2), (1, 0), (2, 1)):
        first, second = (a for a in range(3) if a != axis)
        corners = np.zeros((4, 3))
        corners[:, axis] = near[axis]
        corners[:, first], corners[:, second] = (0, 1, 1, 0), (0, 0, 1, 1)
        quads[face] = corners @ view.projection.T
    lower = np.min([quad.min(axis=0) for quad in quads.values()], axis=0).astype(np.int64)
    size = np.max([quad.max(axis=0) for quad in quads.values()], axis=0).astype(np.int64) - lower + 1
    canvas = np.full((size[1], size[0]), -1, dtype=np.int16)
    for face in (1, 2, 0):  # the top face last: its edge pixels win
        cv2.fillConvexPoly(canvas, (quads[face] - lower).astype(np.int32), face)
    v, u = np.nonzero(canvas >= 0)
    return np.stack([u, v], axis=1) + lower, canvas[v, u].astype(np.int64)


def write_picture(out: Path, grid: LoadedGrid, other: LoadedGrid | None = None,
                  cameras: Mapping[str, Path] | None = None, use_mask: bool = False, cell: int = 3) -> Path:
    """Render `grid` (beside `other` if given) with the legend and camera mosaic, and write a PNG."""
    with_mask = use_mask and any(g is not None and g.mask_camera is not None for g in (grid, other))
    if other is None:
        body = render_grid(grid, use_mask, cell)
    else:
        body = render_comparison(grid, other, use_mask, cell)
    picture = compose(body, with_mask, cameras)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), picture):
        raise InputError(f"--out {out}: cannot write a PNG there")
    return out


# A sequence of grids: a strip of bird's-eye views (PNG), or an animation of the full pictures.
ANIMATION_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
SEQUENCE_FORMATS = (".png", *ANIMATION_CODECS)
MAX_STRIP_COLUMNS = 8  # a longer sequence wraps into rows


def write_sequence(out: Path, grids: Sequence[LoadedGrid], use_mask: bool = False, cell: int = 3,
                   fps: float = 2.0) -> Path:
    """Draw `grids` (frames of one sequence, in order) into `out`: .png a strip of their bird's-eye views
    (titled by name, wrapping after MAX_STRIP_COLUMNS), .mp4 / .avi an animation of their pictures
    (bird's-eye and 3D views, as `write_picture` draws one) at `fps` frames per second."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in SEQUENCE_FORMATS:
        raise InputError(f"--out {out}: a sequence is drawn into {', '.join(SEQUENCE_FORMATS)}")
    if not grids:
        raise InputError("no grids to draw")
    with_mask = use_mask and any(grid.mask_camera is not None for grid in grids)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        views = [titled(bev_image(g.semantics, g.mask_camera if use_mask else None, cell), g.name)
                 for g in grids]
        rows = [stack(views[i:i + MAX_STRIP_COLUMNS], axis=1)
                for i in range(0, len(views), MAX_STRIP_COLUMNS)]
        if not cv2.imwrite(str(out), compose(stack(rows, axis=0), with_mask)):
            raise InputError(f"--out {out}: cannot write a PNG there")
        return out
    pictures = [compose(render_grid(grid, use_mask, cell), with_mask) for grid in grids]
    height, width = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
    codec = cv2.VideoWriter_fourcc(*ANIMATION_CODECS[suffix])
    writer = cv2.VideoWriter(str(out), codec, fps, (width, height))
    if not writer.isOpened():
        raise InputError(f"--out {out}: OpenCV cannot write {suffix} files here (codec "
                         f"{ANIMATION_CODECS[suffix]}); draw a .png strip instead")
    try:
        for picture in pictures:
            writer.write(_padded(picture, height, width))
    finally:
        writer.release()
    return out


def _padded(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` padded with the background to height x width (an animation's frames share one size)."""
    pad = ((0, height - image.shape[0]), (0, width - image.shape[1]))
    return np.stack([np.pad(image[..., c], pad, constant_values=BACKGROUND[c]) for c in range(3)], axis=-1)
