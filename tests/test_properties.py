"""Property-based tests (hypothesis): text normalization, tokenizers, manifests, CTC decoders.

Each property holds for every input; hypothesis looks for the input that breaks it. Example
counts are kept modest so the file runs in seconds. (tests/test_text.py also checks that
``normalize`` is idempotent and stays in its alphabet for any text.)
"""
from __future__ import annotations

import json
import math
import re
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr.decode.beam import BeamSearchDecoder
from asr.data.manifest import MAX_DURATION, ManifestError, Utterance, read_manifest, write_manifest
from asr.decode.greedy import GreedyDecoder, ctc_collapse
from asr.text import BLANK, CharTokenizer, SentencePieceTokenizer, normalize, tokenizer_from_state

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ALPHABET = set(string.ascii_uppercase + "' ")

# ----------------------------------------------------------------------------------------- normalize

words = st.text(alphabet=string.ascii_letters, min_size=1, max_size=8)
separators = st.text(alphabet=" \t\n,.;:!?-\"()[]/&%0123456789\u2014\u00a0", min_size=1, max_size=4)


@FAST
@given(st.lists(words, min_size=0, max_size=8), st.data())
def test_normalize_keeps_the_words_whatever_the_case_punctuation_and_spacing(ws, data):
    """Words of letters joined by any mix of punctuation, digits and white space come out as the
    upper-case words joined by single spaces."""
    seps = [data.draw(separators) for _ in range(len(ws) + 1)]
    text = seps[0] + "".join(w + s for w, s in zip(ws, seps[1:]))
    assert normalize(text) == " ".join(w.upper() for w in ws)


@FAST
@given(st.text(max_size=40), st.text(max_size=40))
def test_normalize_works_word_by_word(a, b):
    """Normalizing two texts apart and joining them is normalizing them joined by a space."""
    joined = normalize(a + " " + b)
    assert joined == " ".join(x for x in (normalize(a), normalize(b)) if x)
    assert set(joined) <= ALPHABET and normalize(joined) == joined


@FAST
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_normalize_is_case_blind_for_ascii(text):
    assert normalize(text.lower()) == normalize(text.upper()) == normalize(text)


# ---------------------------------------------------------------------------------------- tokenizers

SP_TRAIN = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
            "pack my box with five dozen liquor jugs", "don't count your chickens before they hatch",
            "sphinx of black quartz judge my vow", "we'll see what it's worth"]


@pytest.fixture(scope="module")
def sp() -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train([normalize(s) for s in SP_TRAIN * 4], vocab_size=48)


normalized_text = st.lists(st.text(alphabet=string.ascii_uppercase + "'", min_size=1, max_size=10),
                           max_size=8).map(lambda ws: normalize(" ".join(ws)))


@FAST
@given(text=normalized_text)
def test_sentencepiece_round_trips_any_normalized_text(sp, text):
    """Every letter and the apostrophe were seen in training (character coverage 1.0), so any
    normalized text comes back exactly; ids are never the blank and always in the vocabulary."""
    ids = sp.encode(text)
    assert all(BLANK < i < sp.vocab_size for i in ids)
    assert sp.decode(ids) == text
    assert sp.decode([BLANK] + [x for i in ids for x in (i, BLANK)]) == text, "blanks are ignored"
    again = tokenizer_from_state(sp.state())
    assert again.encode(text) == ids


@FAST
@given(text=normalized_text)
def test_char_tokenizer_round_trip_and_word_boundaries(text):
    tok = CharTokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert sum(tok.is_space(i) for i in ids) == max(0, len(text.split()) - 1)


@FAST
@given(ids=st.lists(st.integers(0, 28), max_size=30))
def test_char_decode_of_any_ids_is_clean_text(ids):
    """A decoder may emit any ids; the text is always upper-case letters and apostrophes in words
    separated by single spaces. (Not always normalized: a stray apostrophe stays, as the model
    emitted it; scoring normalizes hypotheses.)"""
    text = CharTokenizer().decode(ids)
    assert set(text) <= ALPHABET and text == " ".join(text.split())


# ----------------------------------------------------------------------------------------- manifests

