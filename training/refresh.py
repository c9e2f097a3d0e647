"""`occ refresh`: train (or fine-tune the served version), evaluate, export, check parity, publish.

One run lives in `<work dir>/refresh-<UTC time>/` (checkpoints, the export and its model card), so the
checkpoint a card names stays where it was. The served version's card (`card.json` in the repository's
newest version) says which checkpoint to fine-tune from and which mIoU to beat: a new model whose val
mIoU is more than `threshold` points below it is not published unless forced.
"""

import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from occupancy.errors import InputError
from occupancy.model_repository import CARD_JSON, CARD_MARKDOWN, Runtime, model_runtime, version_numbers
from training.publish import Published, publish

log = logging.getLogger("occ.refresh")


@dataclass(frozen=True)
class RefreshOptions:
    config: str
    data_root: Path
    work_dir: Path
    repository: Path
    name: str | None = None  # served model name; default: the config name
    max_iters: int | None = None  # default: the config's recipe
    batch_size: int | None = None
    num_workers: int = 2
    threshold: float = 1.0  # mIoU points the new model may lose against the served one
    force: bool = False
    triton_url: str | None = None
    runtime: Runtime | None = None  # default: the one the model is served with now, else ONNX Runtime
    keep: int | None = None

    @property
    def model_name(self) -> str:
        return self.name or self.config


@dataclass(frozen=True)
class RefreshResult:
    card: dict  # what card.json of the new model holds
    published: Published | None  # None: refused (see `verdict`)
    verdict: str  # one line: why it was or was not published


def current_card(model_dir: Path) -> tuple[int | None, dict]:
    """The newest version of a model and its card.json ({} without one)."""
    versions = version_numbers(model_dir)
    if not versions:
        return None, {}
    path = model_dir / str(versions[-1]) / CARD_JSON
    if not path.is_file():
        return versions[-1], {}
    try:
        return versions[-1], json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error}); fix or remove it") from None


def verdict(new_miou: float | None, old_miou: float | None, threshold: float,
            force: bool) -> tuple[bool, str]:
    """(publish?, why): refuse a drop of more than `threshold` mIoU points unless forced."""
    if old_miou is None:
        return True, "no mIoU on the served version's card to compare with"
    if new_miou is None:
        drop_text = "the new model has no mIoU (no class occurs in the val split)"
        return force, drop_text + ("; published anyway (--force)" if force else "; not published")
    drop = old_miou - new_miou
    compared = f"val mIoU {new_miou:.2f} against {old_miou:.2f} of the served version ({-drop:+.2f} points)"
    if drop <= threshold:
        return True, compared
    below = f"{compared}: more than the threshold of {threshold} points below it"
    if force:
        return True, f"{below}; published anyway (--force)"
    return False, f"{below}, so NOT published (--force publishes it anyway)"


def refresh(options: RefreshOptions) -> RefreshResult:
    """The whole cycle. The new model's card is written beside its checkpoint either way, and travels
    into the repository version when it is published."""
    import torch

    from training import evaluate
    from training.export.artifact import export_artifact
    from training.models.checkpoint import load_model, read_checkpoint
    from training.train import TrainOptions, train

    model_dir = options.repository / options.model_name
    runtime = options.runtime or model_runtime(model_dir) or Runtime.ONNXRUNTIME
    if runtime is Runtime.TENSORRT:
        from training.export.tensorrt import require_tensorrt

        require_tensorrt()  # the model is served as an engine: fail before the training, not after
    served_version, served_card = current_card(model_dir)
    start_from = _fine_tune_source(served_card)
    run_dir = options.work_dir / f"refresh-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    log.info("training %s in %s, %s", options.config, run_dir,
             f"fine-tuning {start_from}" if start_from else "from scratch")
    checkpoint = train(TrainOptions(
        config=options.config, data_root=options.data_root, work_dir=run_dir, max_iters=options.max_iters,
        batch_size=options.batch_size, num_workers=options.num_workers, load_from=start_from, progress=False,
    ))

    model, config = load_model(checkpoint, options.config)
    loader = evaluate.eval_loader(options.data_root, "val", config.input_size, 1, options.num_workers,
                                  config.history_frames)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    evaluation = evaluate.accumulate(evaluate.predict_torch(model, loader, device))
    scores = evaluate.metric_json(evaluation)
    log.info("val mIoU %s over %d frames\n%s", scores["mIoU"], scores["frames"], evaluation.occupancy.table())

    old_miou = _number(served_card.get("mIoU"))
    go, why = verdict(scores["mIoU"], old_miou, options.threshold, options.force)
    card = {
        "name": options.model_name, "config": options.config, "data_root": str(options.data_root.resolve()),
        "iterations": int(read_checkpoint(checkpoint)["step"]),
        "checkpoint": str(checkpoint.resolve()),
        "fine_tuned_from": str(start_from) if start_from else None,
        "mIoU": scores["mIoU"], "per_class": scores["per_class"], "val_frames": scores["frames"],
        "previous_version": served_version, "previous_mIoU": old_miou, "forced": options.force and go,
        "verdict": why, "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Beside the checkpoint: the exporter copies it into the version, as `occ publish --checkpoint` would.
    _write_card(checkpoint.parent, card)
    if not go:
        return RefreshResult(card, None, why)

    # The exporter checks ONNX Runtime against PyTorch and makes no artifact if they disagree.
    scratch = run_dir / "export"
    scratch.mkdir()
    artifact = export_artifact(config, checkpoint, scratch, runtime, log=log.info)
    published = publish(options.repository, options.model_name, artifact, runtime=runtime, keep=options.keep,
                        triton_url=options.triton_url)
    return RefreshResult(card, published, why)


def _fine_tune_source(card: dict) -> Path | None:
    """The served version's checkpoint, if its card names one that still exists."""
    path = card.get("checkpoint")
    if not path:
        return None
    if not Path(path).is_file():
        log.warning("the served version's card names checkpoint %s, which is gone: training from scratch",
                    path)
        return None
    return Path(path)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else None


def _write_card(folder: Path, card: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (folder / CARD_MARKDOWN).write_text(model_card_markdown(card))


def model_card_markdown(card: dict) -> str:
    """The card as a page: what was trained on what, how well, and the per-class IoU table."""
    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines = [
        f"# {card['name']}",
        "",
        f"- config: `{card['config']}`",
        f"- data root: `{card['data_root']}`",
        f"- iterations: {card['iterations']}"
        + (f", fine-tuned from `{card['fine_tuned_from']}`" if card["fine_tuned_from"] else ", from scratch"),
        f"- checkpoint: `{card['checkpoint']}`",
        f"- val mIoU: {percent(card['mIoU'])} over {card['val_frames']} frames "
        f"(previous version {card['previous_version']}: {percent(card['previous_mIoU'])})",
        f"- publishing: {card['verdict']}",
        f"- date: {card['date']}",
        "",
        "| class | IoU (%) |",
        "| --- | ---: |",
        *(f"| {name} | {percent(value)} |" for name, value in card["per_class"].items()),
    ]
    return "\n".join(lines) + "\n"
