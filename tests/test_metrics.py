"""asr.metrics: corpus-level WER (errors summed over the set), CER, normalisation, id matching."""
from __future__ import annotations

import pytest

from asr.metrics import ScoringError, format_errs, match_ids, score, wer


def test_corpus_wer_is_total_errors_over_total_words_not_a_mean():
    refs = ["the cat sat on the mat", "hello"]
    hyps = ["the cat sat on the mat", "goodbye"]
    s = score(refs, hyps)
    # 1 error over 7 reference words; the mean of per-utterance WERs would be (0 + 1) / 2 = 0.5.
    assert s.wer == pytest.approx(1 / 7)
    assert s.num_utts == 2 and s.num_words == 7
    assert (s.substitutions, s.deletions, s.insertions) == (1, 0, 0)
    assert wer(refs, hyps) == pytest.approx(1 / 7)


def test_substitutions_deletions_insertions_are_counted():
    s = score(["a b c d", "one two three", "x"], ["a x c d e", "one three", "x"])
    # utt 1: B->X, +E (2 errors); utt 2: -TWO (1 error); utt 3: none.  8 reference words.
    assert (s.substitutions, s.deletions, s.insertions) == (1, 1, 1)
    assert s.wer == pytest.approx(3 / 8)
    assert s.sub_pairs == {("B", "X"): 1}
    assert s.ins_words == {"E": 1} and s.del_words == {"TWO": 1}
    assert [(u["sub"], u["del"], u["ins"], u["words"]) for u in s.per_utt] == [(1, 0, 1, 4), (0, 1, 0, 3), (0, 0, 0, 1)]


def test_runs_of_errors_are_counted_word_by_word():
    # jiwer aligns each run of errors as one chunk; the tables count its words one by one
    s = score(["a b c d", "x y z w", "p q", "b c"], ["a x y d", "x w", "p m n q", "x y"])
    assert s.sub_pairs == {("B", "X"): 2, ("C", "Y"): 2}
    assert s.del_words == {"Y": 1, "Z": 1} and s.ins_words == {"M": 1, "N": 1}
    assert sum(s.sub_pairs.values()) == s.substitutions and sum(s.del_words.values()) == s.deletions
    assert sum(s.ins_words.values()) == s.insertions
    errs = format_errs(s)
    assert "      2  B -> X\n" in errs and "      1  Y\n" in errs and "      1  M\n" in errs
    assert "B C" not in errs.split("PER UTTERANCE")[0]


def test_wer_can_exceed_one_and_empty_hypotheses_are_deletions():
    s = score(["a b"], [""])
    assert s.wer == 1.0 and s.deletions == 2
    s = score(["a"], ["b c d"])
    assert s.wer == pytest.approx(3.0)


def test_references_and_hypotheses_are_normalised_the_same_way():
    s = score(["Hello, World! It's café-time."], ["HELLO WORLD IT'S CAFE TIME"])
    assert s.wer == 0.0 and s.cer == 0.0
    assert s.num_words == 5
    assert s.per_utt[0]["ref"] == "HELLO WORLD IT'S CAFE TIME"


def test_cer_counts_characters_including_spaces():
    s = score(["ab cd"], ["ab ce"])
    assert s.cer == pytest.approx(1 / 5)
    s = score(["abc", "de"], ["abd", "de"])
    assert s.cer == pytest.approx(1 / 5)
    assert s.wer == pytest.approx(1 / 2)


def test_ids_are_carried_into_the_report():
    s = score(["a b", "c"], ["a b", "d"], ids=["utt-1", "utt-2"])
    assert [u["id"] for u in s.per_utt] == ["utt-1", "utt-2"]
    report = format_errs(s)
    assert report.startswith("%WER 33.33 [ 1 / 3, 0 ins, 0 del, 1 sub ]")
    assert "C -> D" in report and "utt-2" in report


def test_length_mismatch_is_an_error():
    with pytest.raises(ScoringError, match="2 references but 1 hypotheses"):
        score(["a", "b"], ["a"])


def test_match_ids():
    assert match_ids({"b": "X", "a": "Y"}, {"a": "Y", "b": "Z"}) == ["a", "b"]
    with pytest.raises(ScoringError, match="1 without hypothesis") as exc:
        match_ids({"a": "X", "b": "Y"}, {"a": "X", "c": "Z"})
    assert "'b'" in str(exc.value) and "'c'" in str(exc.value) and "1 without reference" in str(exc.value)
    with pytest.raises(ScoringError, match="0 without hypothesis"):
        match_ids({"a": "X"}, {"a": "X", "extra": "Y"})
