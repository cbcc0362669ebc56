"""Host time to label one training batch (tokenize ~300 transcripts, check CTC feasibility), the
per-utterance Python work that ``asr train`` now does in its loader workers instead of between GPU
steps. Transcripts of the given shards are joined to LibriSpeech's lengths (``--join`` per
utterance, ~36 words at 4), and the table gives the median over ``--repeats`` batches per tokenizer.

    python benchmarks/label_cost.py --shards data/mini/shards/train.index.json
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from asr.config import FeatureConfig
from asr.data.shards import resolve_shards, shard_metadata
from asr.targets import Labeler
from asr.text import build_tokenizer, normalize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--utts", type=int, nargs="+", default=[64, 300], help="utterances per batch")
    p.add_argument("--join", type=int, default=4, help="transcripts joined into one utterance")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    meta = list(shard_metadata(resolve_shards(args.shards)))
    texts = [normalize(m["text"]) for m in meta]
    tokenizers = {"char": build_tokenizer("char"), "sentencepiece 256": build_tokenizer("sentencepiece", texts, 256)}
    rng = random.Random(0)
    print("| tokenizer | utterances | words / utt | label one batch (ms, median) |")
    print("| --- | ---: | ---: | ---: |")
    for name, tok in tokenizers.items():
        label = Labeler(tok, FeatureConfig(), stride=4)
        for n in args.utts:
            picks = [rng.sample(meta, args.join) for _ in range(n)]
            batch = {"ids": [f"u{i}" for i in range(n)], "texts": [" ".join(m["text"] for m in ms) for ms in picks],
                     "lengths": torch.tensor([int(16000 * sum(m["duration"] for m in ms)) for ms in picks])}
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                labels = label.labels(batch["ids"], batch["texts"], batch["lengths"])
                times.append(time.perf_counter() - t0)
            assert len(labels.keep) + len(labels.dropped) == n
            words = sum(len(t.split()) for t in batch["texts"]) / n
            print(f"| {name} | {n} | {words:.0f} | {1000 * statistics.median(times):.1f} |", flush=True)


if __name__ == "__main__":
    main()
