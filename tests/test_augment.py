"""asr.data.augment's option checks: speeds that would give copies one id, speeds <= 0, no voices."""
from __future__ import annotations

import pytest

from asr.data.augment import AugmentOptions, augment_utterances, synth_digit_strings
from asr.data.manifest import Utterance
from tests.conftest import write_audio


@pytest.fixture
def utts(tmp_path) -> list[Utterance]:
    write_audio(tmp_path / "a.flac", 0.3)
    return [Utterance("a", str(tmp_path / "a.flac"), "ONE", 0.3, "spk")]


@pytest.mark.parametrize("speeds, tag", [((1.0, 1.0), "sp100"), ((0.9, 0.904), "sp090"), ((1.1, 0.9, 1.104), "sp110")])
def test_speeds_with_one_tag_are_rejected_before_any_work(utts, tmp_path, speeds, tag):
    """Before: 1.0 twice listed every utterance twice under one id; 0.9 and 0.904 wrote one file twice."""
    with pytest.raises(ValueError, match=tag):
        augment_utterances(utts, tmp_path / "aug", AugmentOptions(speeds=speeds), progress=False)
    assert not (tmp_path / "aug").exists()


@pytest.mark.parametrize("speeds", [(0.0,), (1.0, -0.9), (float("inf"),), (float("nan"), 1.0)])
def test_speeds_must_be_positive_and_finite(utts, tmp_path, speeds):
    """Before: a speed of 0 or below skipped every utterance, one by one, as a 'problem'."""
    with pytest.raises(ValueError, match="positive"):
        augment_utterances(utts, tmp_path / "aug", AugmentOptions(speeds=speeds), progress=False)


def test_speeds_a_hundredth_apart_are_fine(utts, tmp_path):
    problems: list[str] = []
    out = augment_utterances(utts, tmp_path / "aug", AugmentOptions(speeds=(0.9, 0.91, 1.0)), problems, progress=False)
    assert problems == []
    assert sorted(u.id for u in out) == ["a", "a-sp090", "a-sp091"]


@pytest.mark.parametrize("kwargs, match", [({"num_voices": 0}, "num_voices"), ({"min_digits": 0}, "min_digits"),
                                           ({"min_digits": 5, "max_digits": 3}, "max_digits")])
def test_synth_digit_strings_rejects_no_voices_and_bad_digit_counts(tmp_path, kwargs, match):
    """Before: 0 voices divided by zero (ZeroDivisionError, not an input error)."""
    with pytest.raises(ValueError, match=match):
        synth_digit_strings(2, tmp_path, use_flite=False, progress=False, **kwargs)
