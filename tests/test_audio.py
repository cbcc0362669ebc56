"""asr.audio: any soundfile-readable file -> mono float32 at 16 kHz; bad files -> AudioError naming the file."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import AudioError, audio_duration, load_audio, to_mono_16k, trim_silence
from tests.conftest import int16_roundtrip, signal, write_audio


def test_mono_16k_int16_wav_is_read_unchanged(tmp_path):
    path = tmp_path / "a.wav"
    data = write_audio(path, 0.5, subtype="PCM_16")
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.ndim == 1
    assert wav.shape[0] == 8000
    np.testing.assert_allclose(wav.numpy(), int16_roundtrip(data, "WAV"), atol=1e-6)


def test_stereo_is_mixed_down_to_the_channel_mean(tmp_path):
    path = tmp_path / "stereo.wav"
    data = write_audio(path, 0.25, channels=2, subtype="FLOAT")
    wav = load_audio(path)
    assert wav.shape == (4000,)
    np.testing.assert_allclose(wav.numpy(), data.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("subtype, fmt, suffix, atol", [
    ("PCM_24", "WAV", "wav", 1e-6),
    ("FLOAT", "WAV", "wav", 1e-7),
    ("PCM_16", "FLAC", "flac", 1e-4),
    ("PCM_24", "FLAC", "flac", 1e-6),
])
def test_sample_formats_load_as_the_same_float_signal(tmp_path, subtype, fmt, suffix, atol):
    path = tmp_path / f"x.{suffix}"
    data = write_audio(path, 0.3, subtype=subtype, fmt=fmt)
    wav = load_audio(path)
    assert wav.dtype == torch.float32
    assert wav.shape == (4800,)
    np.testing.assert_allclose(wav.numpy(), data, atol=atol)


@pytest.mark.parametrize("rate, seconds", [(8000, 0.5), (44100, 0.5), (22050, 0.2), (48000, 1 / 3)])
def test_other_rates_are_resampled_to_16k_with_the_right_length(tmp_path, rate, seconds):
    path = tmp_path / f"r{rate}.wav"
    data = write_audio(path, seconds, rate=rate, subtype="PCM_16")
    wav = load_audio(path)
    assert wav.shape[0] == math.ceil(len(data) * 16000 / rate)
    assert abs(wav.shape[0] / 16000 - len(data) / rate) < 1e-3
    # Resampling keeps the signal: same energy, and a 220 Hz tone stays at 220 Hz.
    assert float(wav.pow(2).mean()) == pytest.approx(float(np.mean(data.astype(np.float64) ** 2)), rel=0.1)


@pytest.mark.parametrize("rate", [22050, 8000, 44100])
def test_cached_resampler_gives_torchaudio_functional_samples(rate):
    """to_mono_16k keeps one resampler per rate pair; its samples equal torchaudio.functional.resample's
    exactly (the exported script resamples with the latter and must transcribe alike)."""
    import torchaudio.functional as AF

    x = signal(0.7, rate=rate, seed=rate)
    for _ in range(2):  # first call builds the kernel, second reuses it
        assert torch.equal(to_mono_16k(x, rate), AF.resample(torch.from_numpy(x), rate, 16000))


def test_resampled_tone_keeps_its_frequency(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate
    path = tmp_path / "tone.wav"
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, subtype="FLOAT")
    wav = load_audio(path).numpy()
    spectrum = np.abs(np.fft.rfft(wav))
    peak_hz = np.argmax(spectrum) * 16000 / len(wav)
    assert abs(peak_hz - 440) < 2


def test_stereo_44k_24bit_at_once(tmp_path):
    path = tmp_path / "s.wav"
    data = write_audio(path, 0.5, rate=44100, channels=2, subtype="PCM_24")
    wav = load_audio(path)
    assert wav.ndim == 1 and wav.shape[0] == math.ceil(data.shape[0] * 16000 / 44100)


def test_bytes_input_is_the_same_as_the_file(tmp_path):
    path = tmp_path / "b.flac"
    write_audio(path, 0.2, rate=8000)
    assert torch.equal(load_audio(path.read_bytes()), load_audio(path))


def test_audio_duration_reads_the_header(tmp_path):
    path = tmp_path / "d.flac"
    write_audio(path, 0.75, rate=22050)
    assert audio_duration(path) == pytest.approx(0.75, abs=1e-4)


def test_empty_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav"):
        load_audio(path)


def test_header_without_samples_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "nosamples.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="nosamples.wav") as exc:
        load_audio(path)
    assert "empty" in str(exc.value) or "no samples" in str(exc.value)


def test_non_audio_bytes_are_an_error_naming_the_file(tmp_path):
    path = tmp_path / "notes.flac"
    path.write_bytes(b"this is a text file, not audio\n" * 20)
    with pytest.raises(AudioError, match="notes.flac"):
        load_audio(path)


def test_missing_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "nowhere" / "missing.wav"
    with pytest.raises(AudioError, match="missing.wav: file not found"):
        load_audio(path)
    with pytest.raises(AudioError, match="missing.wav: file not found"):
        audio_duration(path)


def test_audio_error_is_a_value_error():
    # Callers that catch ValueError (e.g. data loaders) keep working.
    assert issubclass(AudioError, ValueError)


def test_nan_samples_are_refused():
    data = signal(0.1)
    data[10] = np.nan
    with pytest.raises(AudioError, match="clip.wav"):
        to_mono_16k(data, 16000, name="clip.wav")


def test_trim_silence_cuts_the_quiet_ends_and_keeps_a_margin():
    sr = 16000
    t = torch.arange(sr) / sr
    tone = 0.5 * torch.sin(2 * math.pi * 300 * t)
    quiet = 1e-4 * torch.randn(sr // 2)  # 0.5 s at -74 dB: below 40 dB under the tone
    wav = torch.cat([quiet, tone, quiet])
    out = trim_silence(wav, sr, top_db=40, margin_s=0.1)
    # the whole tone survives, plus about 0.1 s on each side (trim works in 10 ms hops)
    assert 1.15 * sr <= out.shape[0] <= 1.25 * sr
    start = int(torch.nonzero(out.abs() > 0.1)[0])
    assert 0.08 * sr <= start <= 0.13 * sr
    # silence alone, or audio without quiet ends, is left as it is
    assert torch.equal(trim_silence(torch.zeros(sr), sr), torch.zeros(sr))
    assert trim_silence(tone, sr).shape[0] >= sr - 400


@pytest.mark.parametrize("rate, channels, subtype, fmt", [
    (16000, 1, "PCM_16", "FLAC"),   # what shards hold: decoded straight to int16
    (8000, 1, "PCM_16", "WAV"),     # resampled first
    (16000, 2, "PCM_16", "FLAC"),   # mixed down first
    (16000, 1, "PCM_24", "FLAC"),   # more bits than int16 keeps
    (16000, 1, "FLOAT", "WAV"),
])
def test_pcm16_is_the_float_samples_quantized_whatever_the_file(tmp_path, rate, channels, subtype, fmt):
    """load_audio(pcm16=True) gives round(float x 32768) of what load_audio gives, by either route."""
    from asr.audio import to_pcm16
    path = tmp_path / f"a.{fmt.lower()}"
    write_audio(path, 0.3, rate=rate, channels=channels, subtype=subtype, fmt=fmt)
    pcm = load_audio(path.read_bytes(), name="a", pcm16=True)
    assert pcm.dtype == torch.int16 and pcm.ndim == 1
    assert torch.equal(pcm, to_pcm16(load_audio(path)))


def test_pcm16_still_refuses_nan_and_empty_audio(tmp_path):
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.array([0.1, np.nan, 0.2], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: contains NaN or Inf"):
        load_audio(nan, pcm16=True)
    empty = tmp_path / "empty.flac"
    sf.write(str(empty), np.zeros(0, np.int16), 16000, format="FLAC", subtype="PCM_16")
    with pytest.raises(AudioError, match=r"empty\.flac: (no samples|empty file)"):
        load_audio(empty, pcm16=True)
