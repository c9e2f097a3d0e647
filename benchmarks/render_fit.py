"""How far the rendering losses alone take a voxel grid: no network, a free density and semantic grid
fitted to one training sample's rays, scored against that sample's 3D labels (mIoU and geometry IoU over
its visible voxels, at several density thresholds).

It separates what the losses ask for from what a network learns: a loss set whose best grid scores low
cannot train a good 2D-label model. Each variant is the rendering head's config with some losses on:
the reference's four, then demo-tiny-2d's additions one at a time (training/models/nerf_head.py).

Run: `.venv/bin/python -m benchmarks.render_fit [--data-root work/synth-demo] [--sample 0] [--steps 200]`
"""

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.http_predict import load_average
from benchmarks.timing import markdown_table, report_header
from occupancy.classes import FREE_CLASS
from occupancy.metrics import OccupancyMetric
from training.batch import RayBatch
from training.data.dataset import OccupancyDataset
from training.data.rays import Rays, RaySampling
from training.models.configs import get_config
from training.models.nerf_head import NerfHead, NerfHeadConfig
from training.models.rendering import density_at_voxel_opacity

# pmj RenderOcc's 8.5, then a voxel stopping 10 %, 25 % (demo-tiny-2d's test threshold) and 50 % of the light
THRESHOLDS = (8.5, *(density_at_voxel_opacity(opacity) for opacity in (0.1, 0.25, 0.5)))


def variants() -> dict[str, NerfHeadConfig]:
    """The loss sets compared: the reference's, then demo-tiny-2d's additions one by one."""
    ours = get_config("demo-tiny-2d").nerf_head
    reference = replace(ours, weight_sky=0.0, weight_surface=0.0, sky_outside_height=False,
                        weight_surface_semantic=0.0)
    sky = replace(reference, weight_sky=ours.weight_sky)
    surface = replace(sky, weight_surface=ours.weight_surface)
    return {
        "reference losses": reference,
        "+ sky rays": sky,
        "+ surface": surface,
        "+ labels above the grid as sky": replace(surface, sky_outside_height=True),
        "+ surface semantics (demo-tiny-2d)": ours,
    }


def fit(head: NerfHead, rays: Rays, steps: int, rays_per_step: int, lr: float, seed: int,
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on a raw density and 17 semantic logits per voxel (the density through the heads' final
    Softplus), `rays_per_step` random rays of the sample a step; returns the fitted density and classes."""
    generator = torch.Generator().manual_seed(seed)
    shape = (200, 200, 16)
    density = torch.zeros(shape, requires_grad=True)
    semantic = torch.zeros(*shape, head.class_weights.numel(), requires_grad=True)
    optimiser = torch.optim.Adam([density, semantic], lr=lr)
    for step in range(steps):
        pick = torch.randperm(len(rays.depth), generator=generator)[:rays_per_step]
        batch = RayBatch(rays.origins[pick][None], rays.directions[pick][None], rays.depth[pick][None],
                         rays.semantics[pick][None])
        loss = sum(head(F.softplus(density)[None], semantic[None], batch, torch.eye(3)[None]).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step}: loss {loss.item():.3f}", flush=True)
    return F.softplus(density).detach(), semantic.detach().argmax(-1)


def scores(density: torch.Tensor, classes: torch.Tensor, semantics: np.ndarray, visible: np.ndarray,
           threshold: float) -> tuple[float, float]:
    """mIoU (percent) and geometry IoU (occupied or not) over the visible voxels."""
    pred = np.where((density > threshold).numpy(), classes.numpy(), FREE_CLASS)
    metric = OccupancyMetric()
    metric.update(pred, semantics, visible)
    truth, occupied = (semantics != FREE_CLASS) & visible, (pred != FREE_CLASS) & visible
    return metric.miou(), float((truth & occupied).sum() / (truth | occupied).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="work/synth-demo")
    parser.add_argument("--sample", type=int, default=0, help="index into the train split")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rays", type=int, default=8192, help="rays per step, of the sample's 38,400")
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()
    load_at_start = load_average()
    dataset = OccupancyDataset(args.data_root, "train", (256, 704), rays=RaySampling(sky=True))
    sample = dataset[args.sample]
    semantics, visible = sample.semantics.numpy(), sample.mask_camera.numpy()
    rows = []
    for name, config in variants().items():
        print(name, flush=True)
        started = time.perf_counter()
        density, classes = fit(NerfHead(config), sample.rays, args.steps, args.rays, args.lr, seed=0)
        seconds = time.perf_counter() - started
        cells = [f"{m:.1f} / {g:.3f}" for m, g in
                 (scores(density, classes, semantics, visible, t) for t in THRESHOLDS)]
        rows.append([name, *cells, f"{seconds:.0f}"])
    print(f"\nsample {sample.token} of {args.data_root} ({len(sample.rays.depth)} rays, "
          f"{int((sample.rays.depth == float('inf')).sum())} of them sky), {args.steps} Adam steps of "
          f"{args.rays} rays, lr {args.lr}\n")
    print("\n".join(report_header(load_at_start)) + "\n")
    header = ["losses", *(f"mIoU / geometry IoU at {t:.2f}" for t in THRESHOLDS), "fit s"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
