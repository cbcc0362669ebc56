"""Cached CTC emissions: a model's log-probs over a test set, saved once so that decoders, LM
weights and beam sizes can be compared and tuned without running the model again.

The file is a ``torch.save`` of plain data (loadable with ``weights_only=True``): ids, references,
log-probs concatenated into one float32 tensor (sum T_i, V) with per-utterance lengths, the
tokenizer's ``state()``, total audio seconds and the duration of one output frame. Files written
by ``asr lm tune`` also record the model package they came from (path and SHA-256) and the manifest
utterances whose audio could not be read, so that a cache can be checked against ``--model`` and
``--manifest``; files without these keys (older ones, ``asr evaluate --save-emissions``) still load.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from asr.files import atomic_file
from asr.text import Tokenizer, tokenizer_from_state

FORMAT = "asr-emissions"
VERSION = 1


class EmissionsError(ValueError):
    pass


@dataclass
class Emissions:
    """Per-utterance log-probs (T_i, V) with their ids and reference texts."""

    ids: list[str]
    log_probs: list[Tensor]
    refs: list[str]
    tokenizer_state: dict
    audio_seconds: float
    frame_shift_s: float
    model: str | None = None  # the model package they came from, when recorded
    model_sha256: str | None = None  # SHA-256 of that file's bytes, when recorded
    skipped_ids: list[str] = field(default_factory=list)  # manifest utterances whose audio could not be read
    problems: list[str] = field(default_factory=list)  # why they were skipped, one line each

    def __len__(self) -> int:
        return len(self.ids)

    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_state(self.tokenizer_state)

    def batches(self, batch_size: int = 32, max_frames: int | None = None) -> Iterator[tuple[list[int], Tensor, Tensor]]:
        """Yield (indices, log_probs (B, T, V) padded with blank-certain frames, lengths (B,)), in
        length-sorted order so padding stays small; at most ``max_frames`` B*T per batch."""
        order = sorted(range(len(self)), key=lambda i: self.log_probs[i].shape[0])
        batch: list[int] = []
        for i in order:
            longest = max([self.log_probs[j].shape[0] for j in batch] + [self.log_probs[i].shape[0]])
            if batch and (len(batch) >= batch_size or (max_frames is not None and longest * (len(batch) + 1) > max_frames)):
                yield batch, *pad(self.log_probs[j] for j in batch)
                batch = []
            batch.append(i)
        if batch:
            yield batch, *pad(self.log_probs[j] for j in batch)


def pad(log_probs: Sequence[Tensor] | Iterator[Tensor]) -> tuple[Tensor, Tensor]:
    """List of (T_i, V) -> (B, T, V) padded with blank-certain frames, and lengths (B,)."""
    items = list(log_probs)
    lengths = torch.tensor([x.shape[0] for x in items], dtype=torch.long)
    V = items[0].shape[1]
    out = torch.full((len(items), int(lengths.max()) if len(items) else 0, V), -1e4, dtype=items[0].dtype)
    out[..., 0] = 0.0
    for b, x in enumerate(items):
        out[b, : x.shape[0]] = x
    return out, lengths


def save_emissions(path: str | Path, ids: Sequence[str], log_probs: Sequence[Tensor], refs: Sequence[str],
                   tokenizer_state: dict, audio_seconds: float, frame_shift_s: float, *, model: str | None = None,
                   model_sha256: str | None = None, skipped_ids: Sequence[str] = (),
                   problems: Sequence[str] = ()) -> None:
    """Write emissions: ``log_probs[i]`` is (T_i, V) for utterance ``ids[i]`` with reference ``refs[i]``;
    the keyword arguments are the optional provenance fields of ``Emissions``."""
    if not (len(ids) == len(log_probs) == len(refs)):
        raise EmissionsError(f"{path}: {len(ids)} ids, {len(log_probs)} log-prob tensors and {len(refs)} references differ in number")
    if len(set(ids)) != len(ids):
        raise EmissionsError(f"{path}: utterance ids are not unique")
    if not log_probs:
        raise EmissionsError(f"{path}: no utterances to save")
    V = log_probs[0].shape[-1]
    for uid, x in zip(ids, log_probs):
        if x.dim() != 2 or x.shape[1] != V:
            raise EmissionsError(f"{path}: log-probs of {uid!r} have shape {tuple(x.shape)}; expected (T, {V})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": FORMAT,
        "version": VERSION,
        "ids": list(ids),
        "refs": list(refs),
        "lengths": torch.tensor([x.shape[0] for x in log_probs], dtype=torch.long),
        "log_probs": torch.cat([x.detach().float().cpu() for x in log_probs]),
        "tokenizer": dict(tokenizer_state),
        "audio_seconds": float(audio_seconds),
        "frame_shift_s": float(frame_shift_s),
        "model": None if model is None else str(model),
        "model_sha256": model_sha256,
        "skipped_ids": list(skipped_ids),
        "problems": list(problems),
    }
    with atomic_file(path, "wb") as f:
        torch.save(data, f)


def load_emissions(path: str | Path) -> Emissions:
    """Read a file written by ``save_emissions``; anything else is an EmissionsError naming the file."""
    path = Path(path)
    if not path.exists():
        raise EmissionsError(f"{path}: no such emissions file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a non-torch or truncated file
        raise EmissionsError(f"{path}: not a readable emissions file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EmissionsError(f"{path}: not an emissions file (no '{FORMAT}' marker)")
    if data.get("version") != VERSION:
        raise EmissionsError(f"{path}: emissions format version {data.get('version')} is not the supported {VERSION}")
    lengths = data["lengths"].tolist()
    flat = data["log_probs"]
    if sum(lengths) != flat.shape[0]:
        raise EmissionsError(f"{path}: corrupt: lengths add up to {sum(lengths)} frames but {flat.shape[0]} are stored")
    # the provenance keys are optional: files written before them, or by ``asr evaluate``, lack them
    return Emissions(list(data["ids"]), list(torch.split(flat, lengths)), list(data["refs"]), data["tokenizer"],
                     float(data["audio_seconds"]), float(data["frame_shift_s"]), data.get("model"),
                     data.get("model_sha256"), list(data.get("skipped_ids", [])), list(data.get("problems", [])))


def synthetic_emissions(tokenizer: Tokenizer, sentences: Sequence[str], frame_shift_s: float = 0.04,
                        noise: float = 1.5, confuse: float = 0.25, seed: int = 0) -> Emissions:
    """CTC-like log-probs for ``sentences`` (normalised) without a model, for smoke tests and benchmarks.

    Each token gets 1-3 frames with 0-2 blank frames around it. Logits are Gaussian noise of scale
    ``noise`` plus a peak on the true token; with probability ``confuse`` the peak is weak and a
    random other token competes, so greedy decoding makes errors an LM can repair.
    """
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    V = tokenizer.vocab_size
    out, ids = [], []
    for n, text in enumerate(sentences):
        frames: list[int] = []
        for tok in tokenizer.encode(text):
            frames += [0] * rng.randint(0, 2)
            frames += [tok] * rng.randint(1, 3)
        frames += [0] * rng.randint(1, 3)
        T = len(frames)
        logits = torch.randn(T, V, generator=gen) * noise
        target = torch.tensor(frames)
        peak = torch.full((T,), 8.0)
        weak = torch.rand(T, generator=gen) < confuse
        peak[weak] = 2.5
        logits[torch.arange(T), target] += peak
        other = torch.randint(1, V, (T,), generator=gen)
        logits[torch.arange(T), other] += torch.where(weak, torch.full((T,), 4.0), torch.zeros(T))
        out.append(torch.log_softmax(logits, dim=-1))
        ids.append(f"synth-{n:05d}")
    seconds = sum(x.shape[0] for x in out) * frame_shift_s
    return Emissions(ids, out, list(sentences), tokenizer.state(), seconds, frame_shift_s)
