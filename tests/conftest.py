"""Shared test helpers: one CPU thread, deterministic signals, tiny audio files and configs."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

# The machines that run these tests are small and often busy: one thread keeps timings predictable.
torch.set_num_threads(1)


def signal(seconds: float, rate: int = 16000, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A deterministic test signal in [-0.5, 0.5]: two tones plus a little noise; (S,) or (S, C)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    cols = []
    for c in range(channels):
        x = 0.3 * np.sin(2 * np.pi * (220 + 110 * c + 37 * seed) * t) + 0.1 * np.sin(2 * np.pi * 1375 * t)
        cols.append(x + 0.05 * rng.standard_normal(n))
    out = np.stack(cols, axis=1) if channels > 1 else cols[0]
    return np.clip(out, -0.5, 0.5).astype(np.float32)


def write_audio(path: Path, seconds: float, rate: int = 16000, seed: int = 0, channels: int = 1,
                subtype: str | None = None, fmt: str | None = None) -> np.ndarray:
    """Write a test signal with soundfile; returns the samples as written (float32)."""
    data = signal(seconds, rate, seed, channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype=subtype, format=fmt)
    return data


def int16_roundtrip(x: np.ndarray, fmt: str = "FLAC") -> np.ndarray:
    """What a 16-bit ``fmt`` file holds of float samples ``x``, read back as float.

    (libsndfile rounds to 16 bits differently for WAV and FLAC, so the format matters.)
    """
    import io

    buf = io.BytesIO()
    sf.write(buf, x, 16000, format=fmt, subtype="PCM_16")
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


@pytest.fixture
def tiny_model_cfg():
    from asr.config import ModelConfig

    return ModelConfig(subsample_channels=4, hidden=16, layers=2, dropout=0.0)


@pytest.fixture
def feature_cfg():
    from asr.config import FeatureConfig

    return FeatureConfig()


TRAIN_TEXTS = ["AB", "CAT", "DOG", "A B", "BE", "SEA", "TEA", "ODD", "EGG", "HI", "OK", "AT"]


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory):
    """12 short utterances (tones with short texts) in 3 shards, for runs of the training loop."""
    from asr.data.manifest import Utterance
    from asr.data.shards import write_shards

    root = tmp_path_factory.mktemp("train")
    utts = []
    for i, text in enumerate(TRAIN_TEXTS):
        sec = 0.3 + 0.05 * (i % 4)
        path = root / "audio" / f"u{i:02d}.flac"
        write_audio(path, sec, seed=i, subtype="PCM_16")
        utts.append(Utterance(f"u{i:02d}", str(path), text, sec))
    return [str(p) for p in write_shards(utts, root / "shards", "train", max_per_shard=5, progress=False)]


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None
