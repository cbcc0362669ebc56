"""FSDD preparation and offline augmentation: speaker-disjoint splits, connected strings whose text
and duration match the clips they were built from, bad recordings skipped, augmentation arithmetic."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.data.augment import (AugmentOptions, add_noise, augment_utterances, colored_noise, speed_perturb,
                              synth_digit_strings)
from asr.data.fsdd import (DIGIT_WORDS, FSDDError, PrepareOptions, concatenate, digits_text, prepare_fsdd, scan_fsdd,
                           split_speakers)
from asr.data.manifest import read_manifest
from tests.conftest import have_espeak

SPEAKERS = ["anna", "bert", "carl", "dora"]


def make_fsdd(root: Path, speakers: list[str] = SPEAKERS, per_digit: int = 2) -> dict[str, int]:
    """A tiny FSDD-layout folder of 8 kHz clips; each clip's length encodes its identity.

    Returns file name -> number of samples at 8 kHz.
    """
    rec = root / "recordings"
    rec.mkdir(parents=True)
    lengths = {}
    for s, spk in enumerate(speakers):
        for d in range(10):
            for i in range(per_digit):
                n = 1600 + 80 * d + 8 * i + 400 * s  # 0.2 s and up: distinct per (speaker, digit, index)
                t = np.arange(n) / 8000
                x = 0.3 * np.sin(2 * np.pi * (200 + 50 * d) * t) + 0.01 * np.random.default_rng(n).standard_normal(n)
                name = f"{d}_{spk}_{i}.wav"
                sf.write(str(rec / name), x.astype(np.float32), 8000, subtype="PCM_16")
                lengths[name] = n
    return lengths


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fsdd")
    make_fsdd(root / "fsdd")
    (root / "fsdd" / "recordings" / "3_dora_9.wav").write_bytes(b"RIFF not really a wav")
    (root / "fsdd" / "recordings" / "notes.wav").write_bytes(b"")
    problems: list[str] = []
    opts = PrepareOptions(test_speakers=("dora",), dev_speakers=("carl",), connected_per_speaker=6,
                          eval_connected_per_speaker=5, seed=3)
    manifests = prepare_fsdd(root / "fsdd", root / "out", opts, problems)
    return root / "out", {"manifests": manifests, "problems": problems}


def test_splits_are_speaker_disjoint(prepared):
    out, info = prepared
    speakers = {name: {u.speaker for u in read_manifest(out / f"{name}.jsonl")}
                for name in ("train", "dev", "test_isolated", "test_connected")}
    assert speakers["train"] == {"anna", "bert"}
    assert speakers["dev"] == {"carl"}
    assert speakers["test_isolated"] == speakers["test_connected"] == {"dora"}
    split = json.loads((out / "split.json").read_text())
    assert split["train"] == ["anna", "bert"] and split["test"] == ["dora"]


def test_bad_recordings_are_reported_and_skipped(prepared):
    out, info = prepared
    problems = info["problems"]
    assert any("notes.wav" in p for p in problems)
    assert any("3_dora_9.wav" in p for p in problems)
    test_iso = read_manifest(out / "test_isolated.jsonl")
    assert len(test_iso) == 10 * 2  # every readable dora clip; the unreadable extra one is gone
    assert "fsdd-dora-3-09" not in {u.id for u in test_iso}


def test_isolated_text_and_padding(prepared):
    out, _ = prepared
    for u in read_manifest(out / "train.jsonl"):
        if "-c" in u.id:
            continue
        digit = int(u.id.split("-")[2])
        assert u.text == DIGIT_WORDS[digit]
        info = sf.info(u.audio)
        assert info.samplerate == 16000 and info.format == "FLAC"
        index = int(u.id.split("-")[3])
        s = SPEAKERS.index(u.speaker)
        clip = 2 * (1600 + 80 * digit + 8 * index + 400 * s)  # samples at 16 kHz
        pad = info.frames - clip
        assert 2 * 0.05 * 16000 - 2 <= pad <= 2 * 0.25 * 16000 + 2, u.id
        assert u.duration == pytest.approx(info.frames / 16000)


def test_connected_strings_match_their_clips(prepared):
    out, _ = prepared
    connected = [u for u in read_manifest(out / "train.jsonl") if "-c" in u.id]
    assert len(connected) == 2 * 6
    lengths = set()
    for u in connected:
        words = u.text.split()
        assert 2 <= len(words) <= 7 and all(w in DIGIT_WORDS for w in words)
        lengths.add(len(words))
        digits = [DIGIT_WORDS.index(w) for w in words]
        s = SPEAKERS.index(u.speaker)
        # Clip lengths for this speaker: any index of the digit (0 or 1), in 16 kHz samples.
        shortest = sum(2 * (1600 + 80 * d + 400 * s) for d in digits)
        longest = sum(2 * (1600 + 80 * d + 8 + 400 * s) for d in digits)
        frames = sf.info(u.audio).frames
        gaps_min = 2 * 0.05 * 16000 + (len(digits) - 1) * 0.03 * 16000
        gaps_max = 2 * 0.25 * 16000 + (len(digits) - 1) * 0.30 * 16000
        assert shortest + gaps_min - len(digits) - 2 <= frames <= longest + gaps_max + len(digits) + 2, u.id
    assert len(lengths) > 1  # lengths vary


def test_prepare_is_deterministic(prepared, tmp_path):
    out, _ = prepared
    root = out.parent / "fsdd"
    opts = PrepareOptions(test_speakers=("dora",), dev_speakers=("carl",), connected_per_speaker=6,
                          eval_connected_per_speaker=5, seed=3)
    again = prepare_fsdd(root, tmp_path / "again", opts)
    first = read_manifest(out / "test_connected.jsonl")
    assert [(u.id, u.text, u.duration) for u in first] == [(u.id, u.text, u.duration) for u in again["test_connected"]]


def test_concatenate_adds_gaps_exactly():
    g = torch.Generator().manual_seed(0)
    clips = [torch.ones(100), 2 * torch.ones(50), 3 * torch.ones(70)]
    out = concatenate(clips, [10, 20, 0, 5], 0.001, g)
    assert out.shape == (100 + 50 + 70 + 35,)
    assert torch.equal(out[10:110], clips[0])
    assert torch.equal(out[130:180], clips[1])
    assert torch.equal(out[180:250], clips[2])
    assert out[:10].abs().max() < 0.01 and out[:10].abs().max() > 0  # background noise, not digital silence
    with pytest.raises(ValueError, match="one entry more"):
        concatenate(clips, [1, 2, 3], 0.001, g)


def test_split_speakers_errors():
    spk = ["a", "b", "c"]
    assert split_speakers(spk, ["c"], ["b"]) == {"train": ["a"], "dev": ["b"], "test": ["c"]}
    assert split_speakers(spk, ["c"], []) == {"train": ["a", "b"], "dev": [], "test": ["c"]}
    with pytest.raises(FSDDError, match="not in the corpus"):
        split_speakers(spk, ["zed"], [])
    with pytest.raises(FSDDError, match="both the dev and the test"):
        split_speakers(spk, ["c"], ["c"])
    with pytest.raises(FSDDError, match="no training speakers"):
        split_speakers(spk, ["c"], ["a", "b"])


def test_scan_reports_misnamed(tmp_path):
    make_fsdd(tmp_path, ["x"], per_digit=1)
    (tmp_path / "recordings" / "ten_x_0.wav").write_bytes(b"")
    problems: list[str] = []
    clips = scan_fsdd(tmp_path, problems)
    assert len(clips) == 10 and len(problems) == 1 and "ten_x_0.wav" in problems[0]
    with pytest.raises(FileNotFoundError):
        scan_fsdd(tmp_path / "recordings" / "nothing")


def test_digits_text():
    assert digits_text([3, 7, 1]) == "THREE SEVEN ONE"
    assert digits_text([0]) == "ZERO"


def test_speed_perturb_changes_length_and_pitch():
    t = torch.arange(16000) / 16000
    wav = torch.sin(2 * np.pi * 440 * t)
    fast = speed_perturb(wav, 1.1)
    slow = speed_perturb(wav, 0.9)
    assert abs(fast.shape[0] - 16000 / 1.1) <= 2 and abs(slow.shape[0] - 16000 / 0.9) <= 2
    assert speed_perturb(wav, 1.0) is wav
    peak = int(torch.fft.rfft(fast).abs().argmax()) * 16000 / fast.shape[0]
    assert peak == pytest.approx(440 * 1.1, abs=3)


@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_add_noise_hits_the_snr(snr):
    g = torch.Generator().manual_seed(1)
    wav = torch.sin(torch.arange(8000) / 5.0) * 0.3
    for kind in ("white", "pink", "brown"):
        noise = colored_noise(8000, kind, g)
        assert noise.pow(2).mean().sqrt() == pytest.approx(1.0, rel=1e-3)
        noisy = add_noise(wav, noise, snr)
        measured = 10 * torch.log10(wav.pow(2).mean() / (noisy - wav).pow(2).mean())
        assert float(measured) == pytest.approx(snr, abs=1e-3)


def test_pink_noise_is_pink():
    g = torch.Generator().manual_seed(2)
    spec = torch.fft.rfft(colored_noise(1 << 16, "pink", g)).abs().pow(2)
    low, high = spec[100:200].mean(), spec[10000:20000].mean()
    assert 50 < float(low / high) < 200  # power ~ 1/f: frequency ratio 100


def test_augment_manifest(prepared, tmp_path):
    out, _ = prepared
    utts = read_manifest(out / "test_isolated.jsonl")[:6]
    problems: list[str] = []
    bad = utts[0].__class__("broken", str(tmp_path / "missing.flac"), "ONE", 1.0, "dora")
    opts = AugmentOptions(speeds=(0.9, 1.0, 1.1), noise_prob=0.5, seed=0)
    aug = augment_utterances(utts + [bad], tmp_path / "aug", opts, problems, jobs=1, progress=False)
    assert len(problems) >= 2 and all("missing.flac" in p for p in problems)
    ids = [u.id for u in aug]
    assert len(ids) == len(set(ids))
    originals = {u.id: u for u in utts}
    for u in aug:
        if u.id == "broken":  # an unchanged copy is not read here; the shard stage reports it
            continue
        base = u.id.split("-sp")[0].removesuffix("-noise")
        src = originals[base]
        assert u.text == src.text and u.speaker == src.speaker
        if "-sp110" in u.id:
            assert u.duration == pytest.approx(src.duration / 1.1, abs=2e-3)
        elif "-sp090" in u.id:
            assert u.duration == pytest.approx(src.duration / 0.9, abs=2e-3)
        else:
            assert u.duration == pytest.approx(src.duration, abs=2e-3)
        if u.id in originals:
            assert u.audio == src.audio  # unchanged originals are not rewritten
    assert sum(u.id.endswith("-noise") for u in aug) > 0
    assert sum(u.id in originals for u in aug) < len(utts)  # some 1.0 copies got noise


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng not installed")
def test_synthetic_digit_strings(tmp_path):
    utts = synth_digit_strings(4, tmp_path, num_voices=2, seed=1, use_flite=False, jobs=1, progress=False)
    assert len(utts) == 4
    for u in utts:
        assert all(w in DIGIT_WORDS for w in u.text.split())
        data, sr = sf.read(u.audio)
        assert sr == 16000 and u.duration == pytest.approx(len(data) / 16000, abs=1e-3)
        spec = np.abs(np.fft.rfft(data)) ** 2
        freqs = np.fft.rfftfreq(len(data), 1 / 16000)
        assert spec[freqs > 4500].sum() < 1e-3 * spec.sum()  # band-limited to 4 kHz like FSDD
    assert len({u.speaker for u in utts}) == 2
