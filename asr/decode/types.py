"""The typed result every decoder returns."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Hypothesis:
    """One decoded utterance.

    tokens: token ids after CTC collapse (no blanks, no repeats).
    timesteps: for each token, the output frame (after subsampling) where it was emitted.
    score: total log score of the path (acoustic, plus LM terms where an LM is used).
    """

    text: str
    tokens: list[int] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)
    score: float = 0.0
