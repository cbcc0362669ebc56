"""Transcription speed and memory on this machine's CPU: prints a Markdown table.

    .venv/bin/python benchmarks/transcribe.py --model exp/mini/model.pt --manifest data/mini/test.jsonl

Rows, all with greedy decoding through ``asr.transcribe`` (file reading, windows, forced alignment
and merging included in the time):

1. batch transcription of the manifest's short files, fp32: batch 16 (the default) and batch 1
   (one file at a time, like the old ``asr transcribe``);
2. the same with INT8 dynamic quantization of the LSTM and linear layers, with its WER change;
3. a one-hour recording built by concatenating the manifest's utterances (0.3 s apart), transcribed
   by ``asr transcribe`` in a child process that reports its peak RSS (``resource.getrusage``), beside
   a 10-minute one, to show that memory does not grow with length; its WER against the concatenated
   references shows that stitching windows loses and doubles nothing.

RTFx = seconds of audio per wall-clock second. The machine's load average is printed, since other
jobs on a small machine change the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asr.audio import load_audio  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.decode.greedy import GreedyDecoder  # noqa: E402
from asr.export import quantize_model  # noqa: E402
from asr.metrics import score  # noqa: E402
from asr.package import load_package  # noqa: E402
from asr.recognizer import Recognizer  # noqa: E402
from asr.transcribe import InputFile, transcribe_files  # noqa: E402

CHILD = """
import json, resource, sys, time
from asr.cli import main
t = time.perf_counter()
rc = main(sys.argv[1:])
wall = time.perf_counter() - t
print(json.dumps({"rc": rc, "wall": wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def timed_transcription(rec, files: list[InputFile], batch_size: int) -> tuple[dict[str, str], float, float]:
    """Transcribe ``files``; returns texts by key, audio seconds and wall seconds."""
    decoder = GreedyDecoder(rec.tokenizer)
    start = time.perf_counter()
    texts, audio = {}, 0.0
    for res in transcribe_files(rec, decoder, files, batch_size=batch_size, progress=False):
        assert res.transcript is not None, res.error
        texts[res.item.key] = res.transcript.text
        audio += res.transcript.duration
    return texts, audio, time.perf_counter() - start


def build_long_recording(utts, seconds: float, path: Path, gap: float = 0.3) -> tuple[str, float]:
    """Concatenate utterances (cycling) with ``gap`` s of silence up to ``seconds``; written block by
    block as FLAC. Returns the reference text and the duration."""
    refs, total = [], 0.0
    silence = np.zeros(int(gap * 16000), dtype=np.float32)
    with sf.SoundFile(str(path), "w", samplerate=16000, channels=1, format="FLAC", subtype="PCM_16") as f:
        while total < seconds:
            for u in utts:
                wav = load_audio(u.audio).numpy()
                f.write(np.concatenate([wav, silence]))
                refs.append(u.text)
                total += (wav.shape[0] + silence.shape[0]) / 16000
                if total >= seconds:
                    break
    return " ".join(refs), total


def run_child(model: Path, audio: Path, out_dir: Path, threads: int, extra: list[str]) -> dict:
    """``asr transcribe`` in a fresh Python process; its own peak RSS, wall time and JSON output."""
    cmd = [sys.executable, "-c", CHILD, "transcribe", "--model", str(model), str(audio), "-o", str(out_dir),
           "-f", "json", "--overwrite", "--no-progress", "--device", "cpu", "--threads", str(threads), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    stats["result"] = json.loads((out_dir / f"{audio.stem}.json").read_text())
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "exp/mini/model.pt"))
    ap.add_argument("--manifest", default=str(REPO / "data/mini/test.jsonl"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--hours", type=float, default=1.0, help="length of the long recording")
    ap.add_argument("--skip-long", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    utts = read_manifest(args.manifest)
    files = [InputFile(Path(u.audio), u.id) for u in utts]
    refs = {u.id: u.text for u in utts}
    ids = [u.id for u in utts]
    rec = Recognizer.from_package(load_package(args.model), "cpu")
    timed_transcription(rec, files[:8], args.batch_size)  # warm-up: allocator, thread pool, first-call paths

    rows = []

    def add(name: str, audio: float, wall: float, wer: float | None, rss: float | None = None, note: str = "") -> None:
        rows.append((name, audio, wall, audio / wall, wer, rss, note))
        print(f"  {name}: {audio / wall:.1f}x real time" + (f", WER {100 * wer:.2f}%" if wer is not None else ""),
              file=sys.stderr, flush=True)

    texts, audio, wall = timed_transcription(rec, files, args.batch_size)
    wer_fp32 = score([refs[i] for i in ids], [texts[i] for i in ids], ids).wer
    add(f"{len(files)} short files, fp32, batch {args.batch_size}", audio, wall, wer_fp32)
    texts1, audio1, wall1 = timed_transcription(rec, files, 1)
    add(f"{len(files)} short files, fp32, batch 1", audio1, wall1,
        score([refs[i] for i in ids], [texts1[i] for i in ids], ids).wer, note="one file at a time")

    fp32_model = rec.model
    rec.model = quantize_model(fp32_model)
    timed_transcription(rec, files[:8], args.batch_size)
    textsq, audioq, wallq = timed_transcription(rec, files, args.batch_size)
    wer_q = score([refs[i] for i in ids], [textsq[i] for i in ids], ids).wer
    add(f"{len(files)} short files, INT8, batch {args.batch_size}", audioq, wallq, wer_q,
        note=f"{wall / wallq:.2f}x the fp32 speed, WER {100 * (wer_q - wer_fp32):+.2f} points")
    rec.model = fp32_model

    if not args.skip_long:
        with tempfile.TemporaryDirectory(prefix="asr-bench-") as tmp:
            tmp = Path(tmp)
            for label, seconds in (("10-minute", 600.0), (f"{args.hours:g}-hour", 3600.0 * args.hours)):
                path = tmp / f"long_{int(seconds)}.flac"
                ref, dur = build_long_recording(utts, seconds, path)
                for quant in ([], ["--quantize"]) if seconds > 600 else ([],):
                    stats = run_child(Path(args.model), path, tmp / "out", args.threads,
                                      ["--batch-size", str(args.batch_size), *quant])
                    res = stats["result"]
                    wer = score([ref], [res["text"]]).wer
                    words = res["words"]
                    starts = [w["start"] for w in words]
                    assert starts == sorted(starts) and all(0 <= w["end"] <= res["duration"] + 1e-6 for w in words)
                    add(f"{label} recording ({dur / 60:.0f} min FLAC), {'INT8' if quant else 'fp32'}, child process",
                        dur, stats["wall"], wer, stats["peak_rss_mib"], note="wall includes start-up and model load")

    load = os.getloadavg()
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, "
          f"{args.threads} threads; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)")
    print(f"model: {args.model}; manifest: {args.manifest}; greedy decoding\n")
    print("| run | audio | wall | RTFx | WER | peak RSS | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, audio, wall, rtfx, wer, rss, note in rows:
        print(f"| {name} | {audio / 60:.1f} min | {wall:.1f} s | {rtfx:.1f}x | "
              f"{'-' if wer is None else f'{100 * wer:.2f}%'} | {'-' if rss is None else f'{rss:.0f} MiB'} | {note} |")


if __name__ == "__main__":
    main()
