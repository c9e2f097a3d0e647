"""The training loop: exact resume, torchrun + gloo DDP, atomic checkpoints, the recipe's schedule and EMA."""

import copy
import math
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_dataset import MICRO_CONFIG, record_initial_weights, write_tiny_dataset

from occ.cli import main as occ_main
from occupancy.errors import InputError
from training import train as training
from training.data.dataset import OccupancyDataset, collate
from training.models.checkpoint import load_model, save_checkpoint
from training.models.configs import CONFIGS, ModelConfig, build_model
from training.train import LrSchedule, ModelEMA, TrainOptions, checkpoint_path, latest_checkpoint, save_atomic

REPO = Path(__file__).resolve().parents[1]
# The check: 20 iterations, an interruption, a resume and 20 more equal 40 straight. 3 frames
# in batches of 1 make 3 iterations per epoch, so the resume starts mid-epoch.
TRAIN_FRAMES, HALF, BATCH = 3, 20, 1


@pytest.fixture
def micro_config(monkeypatch):
    monkeypatch.setitem(CONFIGS, MICRO_CONFIG.name, MICRO_CONFIG)
    return MICRO_CONFIG.name


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    return write_tiny_dataset(root, scenes=TRAIN_FRAMES + 1, frames=1, val_scenes=1)


def run_training(data_root: Path, work_dir: Path, config: str, max_iters: int, resume: bool = False) -> Path:
    options = TrainOptions(config=config, data_root=data_root, work_dir=work_dir, max_iters=max_iters,
                           batch_size=BATCH, num_workers=0, checkpoint_interval=5, resume=resume,
                           log_interval=4,
                           progress=False)
    return training.train(options)


