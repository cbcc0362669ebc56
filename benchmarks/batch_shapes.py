"""The batches asr train's loader makes from shards, read without decoding any audio.

For each combination of ``--max-frames``, ``--num-buckets``, ``--repeat`` and ``--pad-to``, runs the
training loader's own code (``ShardBatches``: each loader worker's shards, its shuffle buffer, its
small first batch, its length buckets and its leftovers) once per worker, takes the batches in turn
as a DataLoader does, pass after pass, and prints a Markdown table: batches a pass, and over the
steps that ``train_throughput.py`` times (after ``--warmup``, ``--steps`` of them) and over the whole
passes, the padding, how full the batches are (padded frames over ``max_frames``), how many steps
meet a batch shape no step before them had (the shapes that GPU libraries set work up for) and the
tail (the share of a batch's frames past its shortest utterance, which ``model.lstm_layout=split``
runs one direction at a time); and the most decoded 16-bit audio one worker held at once (in its
buckets and its shuffle of batches; its shuffle buffer of undecoded shard bytes comes on top). Only
the FLAC or WAV headers are read (for each utterance's exact length), so it runs in seconds on a
CPU: what the GPU benchmark's batches look like, before spending device time on them.

    python benchmarks/long_shards.py --src ".devdata/src/*.tar" --out /tmp/long60 --hours 60
    python benchmarks/batch_shapes.py --shards /tmp/long60/train.index.json --max-frames 384000 768000 \
        --workers 12 --repeat 1 4 --pad-to 1 64
    python benchmarks/batch_shapes.py --shards /tmp/long60/train.index.json --repeat 4 --num-buckets 20 40 60
"""
from __future__ import annotations

import argparse
import io
import itertools
import random
from types import SimpleNamespace
from typing import Iterator

import soundfile as sf
import torch
import webdataset as wds

import asr.data.shards as S
from asr.data.shards import HOP, Sample, ShardBatches, resolve_shards


class LengthsOnly(ShardBatches):
    """ShardBatches whose samples are silent stand-ins of each utterance's exact length (read once
    from its audio header), in the order and with the shuffling of the real ones. ``decoded``: the
    audio samples handed on so far (a real worker's decoded audio)."""

    lengths: dict[str, list[tuple[str, int]]] = {}  # shard -> (key, samples) of its utterances, in order
    decoded = 0

    def samples(self, shards: list[str], rng: random.Random | None = None, pcm16: bool = False) -> Iterator[Sample]:
        for u in shards:
            if u not in self.lengths:
                self.lengths[u] = [(r["__key__"], sf.info(io.BytesIO(next(v for k, v in r.items() if k in S.AUDIO_FORMATS))).frames)
                                   for r in wds.tariterators.tarfile_samples([{"url": u}])]
        items: Iterator[tuple[str, int]] = itertools.chain.from_iterable(self.lengths[u] for u in shards)
        if rng is not None:
            items = S.shuffled(items, self.shuffle_buffer, rng, initial=min(200, self.shuffle_buffer))
        silence = torch.zeros(1, dtype=torch.int16)
        for key, n in items:
            if n / 16000 <= self.max_duration:
                self.decoded += n
                yield Sample(key, silence.expand(n), "", None)


def loader_batches(data: LengthsOnly, workers: int, passes: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """(batch size, padded frames, the utterances' own frames, the shortest one's frames) of each
    batch, in the order a DataLoader with ``workers`` workers hands them over, for ``passes`` passes;
    and the most audio samples one worker held decoded at once (in its length buckets and its
    shuffle of batches), just after handing a batch on."""
    out, held = [], 0
    real = S.get_worker_info
    try:
        for epoch in range(passes):
            data.set_epoch(epoch)
            per_worker = []
            for w in range(workers):
                S.get_worker_info = lambda w=w: SimpleNamespace(id=w, num_workers=workers)
                data.decoded, handed, mine = 0, 0, []
                for b in data:
                    handed += int(b["lengths"].sum())
                    held = max(held, data.decoded - handed)
                    mine.append((len(b["ids"]), b["wav"].shape[1] // HOP + 1, int((b["lengths"] // HOP + 1).sum()),
                                 int(b["lengths"].min()) // HOP + 1))
                per_worker.append(mine)
            for group in itertools.zip_longest(*per_worker):
                out += [b for b in group if b is not None]
    finally:
        S.get_worker_info = real
    return out, held


def summary(batches: list[tuple[int, int, int, int]], max_frames: int) -> dict:
    """Padding, fill, the count of steps whose (batch size, frames) no step before had, and the tail
    (frames past each batch's shortest utterance over all frames, padding included)."""
    seen: set[tuple[int, int]] = set()
    new = []
    for b, t, _, _ in batches:
        new.append((b, t) not in seen)
        seen.add((b, t))
    padded = sum(b * t for b, t, _, _ in batches)
    return {"padding": 1 - sum(f for _, _, f, _ in batches) / padded, "fill": padded / (len(batches) * max_frames),
            "new": sum(new), "steps": len(batches), "tail": sum(b * (t - s) for b, t, _, s in batches) / padded}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--max-frames", type=int, nargs="+", default=[384000])
    p.add_argument("--repeat", type=int, nargs="+", default=[1], help="each shard listed this many times (as "
                   "train_throughput.py --repeat)")
    p.add_argument("--pad-to", type=int, nargs="+", default=[1], help="train.pad_to_frames values")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--num-buckets", type=int, nargs="+", default=[40], help="conf/large.yaml's: 40")
    p.add_argument("--max-duration", type=float, default=30.0)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--passes", type=int, default=2)
    args = p.parse_args()
    shards = resolve_shards(args.shards)
    print(f"{len(shards)} shards; {args.workers} loader workers; timed steps "
          f"{args.warmup}-{args.warmup + args.steps}, as train_throughput.py's; {args.passes} passes")
    print("| max_frames | buckets | repeat | pad_to | batches a pass | timed steps: padding | fill | new shapes | tail "
          "| all steps: padding | fill | new shapes | tail | a worker's decoded audio, peak (MB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for frames, buckets, repeat, pad in itertools.product(args.max_frames, args.num_buckets, args.repeat, args.pad_to):
        data = LengthsOnly(shards * repeat, frames, args.max_batch, buckets, args.max_duration, seed=0,
                           pad_to=pad)
        batches, held = loader_batches(data, args.workers, args.passes)
        timed = summary(batches[args.warmup : args.warmup + args.steps], frames)
        whole = summary(batches, frames)
        print(f"| {frames} | {buckets} | {repeat} | {pad} | {len(batches) // args.passes} | {100 * timed['padding']:.1f}% | "
              f"{timed['fill']:.2f} | {timed['new']} of {timed['steps']} | {100 * timed['tail']:.1f}% | {100 * whole['padding']:.1f}% | "
              f"{whole['fill']:.2f} | {whole['new']} of {whole['steps']} | {100 * whole['tail']:.1f}% | "
              f"{2 * held / 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
