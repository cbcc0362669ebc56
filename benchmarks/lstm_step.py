"""The acoustic model's forward + backward on one fixed random batch, without data loading.

For comparing ways of running the same model (``--lstm-layouts``, or two checkouts of ``asr`` put
first on PYTHONPATH in turn) where the loader's noise would hide a few per cent. "bare" is
a bidirectional ``nn.LSTM`` of the model's size alone, forward + backward over the padded batch at
the model's LSTM shape, the yardstick of ``train_throughput.py``. Prints a Markdown table: the median
over ``--repeats`` timed runs after two warm-up ones.

    python benchmarks/lstm_step.py --hidden 256 --layers 2 --stride 3 --batch 10 --seconds 5 --threads 1
    python benchmarks/lstm_step.py --hidden 1024 --layers 5 --stride 4 --batch 256 --seconds 12 \
        --device cuda --bf16 --lstm-layouts bare padded packed
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from asr.config import ModelConfig
from asr.model import AcousticModel, subsampled_lengths


def time_step(model: torch.nn.Module, feats: torch.Tensor, lengths: torch.Tensor, repeats: int, bf16: bool) -> float:
    """Median ms of ``model(feats (B, T, F), lengths (B,))`` forward + backward of the summed output."""
    times = []
    for i in range(repeats + 2):
        if feats.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(feats.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(feats, lengths)[0]
        out.float().sum().backward()
        if feats.is_cuda:
            torch.cuda.synchronize()
        if i >= 2:
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--stride", type=int, default=3)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0, help="the longest utterance; the others 80-100%% of it")
    p.add_argument("--lstm-layouts", nargs="+", default=[ModelConfig.lstm_layout], choices=["padded", "packed", "split", "bare"])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as training on a GPU")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    frames = int(args.seconds * 100)
    feats = torch.randn(args.batch, frames, 80, device=device)
    lengths = torch.randint(int(0.8 * frames), frames + 1, (args.batch,))
    lengths[0] = frames
    cfg = ModelConfig(hidden=args.hidden, layers=args.layers, stride=args.stride)
    print(f"| model | LSTM layout | batch | frames | median forward + backward (ms) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for layout in args.lstm_layouts:
        if layout == "bare":
            lstm = torch.nn.LSTM(args.hidden, args.hidden, args.layers, bidirectional=True, batch_first=True).to(device)
            x = torch.randn(args.batch, int(subsampled_lengths(torch.tensor(frames), args.stride)), args.hidden,
                            device=device, requires_grad=True)
            ms = time_step(lambda _f, _l: lstm(x), feats, lengths, args.repeats, args.bf16)
        else:
            model = AcousticModel(dataclasses.replace(cfg, lstm_layout=layout), 80, 30).to(device).train()
            ms = time_step(model, feats, lengths, args.repeats, args.bf16)
        print(f"| {args.layers}x{args.hidden} | {layout} | {args.batch} | {frames} | {ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
