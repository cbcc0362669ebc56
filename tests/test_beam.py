"""CPU prefix beam search: exact on tiny inputs, greedy at width 1, LM fusion, pool, tokenizers."""
from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asr.decode import build_decoder
from asr.decode.beam import BeamSearchDecoder, LMMismatchError, prefix_beam_search, SearchOptions
from asr.decode.emissions import pad, synthetic_emissions
from asr.decode.greedy import ctc_collapse, greedy_decode
from asr.lm import build_lm, write_arpa
from asr.text import CharTokenizer, build_tokenizer


class TinyTokenizer:
    """Blank plus a few letters and a space token, small enough to enumerate every alignment."""

    kind = "char"

    def __init__(self, letters: str = "AB"):
        self.tokens = ["<blank>", "|"] + list(letters)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def decode(self, ids):
        return " ".join("".join(self.tokens[i] for i in ids if i).replace("|", " ").split())

    def is_space(self, i: int) -> bool:
        return i == 1

    def is_word_start(self, i: int) -> bool:
        return False


EXACT = SearchOptions(beam_size=200, token_top_k=None, token_min_logp=None, beam_threshold=None)


def brute_force(lp: np.ndarray) -> dict[tuple[int, ...], float]:
    """log P(labelling) for every labelling, summing over all T^V alignments."""
    T, V = lp.shape
    probs: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=T):
        labels = tuple(ctc_collapse(list(path))[0])
        probs[labels] = probs.get(labels, 0.0) + math.exp(sum(lp[t, c] for t, c in enumerate(path)))
    return {k: math.log(v) for k, v in probs.items()}


def random_log_probs(rng: np.random.Generator, T: int, V: int, sharp: float = 2.0) -> np.ndarray:
    x = rng.normal(size=(T, V)) * sharp
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("seed", range(12))
def test_beam_finds_the_most_probable_labelling(seed):
    rng = np.random.default_rng(seed)
    T, V = int(rng.integers(1, 6)), int(rng.integers(2, 5))
    lp = random_log_probs(rng, T, V)
    truth = brute_force(lp)
    out = prefix_beam_search(lp, EXACT, nbest=len(truth))
    best = max(truth, key=truth.get)
    assert tuple(out[0][0]) == best
    # every labelling the search returns carries its exact probability
    for tokens, _, score in out:
        assert score == pytest.approx(truth[tuple(tokens)], abs=1e-9)
    assert len(out) == len(truth)  # with an unlimited beam, nothing is lost


def test_repeats_need_a_blank_to_count_twice():
    # frames: A A _ A  ->  "A A" only through the blank; "A" through the first two merged
    lp = np.log(np.array([[0.01, 0.01, 0.97, 0.01], [0.01, 0.01, 0.97, 0.01],
                          [0.97, 0.01, 0.01, 0.01], [0.01, 0.01, 0.97, 0.01]]))
    out = prefix_beam_search(lp, EXACT, nbest=2)
    assert out[0][0] == [2, 2]
    assert out[0][1] == [0, 3]  # each token's first frame


def chars_setup(n: int = 12, seed: int = 0):
    rng = random.Random(seed)
    words = ["CAT", "CAR", "CART", "DOG", "DOT", "THE", "A", "TO", "GO", "OF"]
    sents = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(200)]
    tok = CharTokenizer()
    em = synthetic_emissions(tok, sents[:n], noise=1.2, confuse=0.15, seed=seed)
    return tok, build_lm(sents[20:], order=3), em


@pytest.fixture(scope="module")
def chars():
    return chars_setup()


def test_width_one_is_exactly_greedy(chars):
    tok, lm, em = chars
    lp, lens = pad(em.log_probs)
    greedy = greedy_decode(lp, lens, tok)
    for dec in (BeamSearchDecoder(tok, beam_size=1), BeamSearchDecoder(tok, lm, beam_size=1, alpha=0.0, beta=0.0)):
        beam = dec(lp, lens)
        assert [h.tokens for h in beam] == [h.tokens for h in greedy]
        assert [h.timesteps for h in beam] == [h.timesteps for h in greedy]
        assert [h.text for h in beam] == [h.text for h in greedy]