@pytest.mark.parametrize("mixed_precision", [False, True], ids=["fp32", "bf16"])
def test_resume_equals_uninterrupted_run(data_root, tmp_path, micro_config, monkeypatch, mixed_precision):
    # Cosine annealing too, so the resumed schedule must continue where it stood.
    recipe = replace(MICRO_CONFIG.recipe, warmup_iters=3, cosine_min_ratio=0.01,
                     mixed_precision=mixed_precision)
    config = replace(MICRO_CONFIG, recipe=recipe)
    monkeypatch.setitem(CONFIGS, micro_config, config)
    straight = run_training(data_root, tmp_path / "straight", micro_config, 2 * HALF)
    # An interruption right after the checkpoint at HALF: a work dir holding only that checkpoint.
    (tmp_path / "resumed").mkdir()
    shutil.copy(checkpoint_path(tmp_path / "straight", HALF), checkpoint_path(tmp_path / "resumed", HALF))
    resumed = run_training(data_root, tmp_path / "resumed", micro_config, 2 * HALF, resume=True)
    a = torch.load(straight, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    per_epoch = TRAIN_FRAMES // BATCH
    assert HALF % per_epoch != 0, "the resume should start mid-epoch"
    position = (2 * HALF, 2 * HALF // per_epoch, 2 * HALF % per_epoch)
    assert (a["step"], a["epoch"], a["batch"]) == (b["step"], b["epoch"], b["batch"]) == position
    for key in ("train_state_dict", "state_dict"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][index]["exp_avg"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2 * HALF
    assert a["scheduler"]["_last_lr"] == b["scheduler"]["_last_lr"]
    assert a["ema"]["updates"] == b["ema"]["updates"]
    # The run also left its logs, TensorBoard events and curve.
    work = tmp_path / "straight"
    log = (work / "train.log").read_text()
    assert log.count(f"step {2 * HALF} ") == 1
    assert f"precision torch.{'bfloat16' if mixed_precision else 'float32'}" in log
    assert list((work / "tensorboard").glob("events.out.tfevents.*"))
    assert (work / "training_curve.png").stat().st_size > 0
    # A resume that extends --max-iters anneals over the new length, not the checkpoint's.
    options = TrainOptions(config=micro_config, data_root=data_root, work_dir=work)
    content, stored = training.read_training_checkpoint(checkpoint_path(work, HALF), micro_config)
    assert stored == config
    trainer = training.build_trainer(options, config, training.Distributed(0, 1, torch.device("cpu")),
                                     4 * HALF, build_model(config))
    training.restore(trainer, content)
    assert trainer.scheduler.lr_lambdas[0].total_iters == 4 * HALF


def test_resume_with_gradient_accumulation_equals_uninterrupted_run(tmp_path, micro_config, monkeypatch):
    # 5 frames, global batch 2 of batch 1: 2 accumulated steps per epoch, the fifth frame left over.
    data_root = write_tiny_dataset(tmp_path / "data", scenes=6, frames=1, val_scenes=1)
    monkeypatch.setitem(CONFIGS, micro_config, replace(MICRO_CONFIG, recipe=replace(MICRO_CONFIG.recipe,
                                                                                     global_batch=2)))
    half = 5  # a checkpoint interval, and mid-epoch
    straight = run_training(data_root, tmp_path / "straight", micro_config, 2 * half)
    (tmp_path / "resumed").mkdir()
    shutil.copy(checkpoint_path(tmp_path / "straight", half), checkpoint_path(tmp_path / "resumed", half))
    resumed = run_training(data_root, tmp_path / "resumed", micro_config, 2 * half, resume=True)
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert (a["step"], a["epoch"], a["batch"]) == (b["step"], b["epoch"], b["batch"]) == (10, 5, 0)
    for name, value in a["train_state_dict"].items():
        assert torch.equal(value, b["train_state_dict"][name]), name
    log = (tmp_path / "straight/train.log").read_text()
    assert "global batch 2 = 1 process(es) x batch 1 x 2 accumulated" in log


def test_an_accumulated_step_follows_the_mean_gradient_of_its_batches(data_root, tmp_path):
    config = replace(MICRO_CONFIG, recipe=replace(MICRO_CONFIG.recipe, ema_decay=None, warmup_iters=0))
    dataset = OccupancyDataset(data_root, "train", config.input_size)
    batches = [collate([dataset[0]]), collate([dataset[1]])]
    options = TrainOptions(config=config.name, data_root=data_root, work_dir=tmp_path)
    cpu = training.Distributed(0, 1, torch.device("cpu"))
    torch.manual_seed(0)
    trainer = training.build_trainer(options, config, cpu, 10, build_model(config))
    expected = copy.deepcopy(trainer.raw_model)
    trainer.model.train()
    expected.train()
    losses = training.train_step(trainer, batches)
    # By hand: the mean of the two batches' losses, one backward, the same clipping and AdamW step.
    optimizer = torch.optim.AdamW(expected.parameters(), lr=config.recipe.lr, weight_decay=1e-2)
    by_hand = [expected.loss(expected(batch.camera_batch()), batch.targets()) for batch in batches]
    (sum(by_hand) / 2).backward()
    torch.nn.utils.clip_grad_norm_(expected.parameters(), config.recipe.grad_max_norm)
    optimizer.step()
    torch.testing.assert_close(losses["loss"], (by_hand[0] + by_hand[1]).detach() / 2)
    for name, value in trainer.raw_model.state_dict().items():
        torch.testing.assert_close(value, expected.state_dict()[name], msg=name)


def test_batch_plan_reaches_the_global_batch_by_accumulation(tmp_path):
    options = TrainOptions(config="flashocc-r50-256x704", data_root=tmp_path, work_dir=tmp_path)
    reference = CONFIGS["flashocc-r50-256x704"].recipe
    assert reference.global_batch == 32 and reference.batch_size == 4
    assert training.batch_plan(options, reference, 1) == training.BatchPlan(4, 8, 1)  # one GPU: 8 x 4
    assert training.batch_plan(options, reference, 8) == training.BatchPlan(4, 1, 8)  # the reference's 8 GPUs
    assert training.batch_plan(replace(options, batch_size=2), reference, 2) == training.BatchPlan(2, 8, 2)
    assert training.batch_plan(replace(options, global_batch=4), reference, 1) == training.BatchPlan(4, 1, 1)
    with pytest.raises(InputError, match="global batch 32 is not a multiple of 3 process"):
        training.batch_plan(options, reference, 3)


def test_load_from_loads_the_files_weights_strictly_or_partially(tmp_path):
    torch.manual_seed(1)
    source = build_model(MICRO_CONFIG)
    path = tmp_path / "source.pt"
    save_checkpoint(path, source, MICRO_CONFIG)
    options = TrainOptions(config=MICRO_CONFIG.name, data_root=tmp_path, work_dir=tmp_path, load_from=path)
    torch.manual_seed(2)
    model, report = training.initial_model(MICRO_CONFIG, options)
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert "every weight loaded (strict)" in report[0]
    # A detection-style checkpoint: backbone and neck fit, the head has another shape.
    wider = replace(MICRO_CONFIG, bev_encoder=replace(MICRO_CONFIG.bev_encoder, head_channels=12))
    with pytest.raises(InputError, match="wrong shape"):
        training.initial_model(wider, options)
    torch.manual_seed(2)
    fresh = build_model(wider).state_dict()
    torch.manual_seed(2)
    model, report = training.initial_model(wider, replace(options, partial=True))
    state = model.state_dict()
    assert torch.equal(state["img_backbone.conv1.weight"], source.state_dict()["img_backbone.conv1.weight"])
    assert torch.equal(state["occ_head.final_conv.conv.weight"], fresh["occ_head.final_conv.conv.weight"])
    assert "shape mismatch (left as initialised) (5): occ_head.final_conv.conv.bias (checkpoint [8], " \
           "model [12])" in report[0]


def test_pretrained_loads_a_torchvision_resnet_into_the_backbone_only(tmp_path):
    torch.manual_seed(3)
    backbone = build_model(MICRO_CONFIG).img_backbone
    imagenet = {key: value.clone() for key, value in backbone.state_dict().items()}
    imagenet["fc.weight"], imagenet["fc.bias"] = torch.zeros(1000, 64), torch.zeros(1000)  # the classifier
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet, path)  # torchvision's files are bare state dicts
    options = TrainOptions(config=MICRO_CONFIG.name, data_root=tmp_path, work_dir=tmp_path, pretrained=path)
    torch.manual_seed(4)
    model, report = training.initial_model(MICRO_CONFIG, options)
    for name, value in model.img_backbone.state_dict().items():
        assert torch.equal(value, imagenet[name]), name
    assert "missing in checkpoint (left as initialised) (0)" in report[0] and "fc.weight" not in report[0]
    torch.save({"layers.0.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, path)  # a Swin file
    with pytest.raises(InputError, match="none of its 1 tensors fit the ResNet backbone"):
        training.initial_model(MICRO_CONFIG, options)


def test_training_changes_weights_and_keeps_config_name(data_root, tmp_path, micro_config):
    final = run_training(data_root, tmp_path, micro_config, 2)
    content = torch.load(final, weights_only=True)
    assert content["config"] == micro_config
    training.seed_everything(0)  # the run's seed: the same initial weights
    initial = build_model(MICRO_CONFIG).state_dict()
    changed = [not torch.equal(value, content["train_state_dict"][name])
               for name, value in initial.items() if value.is_floating_point()]
    assert any(changed)


def test_the_evaluated_and_exported_weights_are_the_ema_of_the_trained_ones(data_root, tmp_path, micro_config,
                                                                          monkeypatch):
    """What `occ eval` and `occ export` load from a checkpoint (`load_model`: its `state_dict`) is the EMA
    of the weights the step trained: after one step, decay(1) x initial + (1 - decay(1)) x trained."""
    # No warm-up and a large lr, so one step moves every weight visibly; the ramp from 0 makes the EMA
    # follow the trained weights (decay(1) = 0.999 x (1 - exp(-1 / 2000)), about 5e-4).
    recipe = replace(MICRO_CONFIG.recipe, lr=1e-2, warmup_iters=0, ema_init_updates=0)
    config = replace(MICRO_CONFIG, recipe=recipe)
    monkeypatch.setitem(CONFIGS, micro_config, config)
    final = run_training(data_root, tmp_path, micro_config, 1)
    trained = torch.load(final, weights_only=True)["train_state_dict"]
    training.seed_everything(0)  # the run's seed: the same initial weights
    initial = build_model(config).state_dict()
    decay = recipe.ema_decay * (1 - math.exp(-1 / 2000))
    deployed = load_model(final)[0].state_dict()
    moved = 0.0
    for name, value in deployed.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, decay * initial[name] + (1 - decay) * trained[name], msg=name)
            moved = max(moved, float((value - initial[name]).abs().max()))
    assert moved > 1e-3  # the deployed weights left their initial values


def test_occ_train_load_from_starts_from_the_files_weights(data_root, tmp_path, micro_config, monkeypatch):
    """`occ train --load-from FILE`: the first step starts from FILE's weights (through the CLI and train)."""
    torch.manual_seed(5)
    source = build_model(MICRO_CONFIG)
    path = tmp_path / "source.pt"
    save_checkpoint(path, source, MICRO_CONFIG)
    started = record_initial_weights(monkeypatch)
    code = occ_main(["train", "--config", micro_config, "--data-root", str(data_root), "--work-dir",
                     str(tmp_path / "work"), "--max-iters", "1", "--batch-size", "1", "--num-workers", "0",
                     "--load-from", str(path)])
    assert code == 0 and len(started) == 1
    for name, value in source.state_dict().items():
        assert torch.equal(started[0][name], value), name


def test_two_process_ddp_with_gloo(data_root, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from tiny_dataset import MICRO_CONFIG\n"
        "from training.models.configs import CONFIGS\n"
        "CONFIGS[MICRO_CONFIG.name] = MICRO_CONFIG\n"
        "from occ.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    work = tmp_path / "work"
    command = [str(torchrun), "--nproc_per_node=2", "--standalone", str(script), "train",
               "--config", MICRO_CONFIG.name, "--data-root", str(data_root), "--work-dir", str(work),
               "--max-iters", "3", "--batch-size", "1", "--num-workers", "0", "--log-interval", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # A session of its own, so a hung run is killed with all its worker processes.
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    errors = "\n".join(line for line in stderr.splitlines() if "Warning" not in line)
    assert process.returncode == 0, errors[-3000:]
    log = (work / "train.log").read_text()
    assert "2 process(es) x batch 1" in log
    assert log.count("step 3 ") == 1  # only rank 0 writes
    assert [p.name for p in work.glob("iter_*.pt")] == ["iter_0000003.pt"]


def test_checkpoint_appears_only_complete(tmp_path, monkeypatch):
    target = tmp_path / "iter_0000005.pt"

    def interrupted_save(content, file):
        file.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"weights": torch.ones(3)}, target)
    assert list(tmp_path.iterdir()) == []
    assert latest_checkpoint(tmp_path) is None
    monkeypatch.undo()
    save_atomic({"weights": torch.ones(3)}, target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert torch.equal(torch.load(target, weights_only=True)["weights"], torch.ones(3))


def test_warmup_matches_mmcv_linear_warmup():
    warmup = LrSchedule(warmup_iters=200, warmup_ratio=0.001)
    # mmcv: lr = base * (1 - (1 - i / warmup_iters) * (1 - warmup_ratio)) during warm-up.
    assert warmup(0) == pytest.approx(0.001)
    assert warmup(100) == pytest.approx(1 - 0.5 * 0.999)
    assert warmup(200) == warmup(5000) == 1.0


def test_cosine_annealing_matches_mmcv_with_warmup():
    schedule = LrSchedule(warmup_iters=100, warmup_ratio=0.1, total_iters=1000, min_ratio=0.01)
    # mmcv's CosineAnnealing: min + (1 - min) * (1 + cos(pi * i / total)) / 2, times the warm-up factor.
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(50) == pytest.approx((0.01 + 0.99 * (1 + math.cos(math.pi * 0.05)) / 2) * 0.55)
    assert schedule(500) == pytest.approx(0.505)
    assert schedule(1000) == pytest.approx(0.01)
    assert schedule(100) > schedule(400) > schedule(900)


def test_ema_follows_megvii_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.999, updates=10560)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    decay = 0.999 * (1 - math.exp(-10561 / 2000))
    assert ema.module.weight.item() == pytest.approx(1 - decay)
    assert ema.updates == 10561


def test_missing_index_says_to_run_prepare(tmp_path, capsys):
    code = occ_main(["train", "--config", "demo-tiny", "--data-root", str(tmp_path), "--work-dir",
                     str(tmp_path / "work"), "--max-iters", "1"])
    assert code == 2
    assert "occ prepare" in capsys.readouterr().err


def test_precision_follows_the_recipe_unless_amp_or_fp32_is_given(tmp_path):
    cpu = torch.device("cpu")
    options = TrainOptions(config="demo-tiny", data_root=tmp_path, work_dir=tmp_path)

    def precision(options: TrainOptions, config: ModelConfig) -> torch.dtype | None:
        return training.autocast_dtype(cpu, training.mixed_precision(options, config.recipe))

    demo, reference = CONFIGS["demo-tiny"], CONFIGS["flashocc-r50-m0-256x704"]
    assert precision(options, demo) == torch.bfloat16  # demo-tiny's recipe: bf16 on CPUs
    assert precision(replace(options, fp32=True), demo) is None
    assert precision(options, reference) is None  # the reference configs train in float32, as the reference
    assert precision(replace(options, amp=True), reference) == torch.bfloat16
    with pytest.raises(InputError, match="--amp and --fp32"):
        training.mixed_precision(replace(options, amp=True, fp32=True), demo.recipe)
    trainer = training.build_trainer(options, demo, training.Distributed(0, 1, cpu), 1, build_model(demo))
    assert trainer.autocast_dtype == torch.bfloat16


def test_grad_checkpointing_reaches_the_config(tmp_path):
    options = TrainOptions(config="flashocc-r50-256x704", data_root=tmp_path, work_dir=tmp_path,
                           grad_checkpointing=True)
    assert training.model_config(options).backbone.with_cp
    plain = replace(options, config="demo-tiny", grad_checkpointing=False)
    assert not training.model_config(plain).backbone.with_cp
