"""Word n-gram LM: Kneser-Ney probabilities by hand, normalisation, ARPA round trip and errors."""
from __future__ import annotations

import math
import random

import pytest

from asr.lm import ArpaError, LMBuildError, build_lm, read_arpa, write_arpa
from asr.lm.build import discounts


def p(lm, history: str, word: str) -> float:
    return 10 ** lm.logprob10(history.split(), word)


def test_bigram_probabilities_match_hand_computation():
    # <s> A B </s> and <s> A C </s>: counts-of-counts are too thin, so the fallback discounts
    # D1=0.5, D2=1.0, D3+=1.5 apply. Unigram continuation counts: A 1, B 1, C 1, </s> 2 (total 5);
    # gamma = (0.5*3 + 1.0*1)/5 = 0.5 spread over 5 predictable words (A B C </s> <unk>).
    lm = build_lm(["a b", "A C"], order=2)
    assert p(lm, "", "A") == pytest.approx(0.5 / 5 + 0.5 / 5)
    assert p(lm, "", "</s>") == pytest.approx(1 / 5 + 0.5 / 5)
    assert p(lm, "", "<unk>") == pytest.approx(0.5 / 5)
    assert p(lm, "", "ZEBRA") == pytest.approx(0.5 / 5)  # OOV scores as <unk>
    # after A: B and C seen once each; gamma(A) = (0.5 + 0.5) / 2
    assert p(lm, "A", "B") == pytest.approx((1 - 0.5) / 2 + 0.5 * 0.2)
    assert p(lm, "A", "</s>") == pytest.approx(0.5 * 0.3)  # backed off
    assert p(lm, "A", "A") == pytest.approx(0.5 * 0.2)
    # after <s>: A seen twice (raw count, nothing precedes <s>), D2 = 1.0
    assert p(lm, "<s>", "A") == pytest.approx((2 - 1.0) / 2 + 0.5 * 0.2)
    assert p(lm, "B", "</s>") == pytest.approx(0.5 + 0.5 * 0.3)
    assert lm.sentence_logprob10(["A", "B"]) == pytest.approx(math.log10(0.6 * 0.35 * 0.65))


def test_discounts_from_counts_of_counts_and_fallback():
    from collections import Counter

    d = discounts(Counter({1: 100, 2: 40, 3: 20, 4: 10}))
    y = 100 / (100 + 80)
    assert d == pytest.approx((1 - 2 * y * 40 / 100, 2 - 3 * y * 20 / 40, 3 - 4 * y * 10 / 20))
    assert discounts(Counter({1: 5, 2: 1})) == (0.5, 1.0, 1.5)


def _corpus(seed: int = 0, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    words = "THE CAT SAT ON A MAT DOG RAN IT'S".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(n)]


@pytest.mark.parametrize("order,prune", [(1, ()), (2, ()), (3, ()), (4, ()), (3, (0, 1, 1)), (4, (0, 0, 1, 2))])
def test_kneser_ney_distributions_sum_to_one(order, prune):
    lm = build_lm(_corpus(), order=order, prune=prune)
    predictable = [i for i, w in enumerate(lm.vocab) if w != "<s>"]
    histories = {()}
    for n in range(1, order):
        histories |= {g for g in lm.probs[n - 1] if lm.vocab[g[-1]] != "</s>"}
    histories.add((lm.word_id["CAT"], lm.word_id["CAT"], lm.word_id["CAT"])[: order - 1])  # unseen
    for h in histories:
        total = sum(10 ** lm.logprob10_ids(h, w) for w in predictable)
        assert total == pytest.approx(1.0, abs=1e-9), (h, total)


def test_a_short_history_keeps_all_its_words_in_a_4_gram():
    """Every stored n-gram is scored with its own probability, whatever the order: a 2-word history
    in a 4-gram model used to lose its first word (a negative slice start), scoring the trigram
    "<s> EASE YOUR" as the bigram "EASE YOUR". The decoder's state API must agree."""
    lm = build_lm(["EASE YOUR BRAIN", "EASE YOUR MIND", "GOD IS DEAD"], order=4)
    checked = 0
    for n in range(2, 5):
        for words, logp, _ in lm.ngrams(n):
            assert lm.logprob10(list(words[:-1]), words[-1]) == pytest.approx(logp), words
            state = lm.begin_state() if words[0] == "<s>" else None
            if state is not None:  # the same n-gram through the decoding state API
                for w in words[1:-1]:
                    state = lm.score(state, lm.word_id[w])[1]
                assert lm.score(state, lm.word_id[words[-1]])[0] == pytest.approx(logp * math.log(10)), words
            checked += 1
    assert checked > 10