def test_zero_lm_weights_give_exactly_the_search_without_lm(chars):
    tok, lm, em = chars
    lp, lens = pad(em.log_probs)
    plain = BeamSearchDecoder(tok, beam_size=8)(lp, lens)
    zero = BeamSearchDecoder(tok, lm, beam_size=8, alpha=0.0, beta=0.0)(lp, lens)
    assert [(h.tokens, h.timesteps, h.score) for h in zero] == [(h.tokens, h.timesteps, h.score) for h in plain]
    with_lm = BeamSearchDecoder(tok, lm, beam_size=8, alpha=0.8, beta=1.0)(lp, lens)
    assert [h.text for h in with_lm] != [h.text for h in plain]  # the LM does change something here


def test_lm_repairs_misspelt_words(chars):
    from asr.metrics import score

    tok, lm, em = chars
    lp, lens = pad(em.log_probs)
    plain = score(em.refs, [h.text for h in BeamSearchDecoder(tok, beam_size=8)(lp, lens)]).wer
    fused = score(em.refs, [h.text for h in BeamSearchDecoder(tok, lm, beam_size=8, alpha=1.0, beta=1.0)(lp, lens)]).wer
    assert plain > 0.05
    assert fused < plain / 2


def test_lm_score_is_added_at_word_ends_and_end_of_sentence():
    # one clear path "A|B": the hypothesis score is acoustic + alpha * log P(A B </s>) + 2 beta
    tok = CharTokenizer()
    frames = [tok.encode(c)[0] for c in "A|B"]
    lp = torch.full((len(frames), tok.vocab_size), -30.0)
    lp[torch.arange(len(frames)), frames] = 0.0
    lp = torch.log_softmax(lp, -1)
    lm = build_lm(["A B", "B A", "A A B"], order=2)
    alpha, beta = 0.7, 0.3
    no_lm = BeamSearchDecoder(tok, beam_size=4).nbest(lp, 1)[0]
    fused = BeamSearchDecoder(tok, lm, beam_size=4, alpha=alpha, beta=beta).nbest(lp, 1)[0]
    assert fused.text == no_lm.text == "A B"
    lm_ln = lm.sentence_logprob10(["A", "B"]) * math.log(10)
    assert fused.score == pytest.approx(no_lm.score + alpha * lm_ln + 2 * beta)


def test_unknown_words_pay_the_penalty_once():
    tok = CharTokenizer()
    frames = [tok.encode(c)[0] for c in "ZZ"]
    frames = [frames[0], 0, frames[1]]
    lp = torch.full((3, tok.vocab_size), -30.0)
    lp[torch.arange(3), frames] = 0.0
    lp = torch.log_softmax(lp, -1)
    lm = build_lm(["A B"], order=2)
    base = BeamSearchDecoder(tok, beam_size=4).nbest(lp, 1)[0]
    h = BeamSearchDecoder(tok, lm, beam_size=4, alpha=0.5, beta=0.0, unk_penalty=-7.0).nbest(lp, 1)[0]
    assert h.text == "ZZ"
    expect = 0.5 * (-7.0 + lm.sentence_logprob10(["ZZ"]) * math.log(10))
    assert h.score == pytest.approx(base.score + expect)


def test_pool_gives_the_same_results_as_one_process(chars):
    tok, lm, em = chars
    lp, lens = pad(em.log_probs)
    one = BeamSearchDecoder(tok, lm, beam_size=6, alpha=0.6, beta=0.5)(lp, lens)
    with BeamSearchDecoder(tok, lm, beam_size=6, alpha=0.6, beta=0.5, num_workers=2) as dec:
        many = dec(lp, lens)
    assert [(h.tokens, h.score) for h in many] == [(h.tokens, h.score) for h in one]


