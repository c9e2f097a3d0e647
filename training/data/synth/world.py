"""A procedural street: a gently curving road, its ground map, static objects and traffic.

Everything is laid out in road coordinates of a scene-local frame: the road centre line is
y = A sin(2 pi x / L + phase), and a point's lateral offset is d = (y - f(x)) cos(heading(x)),
positive to the left of a car driving towards +x. Traffic keeps to the right: lanes with d < 0
drive towards +x. The scene-local frame sits in the global (nuScenes map) frame by a yaw and a
translation, so poses look like real ones. Objects are boxes that stand on the ground; an
object's box at time t comes from its road position x0 + speed * t.
"""

from dataclasses import dataclass

import numpy as np

from occupancy.classes import CLASS_NAMES

CLASS = {name: index for index, name in enumerate(CLASS_NAMES)}
GROUND_TOP_Z = 0.2  # metres, ego frame: the top face of voxel layer 2, so the ground is layer 2
FRAME_INTERVAL_S = 0.5  # keyframes are 2 Hz in nuScenes
LANE_WIDTH = 3.5
SIDEWALK_WIDTH = 3.0

# Box sizes (length, width, height) in metres, and their random spread (fraction).
SIZES: dict[str, tuple[float, float, float]] = {
    "car": (4.5, 1.9, 1.6),
    "truck": (7.0, 2.5, 3.0),
    "bus": (11.0, 2.9, 3.2),
    "trailer": (9.0, 2.5, 3.4),
    "construction_vehicle": (6.5, 2.8, 3.2),
    "motorcycle": (2.1, 0.8, 1.5),
    "bicycle": (1.8, 0.6, 1.6),
    "pedestrian": (0.6, 0.6, 1.7),
    "traffic_cone": (0.4, 0.4, 0.7),
    "barrier": (2.0, 0.5, 1.0),
    "others": (0.9, 0.9, 1.1),
}
# What lies beyond each sidewalk, in stretches along the road.
SEGMENT_KINDS = ("buildings", "parking", "park", "construction")


