"""The training loop: exact resume, torchrun + gloo DDP, atomic checkpoints, the recipe's schedule and EMA."""

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
from tiny_dataset import MICRO_CONFIG, write_tiny_dataset

from occ.cli import main as occ_main
from training import train as training
from training.models.configs import CONFIGS, build_model
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


@pytest.mark.parametrize("cpu_bf16", [False, True], ids=["fp32", "bf16"])
def test_resume_equals_uninterrupted_run(data_root, tmp_path, micro_config, monkeypatch, cpu_bf16):
    # Cosine annealing too, so the resumed schedule must continue where it stood.
    monkeypatch.setitem(training.RECIPES, micro_config, replace(training.TrainRecipe(), warmup_iters=3,
                                                                cosine_min_ratio=0.01, cpu_bf16=cpu_bf16))
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
    assert f"precision torch.{'bfloat16' if cpu_bf16 else 'float32'}" in log
    assert list((work / "tensorboard").glob("events.out.tfevents.*"))
    assert (work / "training_curve.png").stat().st_size > 0
    # A resume that extends --max-iters anneals over the new length, not the checkpoint's.
    options = TrainOptions(config=micro_config, data_root=data_root, work_dir=work)
    trainer = training.build_trainer(options, training.recipe_for(micro_config),
                                     training.Distributed(0, 1, torch.device("cpu")), max_iters=4 * HALF)
    training.restore(trainer, checkpoint_path(work, HALF), micro_config)
    assert trainer.scheduler.lr_lambdas[0].total_iters == 4 * HALF


def test_training_changes_weights_and_keeps_config_name(data_root, tmp_path, micro_config):
    final = run_training(data_root, tmp_path, micro_config, 2)
    content = torch.load(final, weights_only=True)
    assert content["config"] == micro_config
    training.seed_everything(0)  # the run's seed: the same initial weights
    initial = build_model(MICRO_CONFIG).state_dict()
    changed = [not torch.equal(value, content["train_state_dict"][name])
               for name, value in initial.items() if value.is_floating_point()]
    assert any(changed)


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


def test_fp32_overrides_the_recipes_cpu_bf16(tmp_path):
    assert training.recipe_for("demo-tiny").cpu_bf16
    cpu = training.Distributed(0, 1, torch.device("cpu"))
    options = TrainOptions(config="demo-tiny", data_root=tmp_path, work_dir=tmp_path)
    recipe = training.recipe_for("demo-tiny")

    def precision(options: TrainOptions, recipe: training.TrainRecipe) -> torch.dtype | None:
        return training.build_trainer(options, recipe, cpu, max_iters=1).autocast_dtype

    assert precision(options, recipe) == torch.bfloat16
    assert precision(replace(options, fp32=True), recipe) is None
    assert precision(options, training.TrainRecipe()) is None


def test_grad_checkpointing_reaches_the_config(tmp_path):
    options = TrainOptions(config="flashocc-r50-256x704", data_root=tmp_path, work_dir=tmp_path,
                           grad_checkpointing=True)
    assert training.model_config(options).backbone.with_cp
    plain = replace(options, config="demo-tiny", grad_checkpointing=False)
    assert not training.model_config(plain).backbone.with_cp
