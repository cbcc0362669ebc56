"""The training process's host ops on a batch's targets, at several torch CPU thread counts, with
and without busy loader-like processes on the cores.

On a GPU the training process's own CPU work is small, but an op on more elements than torch's grain
size (32,768) is split over one thread per core and waits for the last of them; when loader workers
hold those cores, the op waits for them. In an H200 profile (2026-11-28) ``cudnn_fits``'s ops on a
batch's ~30,000 targets took 7-11 ms each with 16 threads and 12 workers, so ``asr train`` gives its
process one thread on a GPU (``asr.train.process_threads``). This times ``asr.ctc_loss.cudnn_fits``
(the check that a batch fits cuDNN's CTC loss: comparisons, a reduction, ``repeat_interleave``) on a
random batch on idle cores, then with ``--busy`` processes spinning at the loader workers' niceness,
and prints a table:

    python benchmarks/host_threads.py --utts 295 --tokens 150 --busy 2 --threads 1 2
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import torch

from asr.ctc_loss import cudnn_fits
from asr.train import GPU_LOADER_NICENESS


def spin(niceness: int) -> None:
    """A stand-in for a busy loader worker: all of one core, at ``niceness``."""
    os.nice(niceness)
    while True:
        pass


def time_check(targets: torch.Tensor, lengths: torch.Tensor, frames: int, repeats: int) -> tuple[float, float, float]:
    """Median, 90th-percentile and mean ms of ``cudnn_fits`` on targets (N,) with target lengths (B,)
    (the mean is what a training step pays: the rare long stalls are in it)."""
    inputs = torch.full_like(lengths, frames)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cudnn_fits(targets, inputs, lengths, frames, int(targets.max()) + 1)
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))], statistics.mean(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utts", type=int, default=295, help="utterances in the batch (conf/large.yaml's ~295)")
    p.add_argument("--tokens", type=int, default=100, help="the shortest target; each is this to this + 50 tokens")
    p.add_argument("--frames", type=int, default=400, help="output frames of every utterance")
    p.add_argument("--busy", type=int, default=os.cpu_count(), help="spinning processes (default: one per core)")
    p.add_argument("--niceness", type=int, default=GPU_LOADER_NICENESS, help="theirs (default: the loader workers')")
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count()], help="torch CPU thread counts to time")
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.tokens, args.tokens + 51, (args.utts,), generator=g)
    targets = torch.randint(1, 257, (int(lengths.sum()),), generator=g)
    print(f"cudnn_fits on {targets.numel()} targets of {args.utts} utterances; {os.cpu_count()} cores; "
          f"{args.busy} busy processes at niceness {args.niceness}; median of {args.repeats}")
    print("| torch threads | idle cores: median ms | p90 | mean | busy cores: median ms | p90 | mean |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = {}
    for threads in args.threads:  # idle first, for all counts: the busy processes start once
        torch.set_num_threads(threads)
        rows[threads] = time_check(targets, lengths, args.frames, args.repeats)
    ctx = multiprocessing.get_context("spawn")
    busy = [ctx.Process(target=spin, args=(args.niceness,), daemon=True) for _ in range(args.busy)]
    for proc in busy:
        proc.start()
    try:
        time.sleep(0.5)  # until they spin
        for threads in args.threads:
            torch.set_num_threads(threads)
            cells = rows[threads] + time_check(targets, lengths, args.frames, args.repeats)
            print(f"| {threads} | " + " | ".join(f"{ms:.3f}" for ms in cells) + " |", flush=True)
    finally:
        for proc in busy:
            proc.terminate()
            proc.join()


if __name__ == "__main__":
    main()