@dataclass(frozen=True)
class Road:
    """The road of one scene and the transform of its scene-local frame into the global frame."""

    amplitude: float  # m
    wavelength: float  # m
    phase: float  # rad
    lanes_per_direction: int
    yaw: float  # rad: scene-local -> global rotation about z
    origin: tuple[float, float]  # m: scene-local origin in global x, y
    segment_starts: np.ndarray  # (2, S) m: start x of each roadside stretch, [right side, left side]
    segment_kinds: np.ndarray  # (2, S) int: index into SEGMENT_KINDS

    @property
    def half_width(self) -> float:
        """Lateral distance from the centre line to the kerb, m."""
        return self.lanes_per_direction * LANE_WIDTH + 0.5

    def centre_y(self, x: np.ndarray) -> np.ndarray:
        return self.amplitude * np.sin(2 * np.pi * x / self.wavelength + self.phase)

    def heading(self, x: np.ndarray) -> np.ndarray:
        """Direction of travel towards +x at x, rad in the scene-local frame."""
        k = 2 * np.pi / self.wavelength
        return np.arctan(self.amplitude * k * np.cos(k * x + self.phase))

    def lateral(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed lateral offset (m, left positive) of scene-local points."""
        return (y - self.centre_y(x)) * np.cos(self.heading(x))

    def place(self, x: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Scene-local points (..., 2) at road position x and lateral offset d (inverse of `lateral`)."""
        return np.stack([x, self.centre_y(x) + d / np.cos(self.heading(x))], axis=-1)

    def local2global(self) -> np.ndarray:
        """3x3 homogeneous 2D transform scene-local -> global."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, self.origin[0]], [s, c, self.origin[1]], [0.0, 0.0, 1.0]])

    def to_local(self, xy_global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scene-local x, y of global points (..., 2)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        dx, dy = xy_global[..., 0] - self.origin[0], xy_global[..., 1] - self.origin[1]
        return c * dx + s * dy, -s * dx + c * dy

    def segment_kind(self, x: np.ndarray, left: np.ndarray) -> np.ndarray:
        """Kind index of the roadside stretch at road position x on the left (True) or right side."""
        right_kind = self.segment_kinds[0][np.clip(np.searchsorted(self.segment_starts[0], x) - 1, 0, None)]
        left_kind = self.segment_kinds[1][np.clip(np.searchsorted(self.segment_starts[1], x) - 1, 0, None)]
        return np.where(left, left_kind, right_kind)

    def ground_class(self, xy_global: np.ndarray) -> np.ndarray:
        """Occ3D class of the ground at global points (..., 2): road, sidewalk, then terrain or
        other_flat (parking) beyond."""
        x, y = self.to_local(xy_global)
        d = self.lateral(x, y)
        beyond = np.where(
            self.segment_kind(x, d > 0) == SEGMENT_KINDS.index("parking"),
            CLASS["other_flat"],
            CLASS["terrain"],
        )
        sidewalk = np.abs(d) < self.half_width + SIDEWALK_WIDTH
        road = np.abs(d) < self.half_width
        return np.where(
            road, CLASS["driveable_surface"], np.where(sidewalk, CLASS["sidewalk"], beyond)
        ).astype(np.uint8)


@dataclass(frozen=True)
class Objects:
    """All boxes of a scene, one row each, in road coordinates at t = 0."""

    class_id: np.ndarray  # (K,) uint8 Occ3D class
    size: np.ndarray  # (K, 3) length, width, height in m
    x0: np.ndarray  # (K,) road position at t = 0, m
    lateral: np.ndarray  # (K,) m
    speed: np.ndarray  # (K,) m/s along +x (negative: drives towards -x)
    yaw_offset: np.ndarray  # (K,) rad relative to the road heading
    elevation: np.ndarray  # (K,) m of the box bottom above the ground
    tint: np.ndarray  # (K,) uint8 per-object colour variation
    annotated: np.ndarray  # (K,) bool: a moving-object class that gets sample_annotation boxes

    def boxes_at(self, road: Road, time_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Global box centres (K, 3) (z relative to the ground top) and global yaws (K,) at a time."""
        x = self.x0 + self.speed * time_s
        xy_local = road.place(x, self.lateral)
        xy = np.c_[xy_local, np.ones(len(x))] @ road.local2global()[:2].T
        backwards = np.where(self.speed < 0, np.pi, 0.0)
        yaw = road.heading(x) + self.yaw_offset + backwards + road.yaw
        z = self.elevation + self.size[:, 2] / 2
        return np.c_[xy, z], yaw


class _ObjectList:
    """Collects object rows while a scene is laid out."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.rows: list[tuple] = []

    def jittered_size(self, name: str) -> tuple[float, float, float]:
        """The class's typical (length, width, height), each varied by ±10 %."""
        return tuple(float(v) for v in np.asarray(SIZES[name]) * self.rng.uniform(0.9, 1.1, 3))

    def add(
        self,
        name: str,
        x: float,
        d: float,
        speed: float = 0.0,
        yaw_offset: float = 0.0,
        size: tuple[float, float, float] | None = None,
        elevation: float = 0.0,
    ) -> float:
        """Add one object (its size jittered unless given); returns its length."""
        if size is None:
            size = self.jittered_size(name)
        annotated = name in (
            "car",
            "truck",
            "bus",
            "trailer",
            "construction_vehicle",
            "motorcycle",
            "bicycle",
            "pedestrian",
        )
        self.rows.append(
            (CLASS[name], size, x, d, speed, yaw_offset, elevation, self.rng.integers(0, 256), annotated)
        )
        return size[0]

    def build(self) -> Objects:
        columns = list(zip(*self.rows, strict=True))
        return Objects(
            class_id=np.array(columns[0], np.uint8),
            size=np.array(columns[1], np.float64),
            x0=np.array(columns[2], np.float64),
            lateral=np.array(columns[3], np.float64),
            speed=np.array(columns[4], np.float64),
            yaw_offset=np.array(columns[5], np.float64),
            elevation=np.array(columns[6], np.float64),
            tint=np.array(columns[7], np.uint8),
            annotated=np.array(columns[8], bool),
        )


@dataclass(frozen=True)
class Scene:
    """One synthetic scene: the road, its objects and the ego car's drive."""

    road: Road
    objects: Objects
    ego_x0: float  # road position of the ego at t = 0, m
    ego_speed: float  # m/s
    ego_lateral: float  # m, the centre of the ego's lane

    def ego_pose(self, time_s: float) -> tuple[np.ndarray, float]:
        """Global ego position (3,) (z = 0, as nuScenes' planar ego poses) and global yaw."""
        x = self.ego_x0 + self.ego_speed * time_s
        xy = self.road.local2global() @ np.r_[self.road.place(np.array(x), np.array(self.ego_lateral)), 1.0]
        return np.array([xy[0], xy[1], 0.0]), float(self.road.heading(np.array(x)) + self.road.yaw)


def make_scene(rng: np.random.Generator, frames: int) -> Scene:
    """Lay out a random scene long enough for `frames` keyframes of driving."""
    lanes = int(rng.integers(1, 3))
    ego_speed = float(rng.uniform(3.0, 10.0))
    drive = ego_speed * FRAME_INTERVAL_S * max(frames - 1, 1)
    x_min, x_max = -80.0, drive + 80.0  # everything within sight of the whole drive
    segments = [_segments(rng, x_min, x_max) for _ in range(2)]
    length = max(len(s[0]) for s in segments)
    starts = np.full((2, length), np.inf)
    kinds = np.zeros((2, length), np.int64)
    for side, (s, k) in enumerate(segments):
        starts[side, : len(s)], kinds[side, : len(k)] = s, k
    road = Road(
        amplitude=float(rng.uniform(0.0, 12.0)),
        wavelength=float(rng.uniform(180.0, 320.0)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        lanes_per_direction=lanes,
        yaw=float(rng.uniform(-np.pi, np.pi)),
        origin=(float(rng.uniform(300, 2000)), float(rng.uniform(300, 2000))),
        segment_starts=starts,
        segment_kinds=kinds,
    )
    ego_lateral = -(lanes - 0.5) * LANE_WIDTH if lanes > 1 and rng.random() < 0.5 else -0.5 * LANE_WIDTH
    objects = _ObjectList(rng)
    _add_traffic(objects, road, x_min, x_max, ego_speed, ego_lateral)
    for side in (-1, 1):
        _add_roadside(objects, road, side, x_min, x_max)
    return Scene(road, objects.build(), 0.0, ego_speed, ego_lateral)


def _segments(rng: np.random.Generator, x_min: float, x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Roadside stretches: start positions and kinds, covering [x_min, x_max]."""
    starts, kinds, x = [], [], x_min - 50.0
    while x < x_max + 50.0:
        starts.append(x)
        kinds.append(int(rng.choice(len(SEGMENT_KINDS), p=[0.35, 0.25, 0.2, 0.2])))
        x += rng.uniform(20.0, 50.0)
    starts.append(x)  # where the last stretch ends
    kinds.append(0)
    return np.array(starts), np.array(kinds)


def _add_traffic(
    objects: _ObjectList, road: Road, x_min: float, x_max: float, ego_speed: float, ego_lateral: float
) -> None:
    """Vehicles in every lane (one speed per lane, so no overtaking), cyclists at the kerbs."""
    rng = objects.rng
    vehicle_names = ["car", "truck", "bus", "construction_vehicle", "motorcycle"]
    weights = np.array([0.52, 0.14, 0.1, 0.08, 0.16])
    for lane in range(road.lanes_per_direction):
        for direction in (1, -1):
            d = -direction * (lane + 0.5) * LANE_WIDTH
            ego_lane = direction == 1 and abs(d - ego_lateral) < 0.1
            speed = ego_speed if ego_lane else rng.uniform(2.0, 11.0) * (rng.random() > 0.1)
            # Extend the stretch by how far the lane moves, so traffic enters the view all along.
            travel = abs(speed) * 40.0
            x = x_min - travel * (direction == 1) + rng.uniform(0, 10)  # back end of the next slot
            while x < x_max + travel * (direction == -1):
                name = str(rng.choice(vehicle_names, p=weights))
                convoy = [name, "trailer"] if name == "truck" and rng.random() < 0.6 else [name]
                sizes = [objects.jittered_size(n) for n in convoy]
                if direction == 1:  # along +x the trailer comes first
                    convoy, sizes = convoy[::-1], sizes[::-1]
                total = sum(size[0] for size in sizes) + 0.6 * (len(sizes) - 1)
                if not (ego_lane and x < 8.0 and x + total > -8.0):  # keep clear of the ego car
                    front = x
                    for part, size in zip(convoy, sizes, strict=True):
                        objects.add(part, front + size[0] / 2, d, speed * direction, size=size)
                        front += size[0] + 0.6
                x += total + rng.uniform(3.0, 18.0)
    for direction in (1, -1):
        x = x_min + rng.uniform(0, 20)
        while x < x_max:
            objects.add("bicycle", x, -direction * (road.half_width - 0.8), rng.uniform(2.5, 5.0) * direction)
            x += rng.uniform(12.0, 40.0)


def _add_roadside(objects: _ObjectList, road: Road, side: int, x_min: float, x_max: float) -> None:
    """Kerb furniture, pedestrians, and each stretch's buildings, parking, park or construction site."""
    rng = objects.rng
    kerb = road.half_width
    outer = kerb + SIDEWALK_WIDTH
    # Pedestrians walk along the sidewalk or stand.
    x = x_min
    while x < x_max:
        speed = rng.choice([0.0, rng.uniform(0.8, 1.8), -rng.uniform(0.8, 1.8)], p=[0.3, 0.35, 0.35])
        objects.add(
            "pedestrian",
            x,
            side * rng.uniform(kerb + 0.9, outer - 0.5),
            float(speed),
            yaw_offset=float(rng.uniform(-0.3, 0.3)),
        )
        x += rng.uniform(2.0, 9.0)
    # Street lights, litter bins and parked two-wheelers on the sidewalk.
    x = x_min + rng.uniform(0, 10)
    while x < x_max:
        objects.add("manmade", x, side * (kerb + 0.4), size=(0.3, 0.3, float(rng.uniform(5.0, 7.0))))
        if rng.random() < 0.4:
            name = "motorcycle" if rng.random() < 0.5 else "bicycle"
            for i in range(int(rng.integers(1, 4))):
                objects.add(name, x + 7.0 + 1.2 * i, side * (kerb + 1.1), yaw_offset=np.pi / 2)
        if rng.random() < 0.6:
            objects.add(
                "others", x + rng.uniform(2, 6), side * (outer - 0.6), yaw_offset=float(rng.uniform(0, 1))
            )
        x += rng.uniform(12.0, 25.0)
    # Cones and barriers at the kerb, in runs.
    x = x_min + rng.uniform(0, 20)
    while x < x_max:
        if rng.random() < 0.5:
            for i in range(int(rng.integers(3, 8))):
                objects.add("traffic_cone", x + 1.5 * i, side * (kerb + 0.3))
        else:
            for i in range(int(rng.integers(2, 6))):
                objects.add("barrier", x + 2.1 * i, side * (kerb + 0.35))
        x += rng.uniform(15.0, 35.0)
    starts = road.segment_starts[0 if side < 0 else 1]
    kinds = road.segment_kinds[0 if side < 0 else 1]
    for start, end, kind in zip(starts[:-1], starts[1:], kinds[:-1], strict=True):
        if np.isfinite(end) and end > x_min and start < x_max:
            _SEGMENT_BUILDERS[SEGMENT_KINDS[kind]](objects, side, outer, float(start), float(end))


def _buildings(
    objects: _ObjectList,
    side: int,
    outer: float,
    start: float,
    end: float,
    setback: tuple[float, float] = (1.5, 5.0),
) -> None:
    rng = objects.rng
    x = start
    while x < end - 6.0:
        length = min(rng.uniform(8.0, 30.0), end - x)
        depth = rng.uniform(8.0, 16.0)
        height = rng.uniform(4.0, 16.0)
        offset = outer + rng.uniform(*setback) + depth / 2
        objects.add("manmade", x + length / 2, side * offset, size=(length, depth, height))
        x += length + rng.uniform(0.0, 6.0)
    _trees(objects, side, outer + 0.8, start, end, spacing=(8.0, 16.0))


def _parking(objects: _ObjectList, side: int, outer: float, start: float, end: float) -> None:
    rng = objects.rng
    for row_offset in (3.5, 9.5):
        x = start + 2.0
        while x < end - 2.0:
            if rng.random() < 0.75:
                name = "car" if rng.random() < 0.85 else "truck"
                objects.add(
                    name, x, side * (outer + row_offset), yaw_offset=np.pi / 2 + rng.uniform(-0.1, 0.1)
                )
            x += rng.uniform(2.6, 3.2)
    objects.add(
        "barrier", (start + end) / 2, side * (outer + 0.6), size=(min(end - start - 4, 12.0), 0.4, 1.0)
    )
    _buildings(objects, side, outer, start, end, setback=(14.0, 18.0))


def _park(objects: _ObjectList, side: int, outer: float, start: float, end: float) -> None:
    rng = objects.rng
    _trees(objects, side, outer + rng.uniform(1.0, 3.0), start, end, spacing=(4.0, 9.0))
    _trees(objects, side, outer + rng.uniform(8.0, 14.0), start, end, spacing=(5.0, 12.0))
    for _ in range(int((end - start) / 4)):
        objects.add(
            "vegetation",
            rng.uniform(start, end),
            side * (outer + rng.uniform(2.0, 20.0)),
            size=(rng.uniform(1.0, 3.0), rng.uniform(1.0, 2.5), rng.uniform(0.6, 1.4)),
        )
    if rng.random() < 0.5:  # a wall along the back of the park
        objects.add("manmade", (start + end) / 2, side * (outer + 22.0), size=(end - start, 0.4, 2.0))


def _construction(objects: _ObjectList, side: int, outer: float, start: float, end: float) -> None:
    rng = objects.rng
    middle = (start + end) / 2
    for i in range(int(rng.integers(1, 3))):
        objects.add(
            "construction_vehicle",
            middle + (i - 0.5) * 9.0,
            side * (outer + rng.uniform(5.0, 10.0)),
            yaw_offset=float(rng.uniform(0, np.pi)),
        )
    x = start + 1.0
    while x < end - 2.0:
        objects.add("barrier", x, side * (outer + 1.0))
        x += 2.2
    for _ in range(int(rng.integers(4, 10))):
        objects.add("traffic_cone", rng.uniform(start, end), side * (outer + rng.uniform(2.0, 14.0)))
    objects.add(
        "others",
        middle + rng.uniform(-8, 8),
        side * (outer + rng.uniform(3.0, 12.0)),
        size=(rng.uniform(1.5, 3.0), rng.uniform(1.0, 2.0), rng.uniform(0.8, 1.6)),
    )


def _trees(
    objects: _ObjectList, side: int, offset: float, start: float, end: float, spacing: tuple[float, float]
) -> None:
    """Trees: a trunk and a crown (both vegetation, as Occ3D labels them)."""
    rng = objects.rng
    x = start + rng.uniform(0.0, spacing[1])
    while x < end:
        if rng.random() < 0.7:
            trunk_height = rng.uniform(1.8, 3.0)
            crown = rng.uniform(2.5, 5.0)
            objects.add("vegetation", x, side * offset, size=(0.4, 0.4, trunk_height + 0.4))
            objects.add(
                "vegetation",
                x,
                side * offset,
                size=(crown, crown, rng.uniform(2.5, 4.5)),
                elevation=trunk_height,
                yaw_offset=float(rng.uniform(0, 1)),
            )
        x += rng.uniform(*spacing)


_SEGMENT_BUILDERS = {
    "buildings": _buildings,
    "parking": _parking,
    "park": _park,
    "construction": _construction,
}
