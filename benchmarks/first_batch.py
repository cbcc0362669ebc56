"""How long a loader worker takes to produce its first batches: the GPU idles that long at the start
of every epoch. Streams one worker's batches from shards (as ``asr train`` does, in one process) and
prints a table: seconds until each of the first ``--batches`` batches, its utterances and audio,
then the worker's rate (x real time: how many workers a GPU needs).

    python benchmarks/first_batch.py --shards /tmp/long8/train.index.json --max-frames 384000 \
        --buckets 40 --shuffle-buffer 5000     # the large config's settings
"""
from __future__ import annotations

import argparse
import time

from asr.data.shards import ShardBatches, resolve_shards


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--max-frames", type=int, default=384000)
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--buckets", type=int, default=40)
    p.add_argument("--shuffle-buffer", type=int, default=5000)
    p.add_argument("--batches", type=int, default=3)
    args = p.parse_args()
    data = ShardBatches(resolve_shards(args.shards), args.max_frames, args.max_batch, num_buckets=args.buckets,
                        shuffle_buffer=args.shuffle_buffer)
    print(f"max_frames {args.max_frames}, {args.buckets} buckets, shuffle buffer {args.shuffle_buffer}")
    print("| batch | after (s) | utterances | audio (s) |")
    print("| --- | ---: | ---: | ---: |")
    t0, audio = time.perf_counter(), 0.0
    for i, batch in enumerate(data):
        audio += float(batch["lengths"].sum()) / 16000
        print(f"| {i + 1} | {time.perf_counter() - t0:.2f} | {len(batch['ids'])} | "
              f"{float(batch['lengths'].sum()) / 16000:.0f} |", flush=True)
        if i + 1 == args.batches:
            break
    # What one worker delivers: a GPU taking R x real time needs R / this many workers.
    print(f"\none worker: {audio:.0f} s of audio in {time.perf_counter() - t0:.1f} s, "
          f"{audio / (time.perf_counter() - t0):.0f}x real time")


if __name__ == "__main__":
    main()
