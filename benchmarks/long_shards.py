"""LibriSpeech-length shards for the throughput benchmark, built from a small shard set.

The GPU machine has no corpus and little can be carried to it, but a BiLSTM's training throughput
depends on utterance length (LibriSpeech's training utterances are mostly 11-17 s). This joins
random clips of the source shards (with short pauses) into utterances of that length, with their
transcripts joined in the same order, and writes them as ordinary shards (16 kHz 16-bit FLAC, or
WAV with ``--audio-format wav``, + JSON, the layout ``asr shard`` writes) plus ``{split}.index.json``.
One process per shard.

    python benchmarks/long_shards.py --src data/mini/shards/train-000000.tar --out /tmp/long --hours 40
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import random
from pathlib import Path

import numpy as np
import soundfile as sf
import webdataset as wds

from asr.data.shards import AUDIO_FORMATS, ShardBatches, resolve_shards

SR = 16000
CLIPS: list[tuple[np.ndarray, str]] = []  # (samples int16, text), shared with the workers by fork


def load_clips(shards: list[str]) -> list[tuple[np.ndarray, str]]:
    """Every sample of ``shards`` as (int16 samples, transcript)."""
    reader = ShardBatches(shards, max_frames=1, max_batch=1, shuffle=False)
    return [(s.wav.numpy(), s.text) for s in reader.samples(shards, pcm16=True)]


def target_seconds(rng: random.Random) -> float:
    """A length goal drawn so that the joined utterances come out like LibriSpeech's training set:
    mostly 11-17 s (mean about 12.5 s), some shorter."""
    return rng.uniform(2.0, 11.0) if rng.random() < 0.15 else rng.uniform(12.0, 17.5)


def plan(seconds: float, n_clips: int, seed: int) -> list[list[tuple[int, int]]]:
    """Utterances totalling ``seconds``: for each, its (clip index, pause samples before it) list."""
    rng = random.Random(seed)
    lengths = [len(CLIPS[i][0]) for i in range(n_clips)]
    utts, done = [], 0
    while done < seconds * SR:
        goal, total, parts = target_seconds(rng) * SR, 0, []
        while True:
            i = rng.randrange(n_clips)
            pause = rng.randint(int(0.05 * SR), int(0.3 * SR)) if parts else 0
            if parts and total + pause + lengths[i] > goal:
                break
            parts.append((i, pause))
            total += pause + lengths[i]
        utts.append(parts)
        done += total
    return utts


def write_shard(job: tuple[str, int, list[list[tuple[int, int]]], str]) -> dict:
    """Write one shard of joined utterances, the audio as ``ext`` ("flac" or "wav"); returns its index entry."""
    path, first, utts, ext = job
    seconds = 0.0
    with wds.TarWriter(path) as writer:
        for k, parts in enumerate(utts):
            pieces, words = [], []
            for i, pause in parts:
                pieces += [np.zeros(pause, np.int16), CLIPS[i][0]]
                words.append(CLIPS[i][1])
            wav = np.concatenate(pieces)
            buf = io.BytesIO()
            sf.write(buf, wav, SR, format=AUDIO_FORMATS[ext], subtype="PCM_16")
            uid = f"long{first + k:07d}"
            dur = len(wav) / SR
            meta = {"id": uid, "audio": f"{uid}.{ext}", "text": " ".join(words), "duration": round(dur, 3),
                    "speaker": "mixed"}
            writer.write({"__key__": uid, ext: buf.getvalue(), "json": meta})
            seconds += dur
    return {"path": Path(path).name, "count": len(utts), "seconds": round(seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", nargs="+", required=True, help="source shards (paths, globs or an index.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--hours", type=float, default=40.0)
    p.add_argument("--per-shard", type=int, default=200, help="utterances per shard")
    p.add_argument("--jobs", type=int, default=mp.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audio-format", choices=sorted(AUDIO_FORMATS), default="flac")
    args = p.parse_args()
    CLIPS.extend(load_clips(resolve_shards(args.src)))
    if not CLIPS:
        raise SystemExit(f"{args.src}: no readable samples")
    utts = plan(args.hours * 3600, len(CLIPS), args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out / f"{args.split}-{j:06d}.tar"), s, utts[s : s + args.per_shard], args.audio_format)
            for j, s in enumerate(range(0, len(utts), args.per_shard))]
    with mp.get_context("fork").Pool(args.jobs) as pool:
        shards = pool.map(write_shard, jobs)
    hours = sum(s["seconds"] for s in shards) / 3600
    index = {"split": args.split, "shards": shards, "num_utts": len(utts), "hours": round(hours, 4)}
    (out / f"{args.split}.index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"{len(CLIPS)} source clips -> {len(utts)} utterances, {hours:.2f} h "
          f"(mean {hours * 3600 / len(utts):.1f} s) in {len(shards)} shards under {out}")


if __name__ == "__main__":
    main()