def test_batch_of_three_equals_three_batches_of_one(chars):
    tok, lm, em = chars
    dec = BeamSearchDecoder(tok, lm, beam_size=6)
    lp, lens = pad(em.log_probs[:3])
    together = dec(lp, lens)
    alone = [dec(x[None], torch.tensor([x.shape[0]]))[0] for x in em.log_probs[:3]]
    assert [(h.tokens, h.score) for h in together] == [(h.tokens, h.score) for h in alone]


def test_sentencepiece_word_boundaries_reach_the_lm(tmp_path):
    rng = random.Random(3)
    words = ["CAT", "CAR", "CART", "DOG", "DOT", "THE", "A", "TO", "GO", "OF"]
    sents = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(300)]
    tok = build_tokenizer("sentencepiece", sents, vocab_size=24)
    lm = build_lm(sents[20:], order=3)
    em = synthetic_emissions(tok, sents[:12], noise=1.2, confuse=0.2, seed=1)
    lp, lens = pad(em.log_probs)
    plain = BeamSearchDecoder(tok, beam_size=8)(lp, lens)
    zero = BeamSearchDecoder(tok, lm, beam_size=8, alpha=0.0, beta=0.0)(lp, lens)
    assert [h.tokens for h in zero] == [h.tokens for h in plain]
    fused = BeamSearchDecoder(tok, lm, beam_size=8, alpha=1.0, beta=1.0)(lp, lens)
    from asr.metrics import score

    assert score(em.refs, [h.text for h in fused]).wer <= score(em.refs, [h.text for h in plain]).wer
    # every fused word is one the LM knows (OOV words pay the penalty)
    assert all(w in lm.word_id for h in fused for w in h.text.split())


def test_lm_tokenizer_mismatch_is_refused(tmp_path):
    tok = CharTokenizer()
    lower = tmp_path / "lower.arpa"
    lm = build_lm(["THE CAT SAT"], order=2)
    lm.vocab = [w.lower() if w not in ("<s>", "</s>", "<unk>") else w for w in lm.vocab]
    lm.word_id = {w: i for i, w in enumerate(lm.vocab)}
    write_arpa(lm, lower)
    with pytest.raises(LMMismatchError, match="lower case"):
        BeamSearchDecoder(tok, lower)
    cyrillic = build_lm(["THE CAT"], order=1)
    cyrillic.vocab = [{"THE": "КОТ", "CAT": "ПЕС"}.get(w, w) for w in cyrillic.vocab]
    cyrillic.word_id = {w: i for i, w in enumerate(cyrillic.vocab)}
    with pytest.raises(LMMismatchError, match="only 0 of the LM's 2 words"):
        BeamSearchDecoder(tok, cyrillic)
    with pytest.raises(ValueError, match="greedy decoder takes no LM"):
        build_decoder("greedy", tok, lm_path=str(lower))


def test_factory_builds_each_decoder(chars, tmp_path):
    tok, lm, em = chars
    write_arpa(lm, tmp_path / "lm.arpa")
    lp, lens = pad(em.log_probs[:2])
    for name in ("greedy", "beam", "beam-gpu"):
        dec = build_decoder(name, tok, lm_path=None if name == "greedy" else str(tmp_path / "lm.arpa"), beam_size=4)
        hyps = dec(lp, lens)
        assert len(hyps) == 2 and all(isinstance(h.text, str) for h in hyps)
    with pytest.raises(ValueError, match="unknown decoder 'viterbi'"):
        build_decoder("viterbi", tok)
    with pytest.raises(ValueError, match="lengths must be 1-D"):
        build_decoder("beam", tok)(lp, lens[None])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30), st.sampled_from([1, 2, 5]))
