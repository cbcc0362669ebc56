"""Greedy (best path) CTC decoding: argmax per frame, merge repeats, drop blanks."""
from __future__ import annotations

import torch
from torch import Tensor

from asr.decode.types import Hypothesis
from asr.text import BLANK, Tokenizer


def ctc_collapse(frame_ids: list[int]) -> tuple[list[int], list[int]]:
    """Frame-level ids -> (tokens, the frame each token starts at); repeats merged, blanks dropped."""
    tokens, times = [], []
    prev = BLANK
    for t, i in enumerate(frame_ids):
        if i != BLANK and i != prev:
            tokens.append(i)
            times.append(t)
        prev = i
    return tokens, times


def greedy_decode(log_probs: Tensor, lengths: Tensor, tokenizer: Tokenizer) -> list[Hypothesis]:
    """log_probs (B, T, V), lengths (B,) -> one Hypothesis per utterance."""
    best, idx = log_probs.max(dim=-1)  # (B, T)
    best, idx, lengths = best.cpu(), idx.cpu(), lengths.cpu()
    hyps = []
    for b in range(log_probs.shape[0]):
        n = int(lengths[b])
        tokens, times = ctc_collapse(idx[b, :n].tolist())
        hyps.append(Hypothesis(tokenizer.decode(tokens), tokens, times, float(best[b, :n].sum())))
    return hyps


class GreedyDecoder:
    name = "greedy"

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[Hypothesis]:
        return greedy_decode(log_probs, lengths, self.tokenizer)
