"""Training curves from ``train_log.jsonl``: loss, dev WER, learning rate and gradient norm as one PNG.

The log holds two kinds of JSON lines (``asr.train.StepLog``): step records
``{"step", "epoch", "loss", "lr", "grad_norm", "padding", "audio_x", "time"}`` and epoch records
``{"epoch", "step", "train_loss", "dev_wer", "dev_cer", ...}``. A resumed run appends to the same
log and repeats some steps; the later record of a step wins, so the curves show the run that counted.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class TrainingLog:
    name: str
    steps: list[dict] = field(default_factory=list)  # step records, by step
    epochs: list[dict] = field(default_factory=list)  # epoch records, by epoch
    bad_lines: int = 0  # lines skipped: torn, foreign, or records missing a field the plot needs
    path: Path | None = None  # the log file read


def _num(value: object) -> float | None:
    """``value`` as a finite float, or None when it is missing, null, a string, a bool, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _index(value: object) -> int | None:
    """A step or epoch number: a whole number >= 0 (``5`` or ``5.0``), else None."""
    v = _num(value)
    return int(v) if v is not None and v >= 0 and v == int(v) else None


def _unusable(rec: object) -> str:
    """Why a parsed line cannot be plotted ("" when it can): a step record needs a whole-number
    ``step`` and a numeric ``loss``, an epoch record whole-number ``epoch`` and ``step`` and a
    numeric ``train_loss``."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if "loss" in rec:
        if _index(rec.get("step")) is None or _num(rec["loss"]) is None:
            return "a step record without a whole-number step and a numeric loss"
    elif "train_loss" in rec:
        if _index(rec.get("epoch")) is None or _index(rec.get("step")) is None or _num(rec["train_loss"]) is None:
            return "an epoch record without whole-number epoch and step and a numeric train_loss"
    else:
        return "neither a step nor an epoch record"
    return ""


def read_log(path: str | Path) -> TrainingLog:
    """Parse a ``train_log.jsonl`` (or the experiment folder holding one).

    Torn or foreign lines, and records without the fields the plot needs (``_unusable``), are
    counted and skipped with one warning per file. The optional fields (``lr``, ``grad_norm``,
    ``dev_wer``, ``dev_cer``) are drawn where they are numbers.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "train_log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log")
    steps: dict[int, dict] = {}
    epochs: dict[int, dict] = {}
    bad, first_bad, total = 0, "", 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        total += 1
        try:
            rec = json.loads(line)
            why = _unusable(rec)
        except json.JSONDecodeError:
            why = "not JSON"  # e.g. the last line of a run killed mid-write
        if why:
            bad += 1
            first_bad = first_bad or f"line {lineno}: {why}"
        elif "loss" in rec:
            steps[_index(rec["step"])] = rec
        else:
            epochs[_index(rec["epoch"])] = rec
    if bad:
        log.warning("%s: %d of %d lines skipped (first: %s)", path, bad, total, first_bad)
    name = path.parent.name if path.name == "train_log.jsonl" else path.stem
    return TrainingLog(name, [steps[k] for k in sorted(steps)], [epochs[k] for k in sorted(epochs)], bad, path)


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


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Steps and values of ``key`` over the records where it is a number (``lr``, ``grad_norm`` and
    the dev scores are optional; a record without one is left out of that curve only)."""
    pairs = [(r["step"], _num(r.get(key))) for r in records]
    pairs = [(x, y) for x, y in pairs if y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def plot_training(logs: list[TrainingLog], out: str | Path) -> Path:
    """Draw loss (per step, smoothed, and per epoch), dev WER/CER, learning rate and gradient norm
    against the optimizer step; several logs are overlaid for comparison."""
    from matplotlib.figure import Figure

    if not any(lg.steps or lg.epochs for lg in logs):
        names = ", ".join(str(lg.path or lg.name) for lg in logs)
        skipped = sum(lg.bad_lines for lg in logs)
        raise ValueError(f"{names}: {'holds' if len(logs) == 1 else 'hold'} no step or epoch records to plot"
                         + (f" ({skipped} lines skipped)" if skipped else ""))
    for lg in logs:
        if not (lg.steps or lg.epochs):
            log.warning("%s: no step or epoch records; left out of the plot", lg.path or lg.name)
    fig = Figure(figsize=(12, 8), dpi=110, layout="constrained")
    (ax_loss, ax_wer), (ax_lr, ax_gn) = fig.subplots(2, 2, sharex=True)
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2", "#937860"]
    for k, lg in enumerate(logs):
        c = colors[k % len(colors)]
        label = lg.name if len(logs) > 1 else None
        if lg.steps:
            x, loss = _series(lg.steps, "loss")
            ax_loss.plot(x, loss, color=c, alpha=0.25, linewidth=0.8)
            ax_loss.plot(x, _smooth(loss), color=c, linewidth=1.6, label=(label or "step loss") + " (smoothed)")
            x, lr = _series(lg.steps, "lr")
            if x:
                ax_lr.plot(x, lr, color=c, label=label)
            x, gn = _series(lg.steps, "grad_norm")
            if x:
                ax_gn.plot(x, gn, color=c, linewidth=0.8, label=label)
        if lg.epochs:
            ax_loss.plot(*_series(lg.epochs, "train_loss"), "o--", color=c, markersize=4,
                         label=(label + " " if label else "") + "epoch mean")
            wer, cer = dict(zip(*_series(lg.epochs, "dev_wer"))), dict(zip(*_series(lg.epochs, "dev_cer")))
            dev = [(x, 100 * w, 100 * cer.get(x, float("nan"))) for x, w in wer.items()]
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
