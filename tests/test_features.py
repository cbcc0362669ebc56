"""asr.features: log-mel against librosa, padding invariance, CMVN statistics, SpecAugment masks."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from asr.config import FeatureConfig, SpecAugConfig
from asr.features import (CMVNAccumulator, FeatureExtractor, GlobalCMVN, LogMel, frame_lengths, length_mask,
                          log_mel, spec_augment)
from tests.conftest import signal


def librosa_log_mel(wav: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The reference: librosa with torchaudio MelSpectrogram's defaults (HTK mel scale, no filter
    normalisation, periodic Hann window, f_min 0, f_max sr/2), zero-padded centred frames, power 2."""
    mel = librosa.feature.melspectrogram(
        y=wav.astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft,
        win_length=int(cfg.sample_rate * cfg.win_ms / 1000), hop_length=int(cfg.sample_rate * cfg.hop_ms / 1000),
        window="hann", center=True, pad_mode="constant", power=2.0, n_mels=cfg.n_mels, htk=True, norm=None,
        fmin=0.0, fmax=cfg.sample_rate / 2,
    )
    return np.log(mel + 1e-6).T  # (T, n_mels)


@pytest.mark.parametrize("seconds", [0.5, 0.3217])
def test_log_mel_matches_librosa(seconds):
    cfg = FeatureConfig()
    wav = signal(seconds, seed=3)
    ours = log_mel(torch.from_numpy(wav), cfg).numpy()
    ref = librosa_log_mel(wav, cfg)
    assert ours.shape == ref.shape == (len(wav) // 160 + 1, 80)
    # Compare where there is energy: log of tiny values amplifies float32 rounding.
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-5)


