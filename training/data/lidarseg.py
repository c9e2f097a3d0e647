"""nuScenes-lidarseg point labels as Occ3D classes: the 2D semantic labels of rendering supervision on
real roots, where the keyframe LiDAR sweep projected into each camera gives each ray its class.

The mapping by category name is RenderOcc's (tools/gen_data/gen_seg_gt_from_lidarseg.py `label_map`),
which merges the 32 lidarseg categories into the 17 occupied Occ3D classes, except that points of
`noise` and `vehicle.ego` are dropped rather than called `others`: sensor noise and the car's own
body are no surface of the scene. `occ prepare` turns the root's category indices (category.json,
read through nuscenes-devkit) into a lookup table per sweep; the dataset reads the .bin files.
"""

from pathlib import Path

import numpy as np

from occupancy.classes import CLASS_NAMES, IGNORE_INDEX
from occupancy.errors import InputError

# lidarseg category -> Occ3D class name; None: the point labels no ray.
LIDARSEG_TO_OCC3D: dict[str, str | None] = {
    "noise": None,
    "vehicle.ego": None,
    "animal": "others",
    "human.pedestrian.personal_mobility": "others",
    "human.pedestrian.stroller": "others",
    "human.pedestrian.wheelchair": "others",
    "movable_object.debris": "others",
    "movable_object.pushable_pullable": "others",
    "static_object.bicycle_rack": "others",
    "vehicle.emergency.ambulance": "others",
    "vehicle.emergency.police": "others",
    "static.other": "others",
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
    "flat.driveable_surface": "driveable_surface",
    "flat.other": "other_flat",
    "flat.sidewalk": "sidewalk",
    "flat.terrain": "terrain",
    "static.manmade": "manmade",
    "static.vegetation": "vegetation",
}


def occ3d_lookup(index_to_name: dict[int, str]) -> list[int]:
    """Occ3D class per lidarseg label index (IGNORE_INDEX for dropped points), from the devkit's
    `lidarseg_idx2name_mapping`; InputError for a category this mapping does not know."""
    unknown = sorted(set(index_to_name.values()) - LIDARSEG_TO_OCC3D.keys())
    if unknown:
        raise InputError(f"lidarseg categories without an Occ3D class: {', '.join(unknown)}")
    table = [IGNORE_INDEX] * (max(index_to_name) + 1)
    for index, name in index_to_name.items():
        occ3d = LIDARSEG_TO_OCC3D[name]
        table[index] = IGNORE_INDEX if occ3d is None else CLASS_NAMES.index(occ3d)
    return table


def read_lidarseg(path: Path, lookup: list[int], points: int) -> np.ndarray:
    """Occ3D classes (uint8, IGNORE_INDEX for dropped points) of a sweep's `points` from its lidarseg .bin
    (one uint8 category index per point)."""
    try:
        labels = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise InputError(f"{path}: unreadable lidarseg labels ({error.strerror})") from error
    if labels.size != points:
        raise InputError(f"{path}: {labels.size} lidarseg labels for a sweep of {points} points")
    table = np.asarray(lookup, dtype=np.uint8)
    if labels.size and labels.max() >= table.size:
        raise InputError(f"{path}: label {labels.max()} beyond the root's {table.size} lidarseg categories")
    return table[labels]
