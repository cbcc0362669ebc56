"""Decode a manifest with a model package and score it: hypotheses, WER/CER, results.json, reports."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from asr.audio import AudioError, load_audio
from asr.data.manifest import Utterance
from asr.data.shards import HOP, Sample, pad_batch
from asr.decode.types import Hypothesis
from asr.features import SpeakerMeans, batch_means
from asr.metrics import format_errs, score
from asr.recognizer import Recognizer

log = logging.getLogger(__name__)


class _AudioFiles(Dataset):
    def __init__(self, utts: list[Utterance]):
        self.utts = utts

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> Sample | str:
        u = self.utts[i]
        try:
            return Sample(u.id, load_audio(u.audio), u.text, u.speaker)
        except AudioError as e:
            return str(e)


def length_sorted_batches(utts: list[Utterance], max_frames: int, max_batch: int = 256) -> list[list[int]]:
    """Indices of ``utts`` grouped longest-first so that batch size x longest frames <= max_frames."""
    order = sorted(range(len(utts)), key=lambda i: -utts[i].duration)
    batches, cur, longest = [], [], 0
    for i in order:
        frames = int(utts[i].duration * 100) + 1
        if cur and ((len(cur) + 1) * max(longest, frames) > max_frames or len(cur) >= max_batch):
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, frames)
    if cur:
        batches.append(cur)
    return batches


def _collate(items: list) -> tuple[dict | None, list[str]]:
    errors = [x for x in items if isinstance(x, str)]
    samples = [x for x in items if not isinstance(x, str)]
    return (pad_batch(samples) if samples else None), errors


@dataclass
class Decoded:
    hyps: dict[str, Hypothesis]
    log_probs: dict[str, torch.Tensor]  # id -> (T', V), only when kept
    problems: list[str]
    audio_seconds: float
    decode_seconds: float


def decode_utterances(rec: Recognizer, decoder, utts: list[Utterance], max_frames: int = 60000,
                      num_workers: int = 1, keep_log_probs: bool = False, progress: bool = True,
                      strict: bool = False) -> Decoded:
    """Run the model and ``decoder`` over ``utts`` in length-sorted batches.

    Audio that cannot be read is reported in ``problems`` and skipped; the rest goes on
    (``strict``: the first such file is raised as AudioError).
    """
    loader = DataLoader(_AudioFiles(utts), batch_sampler=length_sorted_batches(utts, max_frames),
                        collate_fn=_collate, num_workers=num_workers)
    hyps, kept, problems, audio_s = {}, {}, [], 0.0
    start = time.perf_counter()
    cfg = rec.frontend.logmel.cfg
    means = speaker_means(rec, loader, progress) if cfg.speaker_cmn else None
    bar = tqdm(total=len(utts), desc="decode", unit="utt", disable=not progress)
    for batch, errors in loader:
        if strict and errors:
            bar.close()  # so that the error gets a line of its own
            raise AudioError(errors[0])
        for e in errors:
            log.warning("skipped: %s", e)
        problems += errors
        bar.update(len(errors))
        if batch is None:
            continue
        log_probs, out_len = rec.log_probs(batch["wav"], batch["lengths"],
                                           batch_means(means, batch["speakers"], cfg.n_mels))
        log_probs, out_len = log_probs.float().cpu(), out_len.cpu()
        for uid, h in zip(batch["ids"], decoder(log_probs, out_len)):
            hyps[uid] = h
        if keep_log_probs:
            for i, uid in enumerate(batch["ids"]):
                kept[uid] = log_probs[i, : out_len[i]].clone()
        audio_s += float(batch["lengths"].sum()) / (HOP * 100)
        bar.update(len(batch["ids"]))
    bar.close()
    return Decoded(hyps, kept, problems, audio_s, time.perf_counter() - start)


@torch.inference_mode()
def speaker_means(rec: Recognizer, loader: DataLoader, progress: bool = True) -> dict[str, torch.Tensor]:
    """Each speaker's mean raw log-mel (n_mels,) over the loader's audio (a pass before decoding, for
    a model trained with ``speaker_cmn``); unreadable files are left to the decoding pass to report."""
    acc = SpeakerMeans(rec.frontend.logmel.cfg.n_mels)
    for batch, _ in tqdm(loader, desc="speaker means", unit="batch", leave=False, disable=not progress):
        if batch is not None:
            feats, flen = rec.frontend.logmel.raw(batch["wav"].to(rec.device), batch["lengths"].to(rec.device))
            acc.add(feats, flen, batch["speakers"])
    return acc.means()


def write_results(out_dir: str | Path, utts: list[Utterance], decoded: Decoded, decoder_name: str,
                  extra: dict | None = None) -> dict:
    """Score against the manifest's texts; write results.json, recogs.txt and errs.txt in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scored = [u for u in utts if u.id in decoded.hyps]
    s = score([u.text for u in scored], [decoded.hyps[u.id].text for u in scored], [u.id for u in scored],
)
    results = {
        "wer": s.wer, "cer": s.cer, "num_utts": s.num_utts, "num_words": s.num_words,
        "substitutions": s.substitutions, "deletions": s.deletions, "insertions": s.insertions,
        "decoder": decoder_name, "audio_seconds": round(decoded.audio_seconds, 3),
        "decode_seconds": round(decoded.decode_seconds, 3),
        "rtfx": round(decoded.audio_seconds / max(decoded.decode_seconds, 1e-9), 1),
        "num_skipped": len(decoded.problems), "skipped": decoded.problems[:100],
        **(extra or {}),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    with open(out_dir / "recogs.txt", "w") as f:
        for u in scored:
            f.write(f"{u.id}\t{decoded.hyps[u.id].text}\n")
    (out_dir / "errs.txt").write_text(format_errs(s))
    return results