def test_property_scores_finite_sorted_and_width_one_greedy(seed, T, width):
    tok = TinyTokenizer("ABC")
    rng = np.random.default_rng(seed)
    lp = torch.tensor(random_log_probs(rng, T, tok.vocab_size, sharp=3.0), dtype=torch.float32)
    dec = BeamSearchDecoder(tok, beam_size=width)
    hyps = dec.nbest(lp, n=width)
    scores = [h.score for h in hyps]
    assert all(math.isfinite(s) for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
    if width == 1:
        assert dec(lp[None], torch.tensor([T]))[0].tokens == greedy_decode(lp[None], torch.tensor([T]), tok)[0].tokens


# --- the batched (tensor) search: same results as the CPU search, on the CPU ---------------------
def test_nbest_lists_each_transcript_once():
    """"A B" and "A B |" (a trailing word boundary) are one transcript: the n-best list gives the
    better of them only, so the gap between its first two entries (adapt's confidence margin)
    compares different words."""
    tok = CharTokenizer()
    lp = torch.full((5, tok.vocab_size), math.log(1e-4))
    for t, probs in enumerate([{"A": 0.9}, {"<blank>": 0.9}, {"|": 0.9}, {"B": 0.9}, {"<blank>": 0.6, "|": 0.4}]):
        for token, p in probs.items():
            lp[t, tok.tokens.index(token)] = math.log(p)
    hyps = BeamSearchDecoder(tok, beam_size=8).nbest(torch.log_softmax(lp, -1), 3)
    assert [h.text for h in hyps] == ["A B", "A", "AB"]
    assert hyps[0].tokens == [tok.tokens.index(c) for c in "A|B"]


from asr.decode.batched import BatchedBeamSearchDecoder, TensorLM  # noqa: E402


def same_within_ties(cpu, batched, tol: float = 1e-9) -> None:
    """Equal hypotheses, or (a tie) a different one with the same score."""
    assert len(cpu) == len(batched)
    for a, b in zip(cpu, batched):
        assert b.score == pytest.approx(a.score, abs=tol)
        if a.tokens == b.tokens:
            assert a.timesteps == b.timesteps
            assert a.text == b.text


@pytest.mark.parametrize("width", [1, 2, 5, 12])
@pytest.mark.parametrize("lm_kw", [None, dict(alpha=0.8, beta=1.0), dict(alpha=2.0, beta=-0.5)])
def test_batched_equals_cpu_on_characters(chars, width, lm_kw):
    tok, lm, em = chars
    lp, lens = pad(em.log_probs)  # mixed lengths: padding must not change a result
    kw = {} if lm_kw is None else dict(lm=lm, **lm_kw)
    cpu = BeamSearchDecoder(tok, beam_size=width, **kw)(lp, lens)
    batched = BatchedBeamSearchDecoder(tok, beam_size=width, **kw)(lp, lens)
    same_within_ties(cpu, batched)


def test_batched_equals_cpu_without_pruning(chars):
    tok, lm, em = chars
    lp, lens = pad(em.log_probs)
    kw = dict(lm=lm, beam_size=6, alpha=1.0, beta=0.5, token_min_logp=None, beam_threshold=None, token_top_k=None)
    same_within_ties(BeamSearchDecoder(tok, **kw)(lp, lens), BatchedBeamSearchDecoder(tok, **kw)(lp, lens))
    kw = dict(lm=lm, beam_size=6, alpha=1.0, beta=0.5, token_min_logp=-3.0, beam_threshold=6.0, token_top_k=3)
    same_within_ties(BeamSearchDecoder(tok, **kw)(lp, lens), BatchedBeamSearchDecoder(tok, **kw)(lp, lens))


def test_batched_equals_cpu_on_sentencepiece():
    rng = random.Random(5)
    words = ["CAT", "CAR", "CART", "DOG", "DOT", "THE", "A", "TO", "GO", "OF"]
    sents = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(300)]
    tok = build_tokenizer("sentencepiece", sents, vocab_size=24)
    lm = build_lm(sents[20:], order=3)
    em = synthetic_emissions(tok, sents[:12], noise=1.5, confuse=0.3, seed=2)
    lp, lens = pad(em.log_probs)
    for kw in ({}, dict(lm=lm, alpha=0.8, beta=1.0)):
        same_within_ties(BeamSearchDecoder(tok, beam_size=8, **kw)(lp, lens),
                         BatchedBeamSearchDecoder(tok, beam_size=8, **kw)(lp, lens))


