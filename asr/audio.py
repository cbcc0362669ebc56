"""Audio input: any file soundfile reads, any rate and channel count -> mono float at 16 kHz."""
from __future__ import annotations

import functools
import io
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the problem."""


def decode_reason(e: Exception) -> str:
    """libsndfile's reason without its "Error opening '<file>': " prefix: our messages name the file
    already, and for in-memory data it would be the repr of a BytesIO."""
    return re.sub(r"^Error opening (?:'[^']*'|<[^>]*>): ", "", str(e))


def to_mono_16k(data: np.ndarray, sample_rate: int, target_rate: int = 16000, name: str = "<audio>") -> torch.Tensor:
    """Mix down and resample decoded samples.

    Args:
        data: shape (samples,) or (samples, channels), any numeric dtype soundfile returns.
    Returns:
        float32 tensor of shape (samples',) at ``target_rate``.
    """
    if data.size == 0:
        raise AudioError(f"{name}: no samples (empty audio)")
    # numpy's check: torch.isfinite(...).all() took a fifth of a loader worker's time per utterance
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: contains NaN or Inf samples")
    wav = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if wav.ndim == 2:
        wav = wav.mean(dim=1)
    if sample_rate != target_rate:
        wav = _resampler(sample_rate, target_rate)(wav)
    return wav


@functools.lru_cache(maxsize=8)
def _resampler(orig_rate: int, new_rate: int) -> torchaudio.transforms.Resample:
    """torchaudio's resampler with its filter kernel built once: the same samples as
    ``torchaudio.functional.resample``, which rebuilds the kernel on every call (half its time on a
    sentence of 22.05 kHz speech)."""
    return torchaudio.transforms.Resample(orig_rate, new_rate, dtype=torch.float32)


def trim_silence(wav: torch.Tensor, sample_rate: int = 16000, top_db: float = 40.0, margin_s: float = 0.1) -> torch.Tensor:
    """wav (S,) -> (S',): leading and trailing stretches more than ``top_db`` below the loudest frame
    cut away (``librosa.effects.trim``, 25 ms frames), keeping ``margin_s`` of them at each end."""
    import librosa  # only synthesis needs it; importing librosa costs about a second

    _, (start, end) = librosa.effects.trim(wav.numpy(), top_db=top_db, frame_length=int(0.025 * sample_rate),
                                           hop_length=int(0.010 * sample_rate))
    if end <= start:  # all silence: nothing to keep apart from it
        return wav
    margin = int(margin_s * sample_rate)
    return wav[max(0, start - margin) : min(wav.shape[0], end + margin)]


def load_audio(path: str | Path | bytes, target_rate: int = 16000, name: str | None = None,
               pcm16: bool = False) -> torch.Tensor:
    """Read an audio file (or its bytes) as mono float32 at ``target_rate``; shape (samples,).

    ``pcm16``: int16 samples instead (float x 32768, rounded). A mono 16-bit file at ``target_rate``
    (what ``asr shard`` writes) is then decoded straight to int16, skipping a float pass each way:
    a loader worker spends most of its time decoding.
    """
    name = name or (str(path) if not isinstance(path, bytes) else "<bytes>")
    if not isinstance(path, bytes) and not Path(path).is_file():
        raise AudioError(f"{name}: file not found")
    if (len(path) if isinstance(path, bytes) else Path(path).stat().st_size) == 0:
        # libsndfile would say "Format not recognised", which hides the real problem.
        raise AudioError(f"{name}: empty file (0 bytes)")
    source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    try:
        with sf.SoundFile(source) as f:
            if pcm16 and f.subtype == "PCM_16" and f.channels == 1 and f.samplerate == target_rate:
                data = f.read(dtype="int16")
                if data.size == 0:
                    raise AudioError(f"{name}: no samples (empty audio)")
                return torch.from_numpy(data)
            data, rate = f.read(dtype="float32", always_2d=False), f.samplerate
    except FileNotFoundError as e:
        raise AudioError(f"{name}: file not found") from e
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        if isinstance(e, AudioError):
            raise
        raise AudioError(f"{name}: cannot decode audio ({decode_reason(e)})") from e
    wav = to_mono_16k(data, rate, target_rate, name)
    return to_pcm16(wav) if pcm16 else wav


def to_pcm16(wav: torch.Tensor) -> torch.Tensor:
    """float samples (any shape) -> int16, x 32768 rounded and clipped (lossless for 16-bit sources)."""
    return (wav * 32768).round_().clamp_(-32768, 32767).to(torch.int16)


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header, without decoding the samples."""
    if not Path(path).is_file():
        raise AudioError(f"{path}: file not found")
    if Path(path).stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except FileNotFoundError as e:
        raise AudioError(f"{path}: file not found") from e
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"{path}: cannot read audio header ({decode_reason(e)})") from e
    return info.frames / info.samplerate