def test_log_mel_shape_and_frame_count():
    cfg = FeatureConfig(n_mels=40)
    for n in (160, 161, 319, 320, 4000):
        feats = log_mel(torch.from_numpy(signal(n / 16000)), cfg)
        assert feats.shape == (n // 160 + 1, 40)
    assert frame_lengths(torch.tensor([0, 159, 160, 16000]), cfg).tolist() == [1, 1, 2, 101]


def test_padded_batch_equals_each_utterance_alone():
    cfg = FeatureConfig()
    waves = [torch.from_numpy(signal(s, seed=i)) for i, s in enumerate((0.61, 0.2, 0.4537))]
    lengths = torch.tensor([w.shape[0] for w in waves])
    batch = torch.zeros(3, int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : w.shape[0]] = w
    feats, flen = LogMel(cfg)(batch, lengths)
    assert feats.shape[0] == 3 and flen.tolist() == [w.shape[0] // 160 + 1 for w in waves]
    for i, w in enumerate(waves):
        alone = log_mel(w, cfg)
        n = int(flen[i])
        torch.testing.assert_close(feats[i, :n], alone, atol=1e-4, rtol=1e-5)
        assert torch.count_nonzero(feats[i, n:]) == 0, "padding frames must be exactly zero"


def test_cmvn_accumulator_matches_torch_over_valid_frames():
    torch.manual_seed(0)
    feats = torch.randn(3, 50, 8) * torch.tensor([1.0, 2, 3, 4, 0.5, 1, 1, 7]) + 5.0
    lengths = torch.tensor([50, 17, 33])
    feats = feats.masked_fill(~length_mask(lengths, 50)[..., None], 0.0)
    acc = CMVNAccumulator(8)
    acc.add(feats[:2], lengths[:2])  # accumulated over two calls
    acc.add(feats[2:], lengths[2:])
    valid = torch.cat([feats[i, : lengths[i]] for i in range(3)])
    mean, std = acc.stats()
    assert acc.count == 100
    torch.testing.assert_close(mean, valid.mean(0), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(std, valid.std(0, unbiased=False), atol=1e-4, rtol=1e-4)


def test_cmvn_accumulator_without_frames_is_an_error():
    with pytest.raises(ValueError, match="no feature frames"):
        CMVNAccumulator(4).stats()


def test_global_cmvn_normalises_and_keeps_padding_zero():
    cmvn = GlobalCMVN(4)
    cmvn.set_stats(torch.tensor([1.0, 2, 3, 4]), torch.tensor([2.0, 2, 2, 0.0]))
    feats = torch.full((2, 5, 4), 5.0)
    lengths = torch.tensor([5, 2])
    out = cmvn(feats, lengths)
    torch.testing.assert_close(out[0, 0, :3], torch.tensor([2.0, 1.5, 1.0]))
    assert torch.isfinite(out).all(), "a zero std must be clamped, not divided by"
    assert torch.count_nonzero(out[1, 2:]) == 0


def _ones(lengths: list[int], feat: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    lengths_t = torch.tensor(lengths)
    feats = torch.ones(len(lengths), max(lengths), feat)
    return feats.masked_fill(~length_mask(lengths_t, max(lengths))[..., None], 0.0), lengths_t


def test_spec_augment_frequency_masks_stay_in_bounds():
    feats, lengths = _ones([100, 60, 80], feat=20)
    cfg = SpecAugConfig(freq_masks=1, freq_width=6, time_masks=0)
    for seed in range(20):
        out = spec_augment(feats, lengths, cfg, torch.Generator().manual_seed(seed))
        for b in range(3):
            valid = out[b, : lengths[b]]
            masked_bins = (valid == 0).all(0)
            # A frequency mask hits whole bins, on every valid frame, one contiguous band of <= width.
            assert ((valid == 0).any(0) == masked_bins).all()
            idx = torch.nonzero(masked_bins).flatten()
            assert len(idx) <= 6
            if len(idx):
                assert int(idx[-1] - idx[0]) + 1 == len(idx)
            assert torch.count_nonzero(out[b, lengths[b]:]) == 0


def test_spec_augment_time_masks_stay_inside_the_utterance():
    feats, lengths = _ones([200, 40, 120], feat=10)
    cfg = SpecAugConfig(freq_masks=0, time_masks=1, time_width=30, time_width_frac=0.1)
    seen_mask = False
    for seed in range(20):
        out = spec_augment(feats, lengths, cfg, torch.Generator().manual_seed(seed))
        for b in range(3):
            n = int(lengths[b])
            masked_frames = (out[b, :n] == 0).all(1)
            assert ((out[b, :n] == 0).any(1) == masked_frames).all()
            idx = torch.nonzero(masked_frames).flatten()
            assert len(idx) <= min(30, int(n * 0.1)), "no wider than time_width nor time_width_frac x length"
            if len(idx):
                seen_mask = True
                assert int(idx[-1] - idx[0]) + 1 == len(idx) and int(idx[-1]) < n
            assert torch.count_nonzero(out[b, n:]) == 0, "padding stays zero"
    assert seen_mask


def test_spec_augment_is_deterministic_with_a_generator():
    feats, lengths = _ones([150, 90], feat=30)
    feats = feats * torch.arange(1, 31).float()
    cfg = SpecAugConfig()
    a = spec_augment(feats, lengths, cfg, torch.Generator().manual_seed(7))
    b = spec_augment(feats, lengths, cfg, torch.Generator().manual_seed(7))
    c = spec_augment(feats, lengths, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, feats), "the default config masks something"
    # Masking only zeroes: every output value is the input value or 0.
    assert ((a == feats) | (a == 0)).all()


def test_feature_extractor_applies_spec_augment_in_training_only():
    cfg = FeatureConfig(n_mels=40)
    fe = FeatureExtractor(cfg, SpecAugConfig(freq_masks=2, freq_width=10, time_masks=2, time_width=10))
    wav = torch.from_numpy(signal(1.0))[None]
    lengths = torch.tensor([wav.shape[1]])
    fe.eval()
    a, la = fe(wav, lengths)
    b, _ = fe(wav, lengths)
    assert torch.equal(a, b) and la.tolist() == [101]
    raw, _ = fe.logmel(wav, lengths)
    torch.testing.assert_close(a, raw)  # default CMVN is identity
    fe.train()
    torch.manual_seed(0)
    c, _ = fe(wav, lengths)
    assert (c == 0).sum() > (a == 0).sum()


def test_utterance_cmn_removes_the_recording_level_and_ignores_padding():
    import dataclasses

    from asr.config import FeatureConfig
    from asr.features import LogMel

    cfg = dataclasses.replace(FeatureConfig(), utterance_cmn=True)
    torch.manual_seed(0)
    wav = 0.1 * torch.randn(1, 8000)
    mel = LogMel(cfg)
    quiet, n = mel(wav, torch.tensor([8000]))
    loud, _ = mel(4.0 * wav, torch.tensor([8000]))
    torch.testing.assert_close(quiet, loud, atol=1e-2, rtol=0)  # a gain is a constant in the log domain (but for the floor)
    assert quiet[0, : int(n[0])].mean(dim=0).abs().max() < 1e-4  # zero mean per mel bin
    padded, m = mel(torch.cat([wav, torch.zeros(1, 3000)], dim=1), torch.tensor([8000]))
    assert int(m[0]) == int(n[0]) and bool((padded[0, int(n[0]):] == 0).all())
    torch.testing.assert_close(padded[:, : int(n[0])], quiet)
    plain, _ = LogMel(FeatureConfig())(wav, torch.tensor([8000]))
    assert not torch.allclose(plain, quiet)


def test_f_max_puts_every_band_below_it():
    """f_max=4000: no mel band takes any energy from above 4 kHz (8 kHz recordings have none)."""
    freqs = torch.linspace(0, 8000, 257)  # the n_fft=512 bins at 16 kHz
    low = LogMel(FeatureConfig(n_mels=40, f_max=4000.0)).mel.mel_scale.fb  # (257, 40)
    full = LogMel(FeatureConfig(n_mels=40)).mel.mel_scale.fb
    assert low[freqs > 4000].abs().sum() == 0 and low[freqs < 4000].sum(0).gt(0).all()
    assert full[freqs > 4000].sum() > 0
    # a 3 kHz tone lands in a band of the upper quarter of the range with f_max=4000, in the lower half without
    t = torch.arange(16000) / 16000
    tone = 0.3 * torch.sin(2 * torch.pi * 3000 * t)
    assert int(log_mel(tone, FeatureConfig(n_mels=40, f_max=4000.0)).mean(0).argmax()) >= 30
    assert int(log_mel(tone, FeatureConfig(n_mels=40)).mean(0).argmax()) < 30


def test_freq_warp_moves_a_band_by_the_drawn_factor_and_leaves_padding_alone():
    B, T, F = 64, 7, 40
    feats = torch.zeros(B, T, F)
    feats[:, :5, 20] = 1.0  # one active band; frames 5 and 6 are padding
    lengths = torch.full((B,), 5)
    cfg = SpecAugConfig(freq_masks=0, time_masks=0, freq_warp=0.2)
    out = spec_augment(feats, lengths, cfg, generator=torch.Generator().manual_seed(0))
    peak = out[:, 0].argmax(-1).float()  # where band 20's energy went: about 20 / alpha
    assert peak.min() >= 20 / 1.2 - 1 and peak.max() <= 20 / 0.8 + 1
    assert peak.unique().numel() > 3  # drawn per utterance
    energy = out[:, :5].sum(-1)  # a band stretched by 1/alpha covers about 1/alpha bands
    assert energy.min() > 1 / 1.2 - 0.1 and energy.max() < 1 / 0.8 + 0.1
    assert not out[:, 5:].any()
    same = spec_augment(feats, lengths, SpecAugConfig(freq_masks=0, time_masks=0, freq_warp=0.0))
    assert torch.equal(same, feats)


def test_log_mel_takes_int16_pcm_like_its_float_value():
    from asr.config import FeatureConfig
    from asr.features import LogMel
    pcm = (torch.randn(2, 8000) * 3000).round().clamp(-32768, 32767).to(torch.int16)
    lengths = torch.tensor([8000, 5000])
    lm = LogMel(FeatureConfig())
    a, la = lm(pcm, lengths)
    b, lb = lm(pcm.float() / 32768, lengths)
    assert torch.equal(la, lb)
    torch.testing.assert_close(a, b)
