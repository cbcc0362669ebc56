"""Training with the LSTM's gradients in fp16, with and without loss scaling, emulated on the CPU.

On a GPU under bf16 autocast torch runs cuDNN's LSTM in fp16 (``asr.train.lstm_in_fp16``), so the
gradients it takes and gives are fp16 numbers, and with the loss per target token most of them are
tiny (``benchmarks/lstm_grad_range.py``). This trains the same model from the same seed on the same
batches in several numerics and prints the training and held-out losses as they go:

- ``fp32``: the LSTM in fp32 (the reference);
- ``boundary``: the LSTM in fp32, every gradient at its boundaries (output, input, weights) rounded to
  fp16 and back, as cuDNN's fp16 LSTM stores them (fast; its recurrence stays fp32);
- ``full``: the whole LSTM in fp16 (torch's CPU LSTM on fp16 tensors: slow, ~10 s a step at the mini
  model's shapes; its arithmetic is also fp16, where cuDNN's is fp32);
- each with ``-scaled``: asr train's dynamic loss scaling (``asr.train.loss_scaler``).

``--shrink`` divides the loss (and the clipping threshold) so that the gradients are as small as a
larger batch's: the mini model's batches have ~1,400 tokens, conf/large.yaml's ~23,000 (16x). The
optimizer, AdamW, is otherwise indifferent to the loss's scale.

    python benchmarks/fp16_lstm_training.py --modes fp32 boundary boundary-scaled --steps 400
    python benchmarks/fp16_lstm_training.py --modes full full-scaled --steps 100
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import statistics
import time

import torch

from asr.config import load_config
from asr.data.shards import ShardBatches, resolve_shards
from asr.features import CMVNAccumulator, FeatureExtractor
from asr.model import AcousticModel
from asr.targets import Labeler
from asr.text import build_tokenizer
from asr.train import Counters, compute_loss, loss_scaler

MODES = ("fp32", "boundary", "boundary-scaled", "full", "full-scaled")


class RoundGrad(torch.autograd.Function):
    """Identity forward; the gradient rounded to fp16 and back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g.half().float()


def fp16_lstm(kind: str):
    """A stand-in for ``torch.lstm`` with fp16 gradients at its boundaries, or wholly in fp16."""
    real = torch.lstm

    def boundary(x, hx, params, *args):
        y, h, c = real(RoundGrad.apply(x), hx, [RoundGrad.apply(p) for p in params], *args)
        return RoundGrad.apply(y), h, c

    def full(x, hx, params, *args):
        y, h, c = real(x.half(), tuple(t.half() for t in hx), [p.half() for p in params], *args)
        return y.float(), h.float(), c.float()

    return {"boundary": boundary, "full": full}[kind]


def run(mode: str, args) -> list[tuple[int, float, float]]:
    """Train ``args.steps`` steps in ``mode``; (step, mean training loss since the last, held-out loss)."""
    kind = mode.removesuffix("-scaled")
    real = torch.lstm
    if kind != "fp32":
        torch.lstm = fp16_lstm(kind)  # the padded layout calls torch.lstm on padded (dense) input only
    try:
        cfg = load_config(args.config, args.overrides)
        torch.manual_seed(0)
        tok = build_tokenizer("char")
        fe = FeatureExtractor(cfg.features, None).train()
        # padded: the stand-ins take torch.lstm's dense arguments (the split layout also makes packed calls)
        model = AcousticModel(dataclasses.replace(cfg.model, lstm_layout="padded"), cfg.features.n_mels,
                              tok.vocab_size).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=(0.9, cfg.train.adam_beta2),
                                weight_decay=cfg.train.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.train.warmup_steps))
        scaler = loss_scaler(torch.device("cpu"), mode.endswith("-scaled"))
        label = Labeler(tok, cfg.features, cfg.model.stride, 1)
        held = ShardBatches(resolve_shards(args.held_out), cfg.train.max_frames, cfg.train.max_batch, 10, 30.0, seed=1)
        held.label = label
        held_out = list(itertools.islice(iter(held), 1, 9))
        acc = CMVNAccumulator(cfg.features.n_mels)
        with torch.no_grad():
            for b in held_out:
                acc.add(*fe.logmel(b["wav"], b["lengths"]))
        fe.cmvn.set_stats(*acc.stats())
        data = ShardBatches(resolve_shards(args.shards), cfg.train.max_frames, cfg.train.max_batch,
                            cfg.train.num_buckets, 30.0, seed=0)
        data.label = label
        counters, losses, out_rows, step, t0 = Counters(), [], [], 0, time.time()
        for batch in iter(data):
            out = compute_loss(model, fe, batch, tok, torch.device("cpu"), False, counters)
            if out is None:
                continue
            scaler.scale(out[0] / args.shrink).backward()
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip / args.shrink)
            if math.isfinite(norm.item()):
                opt.step()
                sched.step()
            scaler.update()
            opt.zero_grad(set_to_none=True)
            losses.append(out[0].item())
            step += 1
            if step % args.every == 0:
                model.eval()
                with torch.no_grad():
                    held_loss = statistics.mean(compute_loss(model, fe, b, tok, torch.device("cpu"), False, counters)[0].item()
                                                for b in held_out)
                model.train()
                out_rows.append((step, statistics.mean(losses[-args.every:]), held_loss))
                print(f"{mode}: step {step}, training loss {out_rows[-1][1]:.3f}, held-out {held_loss:.3f}, "
                      f"{time.time() - t0:.0f} s", flush=True)
            if step >= args.steps:
                break
        return out_rows
    finally:
        torch.lstm = real


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/mini.yaml")
    p.add_argument("--shards", nargs="+", default=["data/mini/shards/train-0000[0-2]*.tar"])
    p.add_argument("--held-out", nargs="+", default=["data/mini/shards/train-000039.tar"],
                   help="shards left out of training, for the held-out loss")
    p.add_argument("--modes", nargs="+", default=["fp32", "boundary", "boundary-scaled"], choices=MODES)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--shrink", type=float, default=16.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*", help="config overrides, as asr train takes them (model.hidden=128)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {mode: run(mode, args) for mode in args.modes}
    print("| step | " + " | ".join(f"{m}: training / held-out loss" for m in args.modes) + " |")
    print("| ---: |" + " ---: |" * len(args.modes))
    for i, (step, _, _) in enumerate(results[args.modes[0]]):
        print(f"| {step} | " + " | ".join(f"{results[m][i][1]:.3f} / {results[m][i][2]:.3f}" for m in args.modes) + " |")


if __name__ == "__main__":
    main()
