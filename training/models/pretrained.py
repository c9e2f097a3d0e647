"""ImageNet initialisation of a model's image backbone, as the reference's `pretrained=` does.

The reference configs start their backbone from ImageNet weights (`torchvision://resnet50`; Swin-B from
its ImageNet-22k checkpoint) before `load_from` lays a detection checkpoint over the whole model. Weights
cannot be downloaded here: the file is read from disk (README, "Data and training", says where to get
it). Each backbone class maps its ImageNet layout onto its own names with a static
`imagenet_state_dict(state)`; the rest of the model keeps its initialisation.
"""

from pathlib import Path

from torch import nn

from occupancy.errors import InputError
from training.models.checkpoint import (
    PartialLoad,
    extract_state_dict,
    load_state_dict_partial,
    read_checkpoint,
)

BACKBONE = "img_backbone"


def load_pretrained_backbone(model: nn.Module, path: Path) -> PartialLoad:
    """Copies an ImageNet checkpoint into `model.img_backbone` (names remapped by the backbone class);
    InputError when nothing of it fits, which means a file for another architecture."""
    backbone = getattr(model, BACKBONE)
    remap = getattr(type(backbone), "imagenet_state_dict", None)
    if remap is None:
        raise InputError(f"--pretrained: the config's backbone {type(backbone).__name__} has no ImageNet "
                         "key mapping")
    source = f"--pretrained {path}"
    state = remap(extract_state_dict(read_checkpoint(path), source))
    report = load_state_dict_partial(backbone, state)
    if not report.loaded:
        raise InputError(f"{source}: none of its {len(state)} tensors fit the {type(backbone).__name__} "
                         f"backbone (is it the right architecture?)\n{report.table()}")
    return report