no_surrogates = st.characters(blacklist_categories=("Cs",))
utterances = st.lists(
    st.builds(
        Utterance,
        id=st.text(no_surrogates, min_size=1, max_size=12),
        audio=st.text(alphabet=string.ascii_letters + string.digits + "_-. ", min_size=1, max_size=12)
        .map(lambda s: f"/data/{s}.flac"),
        text=st.text(no_surrogates, min_size=1, max_size=40).filter(lambda t: t.strip()),
        duration=st.floats(min_value=1e-3, max_value=MAX_DURATION, allow_nan=False),
        speaker=st.none() | st.text(no_surrogates, max_size=8),
    ),
    max_size=8, unique_by=lambda u: u.id)


@FAST
@given(utts=utterances, relative=st.booleans())
def test_manifest_write_read_round_trip(utts, relative):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.jsonl"
        assert write_manifest(path, utts, relative=relative) == len(utts)
        problems: list[str] = []
        back = read_manifest(path, check_audio=False, problems=problems)
    assert problems == []
    if relative:  # paths come back absolute, resolved against the manifest's folder
        back = [Utterance(u.id, str(Path(u.audio).resolve()), u.text, u.duration, u.speaker) for u in back]
    assert back == utts


garbage_line = (st.text(max_size=60) | st.binary(max_size=60)
                | st.builds(json.dumps, st.dictionaries(st.sampled_from(["id", "audio", "text", "duration", "x"]),
                                                        st.none() | st.integers() | st.floats() | st.text(max_size=5)
                                                        | st.lists(st.integers(), max_size=2))))


