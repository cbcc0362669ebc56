"""CTC targets for a batch: transcripts -> token ids, and the utterances CTC cannot train on left out.

``asr train`` sets a ``Labeler`` as its ``ShardBatches.label``, so it runs in the loader workers and
the training process does no per-utterance Python work: at the large config's ~300 utterances a
step that was ~10 ms of host time per step on the 2-core CPU (``benchmarks/label_cost.py``), time in
which a GPU waited for its next kernels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from asr.config import FeatureConfig
from asr.data.shards import padded_samples
from asr.features import frame_lengths
from asr.model import subsampled_lengths
from asr.text import Tokenizer, TokenizerError, normalize


def ctc_min_frames(target: list[int]) -> int:
    """Frames CTC needs for ``target``: one per token plus a blank between repeated tokens."""
    return len(target) + sum(1 for a, b in zip(target, target[1:]) if a == b)


def ctc_min_frames_batch(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """``ctc_min_frames`` of a batch at once: targets (N,) end to end, target_lengths (B,) -> (B,)."""
    b = target_lengths.numel()
    utt = torch.repeat_interleave(torch.arange(b), target_lengths)  # (N,): the target each token is in
    repeat = (targets[1:] == targets[:-1]) & (utt[1:] == utt[:-1])
    return target_lengths + torch.zeros(b, dtype=torch.long).index_add_(0, utt[1:], repeat.long())


@dataclass
class Labels:
    keep: list[int] = field(default_factory=list)  # positions in the batch of the usable utterances
    targets: list[list[int]] = field(default_factory=list)  # token ids of each kept utterance
    dropped: list[tuple[str, str, str]] = field(default_factory=list)  # (id, "infeasible" | "untokenizable", why)


@dataclass
class Labeler:
    """Tokenizes transcripts and leaves out the utterances whose label cannot be aligned to the
    model's output frames (CTC-infeasible: their loss would be infinite) or cannot be tokenized."""

    tokenizer: Tokenizer
    features: FeatureConfig
    stride: int
    pad_to: int = 1  # the batches' padding to a multiple of frames (ShardBatches' pad_to), kept when trimming

    def output_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Model output frames for waveforms of ``num_samples`` (B,) samples -> (B,)."""
        return subsampled_lengths(frame_lengths(num_samples, self.features), self.stride)

    def __call__(self, batch: dict) -> dict:
        """A padded batch (``pad_batch``'s keys, and "means" if present) -> the same batch with only
        its usable utterances, plus "targets" (N,) the kept utterances' token ids end to end,
        "target_lengths" (B',) and "dropped": [(id, kind, why)] for those left out."""
        labels = self.labels(batch["ids"], batch["texts"], batch["lengths"])
        out = dict(batch)
        if len(labels.keep) < len(batch["ids"]):
            idx = torch.tensor(labels.keep, dtype=torch.long)
            out["lengths"] = batch["lengths"][idx]
            longest = padded_samples(int(out["lengths"].max()), self.pad_to) if len(idx) else 0
            out["wav"] = batch["wav"][idx, :longest]  # less padding if the longest was left out
            if batch.get("means") is not None:
                out["means"] = batch["means"][idx]
            for k in ("ids", "texts", "speakers"):
                if k in batch:
                    out[k] = [batch[k][i] for i in labels.keep]
        out["targets"] = torch.tensor([x for t in labels.targets for x in t], dtype=torch.long)
        out["target_lengths"] = torch.tensor([len(t) for t in labels.targets], dtype=torch.long)
        out["dropped"] = labels.dropped
        return out

    def labels(self, ids: list[str], texts: list[str], num_samples: torch.Tensor) -> Labels:
        """``ids``, ``texts`` and ``num_samples`` (B,) of one batch -> its ``Labels``."""
        labels = Labels()
        frames = self.output_frames(num_samples).tolist()
        for i, (uid, text) in enumerate(zip(ids, texts)):
            try:
                t = self.tokenizer.encode(normalize(text))
            except TokenizerError as e:
                labels.dropped.append((uid, "untokenizable", f"{uid}: transcript cannot be tokenized ({e})"))
                continue
            if not t:
                labels.dropped.append((uid, "infeasible", f"{uid}: transcript {text!r} is empty after normalization"))
                continue
            need = ctc_min_frames(t)
            if need > frames[i]:
                labels.dropped.append((uid, "infeasible", f"{uid}: label needs {need} frames but the audio gives "
                                                          f"{frames[i]} (CTC-infeasible)"))
                continue
            labels.keep.append(i)
            labels.targets.append(t)
        return labels