def test_pruning_removes_rare_ngrams_only():
    full = build_lm(_corpus(), order=3)
    pruned = build_lm(_corpus(), order=3, prune=(0, 1, 1))
    assert pruned.counts()[0] == full.counts()[0]
    assert pruned.counts()[2] < full.counts()[2]
    with pytest.raises(LMBuildError, match="unigrams cannot be pruned"):
        build_lm(_corpus(), order=2, prune=(1, 1))
    with pytest.raises(LMBuildError, match="must not decrease"):
        build_lm(_corpus(), order=3, prune=(0, 2, 1))
    with pytest.raises(LMBuildError, match="no text"):
        build_lm(["", "  ", "!!"], order=2)


@pytest.mark.parametrize("suffix", [".arpa", ".arpa.gz"])
def test_arpa_round_trip(tmp_path, suffix):
    lm = build_lm(_corpus(1), order=3, prune=(0, 0, 1))
    path = tmp_path / f"lm{suffix}"
    write_arpa(lm, path)
    back = read_arpa(path)
    assert back.order == 3 and back.counts() == lm.counts()
    assert set(back.vocab) == set(lm.vocab)
    for n in range(3):
        for g, lp in lm.probs[n].items():
            key = tuple(back.word_id[lm.vocab[i]] for i in g)
            assert back.probs[n][key] == pytest.approx(lp, abs=1e-7)
            assert back.backoffs[n].get(key, 0.0) == pytest.approx(lm.backoffs[n].get(g, 0.0), abs=1e-7)
    for sent in _corpus(2, 20):
        assert back.sentence_logprob10(sent.split()) == pytest.approx(lm.sentence_logprob10(sent.split()), abs=1e-5)


def test_backoff_scoring_of_a_hand_written_arpa(tmp_path):
    path = tmp_path / "hand.arpa"
    path.write_text(
        "\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n"
        "-1.0\t</s>\n-99\t<s>\t-0.5\n-0.5\tA\t-0.3\n-0.7\tB\t-0.2\n\n"
        "\\2-grams:\n-0.1\t<s> A\n-0.2\tA B\n\n\\end\\\n"
    )
    lm = read_arpa(path)
    assert lm.logprob10(["A"], "B") == pytest.approx(-0.2)  # stored bigram
    assert lm.logprob10(["A"], "A") == pytest.approx(-0.3 - 0.5)  # bow(A) + p(A)
    assert lm.logprob10(["B"], "</s>") == pytest.approx(-0.2 - 1.0)
    assert lm.logprob10([], "C") == pytest.approx(-100.0)  # no <unk> in the model: KenLM's value
    assert lm.logprob(["A"], "B") == pytest.approx(-0.2 * math.log(10))
    # the state API: same numbers in natural log, cached, and contexts trimmed to known n-grams
    s = lm.begin_state()
    lp, s2 = lm.score(s, lm.word_id["A"])
    assert lp == pytest.approx(-0.1 * math.log(10))
    assert lm.state_words(s2) == (lm.word_id["A"],)
    assert lm.eos_score(s2) == pytest.approx((-0.3 - 1.0) * math.log(10))


def test_agrees_with_kenlm_when_installed(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    lm = build_lm(_corpus(3), order=3, prune=(0, 1, 1))
    write_arpa(lm, tmp_path / "lm.arpa")
    ken = kenlm.Model(str(tmp_path / "lm.arpa"))
    for sent in _corpus(4, 50) + ["ZEBRA CAT", "THE THE THE"]:
        assert lm.sentence_logprob10(sent.split()) == pytest.approx(ken.score(sent, bos=True, eos=True), abs=1e-4)


@pytest.mark.parametrize("text,match", [
    ("hello\n", "no \\\\data\\\\ line"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\n-0.5\n\\end\\\n", "malformed ARPA line 5 in .*: a 1-gram line needs"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\n-x A\n\\end\\\n", "malformed ARPA line 5 .*not a number"),
    ("\\data\\\nngram 1=2\n\n\\1-grams:\n-0.5 A\n\\end\\\n", "declares 2 1-grams but the file lists 1"),
    ("\\data\\\nngram 1=1\nngram 2=1\n\n\\1-grams:\n-0.5 A\n\n\\2-grams:\n-0.1 A B\n\\end\\\n", "line 9 .*'B' is not among the unigrams"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\n-0.5 A\n", "truncated"),
])
def test_malformed_arpa_is_refused_with_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    with pytest.raises(ArpaError, match=match):
        read_arpa(path)