@pytest.mark.parametrize("seed", range(6))
def test_batched_finds_the_most_probable_labelling(seed):
    rng = np.random.default_rng(100 + seed)
    items = []
    for _ in range(3):
        T, V = int(rng.integers(1, 6)), 4
        items.append(torch.tensor(random_log_probs(rng, T, V)))
    lp, lens = pad(items)
    dec = BatchedBeamSearchDecoder(TinyTokenizer(), beam_size=100, token_min_logp=None, beam_threshold=None)
    for x, h in zip(items, dec(lp, lens)):
        truth = brute_force(x.numpy())
        assert h.score == pytest.approx(max(truth.values()), abs=1e-9)
        assert truth[tuple(h.tokens)] == pytest.approx(h.score, abs=1e-9)


def test_batched_batch_of_three_equals_three_batches_of_one(chars):
    tok, lm, em = chars
    dec = BatchedBeamSearchDecoder(tok, lm, beam_size=6)
    lp, lens = pad(em.log_probs[:3])
    together = dec(lp, lens)
    alone = [dec(x[None], torch.tensor([x.shape[0]]))[0] for x in em.log_probs[:3]]
    assert [(h.tokens, h.timesteps) for h in together] == [(h.tokens, h.timesteps) for h in alone]
    assert [h.score for h in together] == pytest.approx([h.score for h in alone], abs=1e-9)


def test_batched_float32_agrees_with_float64(chars):
    tok, lm, em = chars
    lp, lens = pad(em.log_probs)
    f64 = BatchedBeamSearchDecoder(tok, lm, beam_size=6)(lp, lens)
    f32 = BatchedBeamSearchDecoder(tok, lm, beam_size=6, dtype=torch.float32)(lp, lens)
    same_within_ties(f64, f32, tol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batched_on_cuda_agrees_with_cpu(chars):
    tok, lm, em = chars
    lp, lens = pad(em.log_probs)
    cpu = BeamSearchDecoder(tok, lm, beam_size=6)(lp, lens)
    gpu = BatchedBeamSearchDecoder(tok, lm, beam_size=6, device="cuda", dtype=torch.float64)(lp.cuda(), lens.cuda())
    same_within_ties(cpu, gpu)


def test_tensor_lm_scores_equal_the_ngram_lm(chars):
    _, lm, _ = chars
    tlm = TensorLM(lm, torch.device("cpu"), torch.float64)
    rng = random.Random(0)
    ids = list(range(len(lm.vocab))) + [-1]  # -1: a word outside the vocabulary
    ctxs = [[rng.choice(ids) for _ in range(lm.order - 1)] for _ in range(200)]
    ctxs += [[-1] * (lm.order - 2) + [lm.bos_id]]
    words = [rng.choice(ids) for _ in ctxs]
    got, _ = tlm.score(torch.tensor(ctxs), torch.tensor(words))
    want = [lm.logprob10_ids(c, w) * math.log(10) for c, w in zip(ctxs, words)]
    assert got.tolist() == pytest.approx(want, abs=1e-9)


def test_timesteps_increase_and_lie_on_their_tokens(chars):
    tok, lm, em = chars
    lp, lens = pad(em.log_probs)
    for dec in (BeamSearchDecoder(tok, lm, beam_size=8), BatchedBeamSearchDecoder(tok, lm, beam_size=8)):
        for b, h in enumerate(dec(lp, lens)):
            assert h.timesteps == sorted(set(h.timesteps)) and len(h.timesteps) == len(h.tokens)
            assert all(0 <= t < int(lens[b]) for t in h.timesteps)
