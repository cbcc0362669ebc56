"""Training curves from ``train_log.jsonl``: loss, dev WER, learning rate and gradient norm as one PNG.

The log holds two kinds of JSON lines (``asr.train.StepLog``): step records
``{"step", "epoch", "loss", "lr", "grad_norm", "padding", "audio_x", "time"}`` and epoch records
``{"epoch", "step", "train_loss", "dev_wer", "dev_cer", ...}``. A resumed run appends to the same
log and repeats some steps; the later record of a step wins, so the curves show the run that counted.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class TrainingLog:
    name: str
    steps: list[dict] = field(default_factory=list)  # step records, by step
    epochs: list[dict] = field(default_factory=list)  # epoch records, by epoch
    bad_lines: int = 0


def read_log(path: str | Path) -> TrainingLog:
    """Parse a ``train_log.jsonl`` (or the experiment folder holding one).

    Torn or foreign lines are counted and skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "train_log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log")
    steps: dict[int, dict] = {}
    epochs: dict[int, dict] = {}
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1  # e.g. the last line of a run killed mid-write
            continue
        if not isinstance(rec, dict):
            bad += 1
        elif "loss" in rec and "step" in rec:
            steps[int(rec["step"])] = rec
        elif "train_loss" in rec and "epoch" in rec:
            epochs[int(rec["epoch"])] = rec
        else:
            bad += 1
    if bad:
        log.warning("%s: %d lines were not step or epoch records and were skipped", path, bad)
    name = path.parent.name if path.name == "train_log.jsonl" else path.stem
    return TrainingLog(name, [steps[k] for k in sorted(steps)], [epochs[k] for k in sorted(epochs)], bad)


def _smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Exponential moving average with bias correction, so the first points are not pulled to zero.

    By default the weight grows with the number of points (about a tenth of the curve is averaged,
    at most 50 points), so a short log is not dragged behind by the lag of a long average.
    """
    if weight is None:
        weight = min(0.98, max(0.0, 1 - 10 / max(len(values), 1)))
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_training(logs: list[TrainingLog], out: str | Path) -> Path:
    """Draw loss (per step, smoothed, and per epoch), dev WER/CER, learning rate and gradient norm
    against the optimizer step; several logs are overlaid for comparison."""
    from matplotlib.figure import Figure

    if not any(lg.steps or lg.epochs for lg in logs):
        raise ValueError("the training log(s) hold no step or epoch records to plot")
    fig = Figure(figsize=(12, 8), dpi=110, layout="constrained")
    (ax_loss, ax_wer), (ax_lr, ax_gn) = fig.subplots(2, 2, sharex=True)
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860"]
    for k, lg in enumerate(logs):
        c = colors[k % len(colors)]
        label = lg.name if len(logs) > 1 else None
        x = [r["step"] for r in lg.steps]
        if lg.steps:
            loss = [r["loss"] for r in lg.steps]
            ax_loss.plot(x, loss, color=c, alpha=0.25, linewidth=0.8)
            ax_loss.plot(x, _smooth(loss), color=c, linewidth=1.6, label=(label or "step loss") + " (smoothed)")
            ax_lr.plot(x, [r["lr"] for r in lg.steps], color=c, label=label)
            if all("grad_norm" in r for r in lg.steps):
                ax_gn.plot(x, [r["grad_norm"] for r in lg.steps], color=c, linewidth=0.8, label=label)
        if lg.epochs:
            ex = [r["step"] for r in lg.epochs]
            ax_loss.plot(ex, [r["train_loss"] for r in lg.epochs], "o--", color=c, markersize=4,
                         label=(label + " " if label else "") + "epoch mean")
            dev = [(r["step"], 100 * r["dev_wer"], 100 * r.get("dev_cer", float("nan"))) for r in lg.epochs
                   if r.get("dev_wer") is not None]
            if dev:
                ax_wer.plot([d[0] for d in dev], [d[1] for d in dev], "o-", color=c,
                            label=(label + " " if label else "") + "WER")
                ax_wer.plot([d[0] for d in dev], [d[2] for d in dev], "s:", color=c, alpha=0.7,
                            label=(label + " " if label else "") + "CER")
                best = min(dev, key=lambda d: d[1])
                ax_wer.annotate(f"best {best[1]:.2f}%", (best[0], best[1]), textcoords="offset points",
                                xytext=(0, 8), ha="center", fontsize=8, color=c)
    ax_loss.set_title("CTC loss per token")
    ax_loss.set_yscale("log")
    ax_wer.set_title("dev WER / CER (%)")
    if not ax_wer.has_data():
        ax_wer.text(0.5, 0.5, "no dev evaluations in the log", ha="center", va="center", transform=ax_wer.transAxes)
    ax_lr.set_title("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_gn.set_title("gradient norm (before clipping)")
    if ax_gn.has_data():
        ax_gn.set_yscale("log")
    for ax in (ax_loss, ax_wer, ax_lr, ax_gn):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in (ax_lr, ax_gn):
        ax.set_xlabel("optimizer step")
    fig.suptitle("Training: " + ", ".join(lg.name for lg in logs))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
