"""asr.decode.greedy on hand-built emissions: repeats merge, a blank separates repeats, blanks vanish."""
from __future__ import annotations

import math

import pytest
import torch

from asr.decode.greedy import GreedyDecoder, ctc_collapse, greedy_decode
from asr.decode.types import Hypothesis
from asr.text import CharTokenizer

TOK = CharTokenizer()
V = TOK.vocab_size
o = 0  # blank


def ids(text: str) -> list[int]:
    return TOK.encode(text)


def emissions(frames: list[list[int]], peak: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Per utterance a list of frame-level best ids -> log_probs (B, T, V) with ``peak`` on that id."""
    T = max(len(f) for f in frames)
    lp = torch.full((len(frames), T, V), math.log((1 - peak) / (V - 1)))
    for b, f in enumerate(frames):
        for t, i in enumerate(f):
            lp[b, t, i] = math.log(peak)
    return lp, torch.tensor([len(f) for f in frames])


A, B, H, I, S = ids("A")[0], ids("B")[0], ids("H")[0], ids("I")[0], ids(" ")[0]


@pytest.mark.parametrize("frames, tokens, times, text", [
    ([A, A, A], [A], [0], "A"),
    ([A, A, o, A, B, B], [A, A, B], [0, 3, 4], "AAB"),
    ([o, A, A, o, o, A, o], [A, A], [1, 5], "AA"),
    ([o, o, o, o], [], [], ""),
    ([o, H, o, I, S, S, o, A], [H, I, S, A], [1, 3, 4, 7], "HI A"),
    ([S, H, I, S], [S, H, I, S], [0, 1, 2, 3], "HI"),  # leading/trailing word separators are trimmed
    ([A, B, A, B], [A, B, A, B], [0, 1, 2, 3], "ABAB"),
])
def test_greedy_on_hand_built_emissions(frames, tokens, times, text):
    lp, lengths = emissions([frames])
    (hyp,) = greedy_decode(lp, lengths, TOK)
    assert isinstance(hyp, Hypothesis)
    assert hyp.tokens == tokens
    assert hyp.timesteps == times
    assert hyp.text == text
    assert hyp.score == pytest.approx(len(frames) * math.log(0.9), rel=1e-5)


def test_ctc_collapse_directly():
    assert ctc_collapse([3, 3, 0, 3, 0, 0, 4]) == ([3, 3, 4], [0, 3, 6])
    assert ctc_collapse([]) == ([], [])


def test_frames_beyond_the_length_are_ignored():
    lp, _lengths = emissions([[H, I, o, A, B]])
    (hyp,) = greedy_decode(lp, torch.tensor([3]), TOK)
    assert hyp.text == "HI" and hyp.tokens == [H, I]
    assert hyp.score == pytest.approx(3 * math.log(0.9), rel=1e-5)


def test_a_batch_decodes_like_single_utterances():
    utts = [[o, H, H, o, I], [A, o, A], [o, o]]
    lp, lengths = emissions(utts)
    batch = greedy_decode(lp, lengths, TOK)
    singles = [greedy_decode(*emissions([u]), TOK)[0] for u in utts]
    assert [h.text for h in batch] == ["HI", "AA", ""]
    assert [(h.tokens, h.timesteps) for h in batch] == [(h.tokens, h.timesteps) for h in singles]
    for h, s in zip(batch, singles):
        assert h.score == pytest.approx(s.score)


def test_greedy_decoder_interface():
    dec = GreedyDecoder(TOK)
    assert dec.name == "greedy"
    lp, lengths = emissions([[B, o, B, S, A]])
    (hyp,) = dec(lp, lengths)
    assert hyp.text == "BB A"