@FAST
@given(lines=st.lists(garbage_line, max_size=12), strict=st.booleans())
def test_manifest_garbage_never_crashes_only_manifest_errors(lines, strict):
    """Any bytes at all: every non-blank line is an utterance or one reported problem naming its
    line; with strict the first problem is a ManifestError, never another exception."""
    raw = [x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass") for x in lines]
    raw = [x.replace(b"\n", b" ") for x in raw]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "g.jsonl"
        path.write_bytes(b"\n".join(raw) + b"\n")
        problems: list[str] = []
        try:
            utts = read_manifest(path, strict=strict, check_audio=False, problems=problems)
        except ManifestError as e:
            assert strict and re.match(rf"{re.escape(str(path))}:\d+: ", str(e))
            return
    nonblank = [n for n, x in enumerate(raw, 1) if x.decode("utf-8", "replace").strip()]
    assert len(utts) + len(problems) == len(nonblank)
    for p in problems:
        assert "\n" not in p and re.match(rf"{re.escape(str(path))}:\d+: ", p)


# ------------------------------------------------------------------------------------------- decoders

def random_log_probs(seed: int, B: int, T: int, V: int, sharp: float) -> torch.Tensor:
    """(B, T, V) log-softmax of scaled Gaussian logits; ``sharp`` near 0 is flat, large is peaky."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, V, generator=g, dtype=torch.float64) * sharp).log_softmax(-1).float()


emissions = st.tuples(st.integers(0, 2**31), st.integers(1, 4), st.integers(1, 40), st.floats(0.1, 6.0))


@FAST
@given(emissions, st.data())
def test_greedy_output_is_a_valid_collapsed_path(em, data):
    seed, B, T, sharp = em
    tok = CharTokenizer()
    lp = random_log_probs(seed, B, T, tok.vocab_size, sharp)
    lengths = torch.tensor([data.draw(st.integers(1, T)) for _ in range(B)])
    hyps = GreedyDecoder(tok)(lp, lengths)
    assert len(hyps) == B
    for b, h in enumerate(hyps):
        n = int(lengths[b])
        best = lp[b, :n].argmax(-1).tolist()
        assert (h.tokens, h.timesteps) == tuple(ctc_collapse(best))
        assert all(BLANK < t < tok.vocab_size for t in h.tokens)
        assert all(0 <= a < c for a, c in zip(h.timesteps, h.timesteps[1:])) and all(t < n for t in h.timesteps)
        assert all(a != c or lp[b, ta:tc].argmax(-1).eq(BLANK).any()
                   for a, c, ta, tc in zip(h.tokens, h.tokens[1:], h.timesteps, h.timesteps[1:])), \
            "equal neighbours need a blank between them"
        assert h.text == tok.decode(h.tokens)
        assert math.isfinite(h.score) and h.score == pytest.approx(float(lp[b, :n].max(-1).values.sum()), abs=1e-4)
        # Frames past the length are ignored: the same utterance alone, unpadded, decodes the same.
        alone = GreedyDecoder(tok)(lp[b : b + 1, :n], torch.tensor([n]))[0]
        assert (alone.tokens, alone.timesteps, alone.text) == (h.tokens, h.timesteps, h.text)


@FAST
@given(emissions, st.data())
def test_beam_width_one_is_greedy(em, data):
    seed, B, T, sharp = em
    tok = CharTokenizer()
    lp = random_log_probs(seed, B, T, tok.vocab_size, sharp)
    lengths = torch.tensor([data.draw(st.integers(1, T)) for _ in range(B)])
    got = BeamSearchDecoder(tok, beam_size=1)(lp, lengths)
    want = GreedyDecoder(tok)(lp, lengths)
    assert [(h.tokens, h.timesteps, h.text) for h in got] == [(h.tokens, h.timesteps, h.text) for h in want]


@FAST
@given(emissions, st.integers(2, 12))
def test_beam_nbest_scores_are_finite_sorted_and_distinct(em, width):
    seed, _, T, sharp = em
    tok = CharTokenizer()
    lp = random_log_probs(seed, 1, T, tok.vocab_size, sharp)[0]
    hyps = BeamSearchDecoder(tok, beam_size=width).nbest(lp, n=width)
    assert 1 <= len(hyps) <= width
    scores = [h.score for h in hyps]
    assert all(math.isfinite(s) and s <= 1e-9 for s in scores), "a log-probability"
    assert scores == sorted(scores, reverse=True)
    assert len({h.text for h in hyps}) == len(hyps), "distinct transcripts, not just distinct token strings"
    for h in hyps:
        assert all(BLANK < t < tok.vocab_size for t in h.tokens)
        assert len(h.timesteps) == len(h.tokens) and all(0 <= t < T for t in h.timesteps)
        assert all(a < b for a, b in zip(h.timesteps, h.timesteps[1:]))
        assert h.text == tok.decode(h.tokens)


class ThreeLetters:
    """Blank, a space token and two letters: few enough labellings for an exhaustive beam."""

    kind = "char"
    tokens = ["<blank>", "|", "A", "B"]
    vocab_size = 4

    def decode(self, ids) -> str:
        return " ".join("".join(self.tokens[i] for i in ids if i).replace("|", " ").split())

    def is_space(self, i: int) -> bool:
        return i == 1

    def is_word_start(self, i: int) -> bool:
        return False


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 5), st.floats(0.1, 4.0))
def test_exhaustive_beam_scores_are_exact_ctc_probabilities(seed, T, sharp):
    """With no pruning and a beam wider than the number of prefixes, each hypothesis's score is
    log P(labelling | emissions), which torch's CTC loss computes independently."""
    tok = ThreeLetters()
    lp = random_log_probs(seed, 1, T, tok.vocab_size, sharp)[0].double()
    dec = BeamSearchDecoder(tok, beam_size=400, token_top_k=None, token_min_logp=None, beam_threshold=None)
    hyps = dec.nbest(lp.float(), n=6)
    for h in hyps:
        if not h.tokens:
            ref = float(lp[:, BLANK].sum())
        else:
            ref = -float(F.ctc_loss(lp[:, None], torch.tensor([h.tokens]), torch.tensor([T]),
                                    torch.tensor([len(h.tokens)]), blank=BLANK, reduction="sum"))
        assert h.score == pytest.approx(ref, abs=1e-4), h.tokens
    # Nothing was pruned: the probabilities of all labellings sum to one.
    total = sum(math.exp(h.score) for h in dec.nbest(lp.float(), n=400, distinct=False))
    assert total == pytest.approx(1.0, abs=1e-4)
