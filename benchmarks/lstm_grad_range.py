"""Where the gradients reaching the LSTM fall in fp16's range, with and without loss scaling.

Under bf16 autocast on a GPU, torch runs cuDNN's LSTM in fp16 (its autocast casts cuDNN RNNs to fp16
whatever the autocast dtype), so the gradients of the loss with respect to the LSTM's outputs are
fp16 numbers in its backward pass. This takes a trained model package and real batches from shards,
computes those gradients in fp32 on the CPU (asr train's loss: CTC summed over the batch, per target
token), and prints which share of them fp16 keeps at full precision (at least 2^-14, its smallest
normal number), keeps with fewer bits (subnormal) and turns into zero (below 2^-25), at the batch's
own token count and scaled to ``--tokens`` (the gradients shrink as 1 / tokens: conf/large.yaml's
batches have ~23,000), each without scaling and at ``--scale`` (asr train's starting loss scale).

    python benchmarks/lstm_grad_range.py --model exp/mini/model.pt --shards data/mini/shards/train-000000.tar
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools

import torch

from asr.data.shards import ShardBatches, resolve_shards
from asr.package import load_package
from asr.recognizer import Recognizer
from asr.targets import Labeler
from asr.train import INIT_LOSS_SCALE, Counters, compute_loss

FP16_NORMAL_MIN = 2.0**-14  # 6.1e-5
FP16_ZERO_BELOW = 2.0**-25  # half of the smallest subnormal, 2^-24: rounds to zero


def lstm_output_grads(model, frontend, tokenizer, batch: dict) -> tuple[torch.Tensor, int]:
    """|dL/dy| at the LSTM stack's output, on the batch's valid frames (flat), and the batch's tokens."""
    captured = {}
    # The padded layout returns the whole stack's output as one tensor to hook (the same values in every layout).
    model.cfg = dataclasses.replace(model.cfg, lstm_layout="padded")
    run_lstm = model._lstm_padded

    def keep(x, lengths):
        y = run_lstm(x, lengths)
        y.retain_grad()
        captured["y"] = y
        return y

    model._lstm_padded = keep
    try:
        loss, stats = compute_loss(model, frontend, batch, tokenizer, torch.device("cpu"), False, Counters())
        loss.backward()
    finally:
        model._lstm_padded = run_lstm
    g = captured["y"].grad
    valid = g.abs().sum(-1) > 0  # frames past an utterance's end get no gradient
    return g[valid].abs().flatten(), stats["tokens"]


def shares(g: torch.Tensor) -> tuple[float, float, float]:
    """(full precision, subnormal, zero) shares of ``g`` as fp16 would hold them."""
    zero = (g < FP16_ZERO_BELOW).float().mean().item()
    normal = (g >= FP16_NORMAL_MIN).float().mean().item()
    return normal, 1 - normal - zero, zero


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model package (asr train's model.pt)")
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--max-frames", type=int, default=40000)
    p.add_argument("--tokens", type=int, default=23000, help="a batch's target tokens to scale to (default: "
                   "conf/large.yaml's, 384,000 frames of LibriSpeech-length speech in 256 units)")
    p.add_argument("--scale", type=float, default=INIT_LOSS_SCALE, help="the loss scale to show (asr train's first)")
    args = p.parse_args()
    torch.manual_seed(0)
    rec = Recognizer.from_package(load_package(args.model))
    model, frontend, tok = rec.model.train(), rec.frontend.eval(), rec.tokenizer
    for m in model.modules():  # the gradients of the model itself, not of a random dropout mask
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.lstm.dropout = 0.0
    data = ShardBatches(resolve_shards(args.shards), args.max_frames, 512, 10, 30.0, seed=0)
    data.label = Labeler(tok, frontend.logmel.cfg, model.cfg.stride, 1)
    grads, tokens = [], 0
    for batch in itertools.islice(iter(data), 1, 1 + args.batches):  # (the first is a small start-up batch)
        g, n = lstm_output_grads(model, frontend, tok, batch)
        grads.append(g * n)  # per batch token count 1: rescaled below
        tokens += n
        model.zero_grad(set_to_none=True)
    per_token = torch.cat(grads)
    own = tokens / len(grads)
    print(f"{args.model}: {len(grads)} batches, {own:.0f} tokens a batch on average, {per_token.numel()} gradients "
          f"at the LSTM's outputs")
    print("| batch tokens | loss scale | median gradient | largest | fp16 full precision | fp16 subnormal | fp16 zero |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, scale in itertools.product([own, args.tokens], [1.0, args.scale]):
        g = per_token * scale / n
        normal, sub, zero = shares(g)
        print(f"| {n:,.0f} | {scale:g} | {g.median().item():.2e} | {g.max().item():.2e} | {100 * normal:.1f}% | "
              f"{100 * sub:.1f}% | {100 * zero:.1f}% |")


if __name__ == "__main__":
    main()
