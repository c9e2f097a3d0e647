"""Training from 2D labels alone (`occ train --supervision 2d`): the rendering losses fall, the 3D labels
play no part, a run resumes exactly with the rendering head, and the switch reaches any config."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_dataset import MICRO_CONFIG, MICRO_TEMPORAL_CONFIG, write_synthetic_scene

from occ.cli import main as occ_main
from occupancy.errors import InputError
from training import train as training
from training.data.dataset import OccupancyDataset, collate
from training.data.rays import RaySampling
from training.models.checkpoint import load_model
from training.models.configs import CONFIGS, BevEncoder3DConfig, ModelConfig, RenderOccHeadConfig, build_model
from training.models.nerf_head import NerfHeadConfig, nerf_head_config
from training.models.render_occ_head import DensitySemantics
from training.models.view_transformer import VoxelGridConfig
from training.train import TrainOptions, checkpoint_path

RENDERING_LOSSES = ("loss_render_depth", "loss_render_semantic", "loss_sdf_entropy", "loss_sdf_distortion")
MICRO_2D = replace(
    MICRO_CONFIG,
    name="test-micro-2d",
    render_occ=RenderOccHeadConfig(test_threshold=13.8),
    nerf_head=NerfHeadConfig(),
    recipe=replace(MICRO_CONFIG.recipe, supervision="2d", warmup_iters=2, lr=2e-3,
                   rays=RaySampling(max_rays=256, aux_frames=(-1, 1))),
)
HALF = 3  # iterations before the interruption: mid-epoch with 4 frames in batches of 1
RENDERING_4D_CONFIGS = ("renderocc-r50-4d-stereo-256x704", "flashocc-renderocc-r50-4d-stereo-256x704",
                        "renderocc-swinb-4d-stereo-2dgt")


def micro_4d(name: str) -> ModelConfig:
    """The micro BEVStereo4D network with a named 4D config's heads and supervision; a 3D voxel encoder (4
    channels, the Occ3D grid) where the named one has one."""
    named = CONFIGS[name]
    config = replace(MICRO_TEMPORAL_CONFIG, name=f"test-micro-{name}", render_occ=named.render_occ,
                     nerf_head=named.nerf_head,
                     recipe=replace(MICRO_2D.recipe, supervision=named.recipe.supervision))
    if isinstance(named.bev_encoder, BevEncoder3DConfig):
        config = replace(config, pool_grid=VoxelGridConfig(), upsample_bev=False, bev_channels=4,
                         bev_encoder=BevEncoder3DConfig(num_layer=(1, 1, 1), num_channels=(4, 8, 16),
                                                        head_channels=8))
    return config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_synthetic_scene(tmp_path_factory.mktemp("synth"), seed=2)


@pytest.fixture
def micro_2d(monkeypatch):
    monkeypatch.setitem(CONFIGS, MICRO_2D.name, MICRO_2D)
    monkeypatch.setitem(CONFIGS, MICRO_CONFIG.name, MICRO_CONFIG)
    return MICRO_2D


def trainer_for(config, data_root: Path, tmp_path: Path) -> training.Trainer:
    options = TrainOptions(config=config.name, data_root=data_root, work_dir=tmp_path)
    torch.manual_seed(0)
    return training.build_trainer(options, config, training.Distributed(0, 1, torch.device("cpu")), 50,
                                  build_model(config))


def test_a_few_2d_only_iterations_lower_the_rendering_losses(data_root, tmp_path):
    dataset = OccupancyDataset(data_root, "train", MICRO_2D.input_size, rays=MICRO_2D.recipe.rays)
    batch = collate([dataset[1]])
    fast = replace(MICRO_2D, recipe=replace(MICRO_2D.recipe, ema_decay=None, lr=1e-2, warmup_iters=0))
    trainer = trainer_for(fast, data_root, tmp_path)
    trainer.model.train()
    history = [training.train_step(trainer, [batch]) for _ in range(12)]
    assert set(history[0]) == {"loss", *RENDERING_LOSSES}  # no 3D loss at all
    # Rays start out nearly transparent (alpha_init 1e-6): the depth loss moves first, the semantics follow
    # once surfaces take weight.
    def late(name: str) -> float:
        return sum(h[name] for h in history[-3:]) / 3

    assert late("loss_render_depth") < 0.9 * history[0]["loss_render_depth"]
    assert late("loss") < history[0]["loss"]


def test_2d_only_training_never_reads_the_3d_labels(data_root, tmp_path):
    """The same step on the same batch gives the same weights whatever the Occ3D labels say."""
    dataset = OccupancyDataset(data_root, "train", MICRO_2D.input_size, rays=MICRO_2D.recipe.rays)
    batch = collate([dataset[0]])
    scrambled = replace(batch, semantics=torch.randint(0, 18, batch.semantics.shape, dtype=torch.uint8),
                        mask_camera=torch.rand(batch.mask_camera.shape) < 0.5)
    weights = []
    for labels in (batch, scrambled):
        trainer = trainer_for(MICRO_2D, data_root, tmp_path)
        trainer.model.train()
        training.train_step(trainer, [labels])
        weights.append(trainer.raw_model.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def test_3d_plus_2d_adds_the_rendering_losses_to_the_voxel_loss(data_root, tmp_path):
    both = training.with_supervision(MICRO_2D, "3d+2d")
    dataset = OccupancyDataset(data_root, "train", both.input_size, rays=both.recipe.rays)
    trainer = trainer_for(both, data_root, tmp_path)
    trainer.model.train()
    losses = training.train_step(trainer, [collate([dataset[0]])])
    assert set(losses) == {"loss", "loss_3d_geo", "loss_3d_sem", *RENDERING_LOSSES}
    parts = sum(value for name, value in losses.items() if name != "loss")
    assert losses["loss_3d_geo"] > 0 and torch.isclose(losses["loss"], parts)


@pytest.mark.parametrize("name", RENDERING_4D_CONFIGS)
def test_the_4d_rendering_configs_train_under_their_supervision(data_root, tmp_path, name):
    """The UniOcc-style rows train on 3D + rendering losses, the 2D-label row on rendering alone; the
    rendering losses reach the head (BEVStereo4D, its history frames and rays together)."""
    config = micro_4d(name)
    assert config.recipe.supervision == ("2d" if name.endswith("2dgt") else "3d+2d")
    dataset = OccupancyDataset(data_root, "train", config.input_size, depth=True,
                               history_frames=config.history_frames, rays=config.recipe.rays)
    trainer = trainer_for(config, data_root, tmp_path)
    trainer.model.train()
    before = trainer.raw_model.density_mlp[0].weight.detach().clone()
    losses = training.train_step(trainer, [collate([dataset[2]])])
    voxel = {"loss_3d_geo", "loss_3d_sem"} if config.recipe.voxel_labels else set()
    assert set(losses) == {"loss", "loss_depth", *RENDERING_LOSSES, *voxel}
    assert all(torch.isfinite(value) for value in losses.values())
    assert not torch.equal(trainer.raw_model.density_mlp[0].weight, before)
    assert "nerf_head.act_shift" in trainer.raw_model.state_dict()


def run(data_root: Path, work_dir: Path, config: str, iters: int, resume: bool = False,
        supervision: str | None = None) -> Path:
    return training.train(TrainOptions(config=config, data_root=data_root, work_dir=work_dir, max_iters=iters,
                                       batch_size=1, num_workers=0, checkpoint_interval=HALF, resume=resume,
                                       log_interval=HALF, progress=False, supervision=supervision))


def test_resume_with_the_rendering_head_equals_an_uninterrupted_run(data_root, tmp_path, micro_2d):
    straight = run(data_root, tmp_path / "straight", micro_2d.name, 2 * HALF)
    (tmp_path / "resumed").mkdir()
    shutil.copy(checkpoint_path(tmp_path / "straight", HALF), checkpoint_path(tmp_path / "resumed", HALF))
    resumed = run(data_root, tmp_path / "resumed", micro_2d.name, 2 * HALF, resume=True)
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert (a["step"], a["epoch"], a["batch"]) == (b["step"], b["epoch"], b["batch"]) == (6, 1, 2)
    assert "nerf_head.act_shift" in a["state_dict"]
    for key in ("train_state_dict", "state_dict"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    log = (tmp_path / "straight/train.log").read_text()
    assert "supervision 2d: 256 rays drawn per sample from 2D labels" in log
    assert "loss_render_depth" in log and "loss_occ" not in log


def test_supervision_2d_trains_a_config_without_a_rendering_head(data_root, tmp_path, micro_2d):
    """--supervision 2d on a config with a plain 18-class head: the rendering head comes with it, the
    checkpoint records how it was trained and rebuilds the same model for evaluation."""
    final = run(data_root, tmp_path / "work", MICRO_CONFIG.name, 2, supervision="2d")
    model, config = load_model(final)
    assert config.recipe.supervision == "2d" and config.nerf_head == nerf_head_config(MICRO_CONFIG.grid)
    assert model.nerf_head is not None and config.render_occ is None
    log = (tmp_path / "work/train.log").read_text()
    assert "loss_render_semantic" in log and "loss_occ" not in log
    with pytest.raises(InputError, match="trains with '2d'"):
        run(data_root, tmp_path / "work", MICRO_CONFIG.name, 4, resume=True, supervision="3d")


def test_supervision_2d_makes_an_argmax_render_occ_head_decide_by_threshold():
    argmax_head = replace(MICRO_2D, render_occ=RenderOccHeadConfig(), nerf_head=None,
                          recipe=MICRO_CONFIG.recipe)
    assert training.with_supervision(argmax_head, "3d+2d").render_occ.test_threshold is None
    two_d = training.with_supervision(argmax_head, "2d")
    assert two_d.render_occ.test_threshold == 8.5 and two_d.nerf_head == NerfHeadConfig()


def test_occ_train_names_a_bad_supervision(capsys):
    assert occ_main(["train", "--config", "demo-tiny", "--data-root", ".", "--work-dir", ".",
                     "--supervision", "4d"]) != 0
    assert "--supervision: expected one of 3d, 2d, 3d+2d, got '4d'" in capsys.readouterr().err


def test_render_occ_scores_take_the_argmax_of_the_reference_rules():
    """A single-frame model (and its export) takes the argmax of the head's scores: it must be the
    head's own rule, the seed's density argmax or pmj's threshold."""
    torch.manual_seed(0)
    head = build_model(MICRO_2D).occ_head.eval()
    with torch.no_grad():
        output = head(torch.randn(1, 8, 200, 200))
    density, semantic = output
    for threshold in (None, float(density[..., 0].median())):
        head.test_threshold = threshold
        margin = density[..., 0] - (density[..., 1] if threshold is None else threshold)
        expected = torch.where(margin > 0, semantic.argmax(-1), torch.full_like(semantic[..., 0], 17).long())
        assert 0 < (margin > 0).float().mean() < 1
        clear = margin.abs() > 1e-4  # not a tie within float rounding
        assert torch.equal(head.scores(output).argmax(-1)[clear], expected[clear])
        assert torch.equal(head.classes(output)[clear], expected[clear])


def test_demo_tiny_2d_has_the_m5_configs_head():
    """demo-tiny-2d is built from the RenderOcc head class the 4D RenderOcc configs use; its forward gives
    density and semantics, its prediction the classes. It renders the reference's ray budget, a uniform
    part of it, with the sky pixels among the rays, the rays labelled above the grid crossing it as sky,
    and the sky, surface and surface-semantic losses on."""
    config = CONFIGS["demo-tiny-2d"]
    assert config.recipe.supervision == "2d"
    assert config.nerf_head == NerfHeadConfig(weight_sky=1.0, weight_surface=1.0, sky_outside_height=True,
                                             weight_surface_semantic=1.0)
    rays = config.recipe.rays
    assert rays.max_rays == RaySampling().max_rays and rays.rendered_rays < rays.max_rays and rays.sky
    head = build_model(config).occ_head
    assert type(head) is type(build_model(replace(MICRO_TEMPORAL_CONFIG, render_occ=RenderOccHeadConfig(),
                                                  )).occ_head)
    output = head(torch.zeros(1, config.bev_encoder.neck_channels, 200, 200))
    assert isinstance(output, DensitySemantics) and output.density.shape == (1, 200, 200, 16, 2)
