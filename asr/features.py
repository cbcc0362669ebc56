"""Log-mel features, global CMVN and SpecAugment: the same code on CPU and GPU, in batches.

Shapes: waveforms (B, S) with ``lengths`` (B,) in samples; features (B, T, F) with lengths (B,)
in frames. Padding is zeros everywhere, and frames of a padded batch equal those of the same
utterance computed alone.
"""
from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn

from asr.config import FeatureConfig, SpecAugConfig


def frame_lengths(lengths: Tensor, cfg: FeatureConfig) -> Tensor:
    """Number of feature frames for waveforms of ``lengths`` samples; shape (B,)."""
    hop = int(cfg.sample_rate * cfg.hop_ms / 1000)
    return torch.div(lengths, hop, rounding_mode="floor") + 1


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A host tensor on ``device`` without stalling the host: a plain copy to a GPU first waits for
    all the work queued on it (a stream sync); a non-blocking copy from pinned memory does not."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B, max_len) bool mask, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class LogMel(nn.Module):
    """80-dim log-mel filterbank (25 ms window, 10 ms hop by default)."""

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.cfg = cfg
        # Zero (not reflect) padding at the edges, so a batch's zero padding changes nothing.
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=int(cfg.sample_rate * cfg.win_ms / 1000),
            hop_length=int(cfg.sample_rate * cfg.hop_ms / 1000),
            n_mels=cfg.n_mels,
            f_max=cfg.f_max or None,
            power=2.0,
            center=True,
            pad_mode="constant",
        )

    def forward(self, wav: Tensor, lengths: Tensor, means: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """wav (B, S) float, lengths (B,) -> feats (B, T, n_mels), frame lengths (B,).

        With ``cfg.speaker_cmn``, ``means`` (B, n_mels) are the speakers' mean log-mels to subtract
        (a NaN row, or no ``means``: the utterance's own mean, as with ``cfg.utterance_cmn``).
        """
        feats, flen = self.raw(wav, lengths)
        if self.cfg.utterance_cmn or self.cfg.speaker_cmn:
            valid = length_mask(flen, feats.shape[1])[..., None]
            mean = feats.sum(dim=1) / flen.clamp(min=1)[:, None].to(feats.dtype)  # (B, F)
            if self.cfg.speaker_cmn and means is not None:
                means = means.to(feats)
                mean = torch.where(torch.isnan(means), mean, means)
            feats = (feats - mean[:, None, :]).masked_fill(~valid, 0.0)
        return feats, flen

    def raw(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Log-mels without any mean removed: wav (B, S) float, or int16 PCM, lengths (B,) -> (B, T, n_mels), (B,)."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            spec = self.mel(wav.float() if wav.is_floating_point() else wav.float() / 32768)  # (B, F, T)
        feats = torch.log(spec + 1e-6).transpose(1, 2)
        flen = frame_lengths(lengths, self.cfg).clamp(max=feats.shape[1])
        valid = length_mask(flen, feats.shape[1])[..., None]
        return feats.masked_fill(~valid, 0.0), flen


def log_mel(wav: Tensor, cfg: FeatureConfig) -> Tensor:
    """Features of one waveform: wav (S,) -> (T, n_mels)."""
    feats, _ = LogMel(cfg).to(wav.device)(wav[None], torch.tensor([wav.shape[-1]], device=wav.device))
    return feats[0]


class GlobalCMVN(nn.Module):
    """Mean/variance normalisation with statistics of the training set, stored in the model package."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-3))

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """feats (B, T, F) -> normalised (B, T, F), padding kept at zero."""
        out = (feats - self.mean) / self.std
        return out.masked_fill(~length_mask(lengths, feats.shape[1])[..., None], 0.0)


class SpeakerMeans:
    """Per-speaker sums of raw log-mel frames -> each speaker's mean (for ``speaker_cmn``)."""

    def __init__(self, n_mels: int):
        self.n_mels = n_mels
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, feats: Tensor, lengths: Tensor, speakers: list[str | None]) -> None:
        """feats (B, T, F) raw log-mels, padding at zero; lengths (B,); utterances without a speaker are left out."""
        totals = feats.double().sum(1).cpu()  # padding is zero, so sums over T count valid frames only
        for i, spk in enumerate(speakers):
            if spk is None:
                continue
            self.sums[spk] = self.sums.get(spk, torch.zeros(self.n_mels, dtype=torch.float64)) + totals[i]
            self.counts[spk] = self.counts.get(spk, 0) + int(lengths[i])

    def merge(self, other: "SpeakerMeans") -> None:
        for spk, total in other.sums.items():
            self.sums[spk] = self.sums.get(spk, torch.zeros(self.n_mels, dtype=torch.float64)) + total
            self.counts[spk] = self.counts.get(spk, 0) + other.counts[spk]

    def means(self) -> dict[str, Tensor]:
        return {spk: (total / max(self.counts[spk], 1)).float() for spk, total in self.sums.items()}


def batch_means(means: dict[str, Tensor] | None, speakers: list[str | None], n_mels: int) -> Tensor | None:
    """The (B, n_mels) rows of ``means`` for a batch's speakers; NaN rows where a speaker has none."""
    if not means:
        return None
    nan = torch.full((n_mels,), float("nan"))
    return torch.stack([means.get(spk, nan) if spk is not None else nan for spk in speakers])


class CMVNAccumulator:
    """Running sums of feature frames, for global mean and standard deviation."""

    def __init__(self, n_mels: int):
        self.total = torch.zeros(n_mels, dtype=torch.float64)
        self.total_sq = torch.zeros(n_mels, dtype=torch.float64)
        self.count = 0

    def add(self, feats: Tensor, lengths: Tensor) -> None:
        """feats (B, T, F), padding at zero; lengths (B,)."""
        mask = length_mask(lengths, feats.shape[1])
        valid = feats[mask].double().cpu()
        self.total += valid.sum(0)
        self.total_sq += (valid**2).sum(0)
        self.count += valid.shape[0]

    def stats(self) -> tuple[Tensor, Tensor]:
        if self.count == 0:
            raise ValueError("CMVN: no feature frames were accumulated")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean**2).clamp(min=1e-6)
        return mean.float(), var.sqrt().float()


def spec_augment(feats: Tensor, lengths: Tensor, cfg: SpecAugConfig, generator: torch.Generator | None = None) -> Tensor:
    """Random frequency warp (``cfg.freq_warp``), then frequency and time masks, drawn per
    utterance; masks are set to zero (the CMVN mean).

    feats (B, T, F) normalised features; lengths (B,) -> (B, T, F).
    """
    B, T, F = feats.shape
    dev = feats.device

    def rand(*shape: int) -> Tensor:  # drawn on the host: the same masks on CPU and GPU for a seed
        return to_device(torch.rand(*shape, generator=generator), dev)

    if cfg.freq_warp > 0:
        # band k takes the value at k * alpha (linear interpolation; past the top band, the top band)
        alpha = 1 + (2 * rand(B) - 1) * cfg.freq_warp
        src = (torch.arange(F, device=dev)[None, :] * alpha[:, None]).clamp(max=F - 1)  # (B, F)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=F - 1)
        w = (src - lo).to(feats.dtype)[:, None, :]
        feats = (feats.gather(2, lo[:, None, :].expand(B, T, F)) * (1 - w)
                 + feats.gather(2, hi[:, None, :].expand(B, T, F)) * w)

    keep = torch.ones(B, T, F, dtype=torch.bool, device=dev)
    if cfg.freq_masks > 0 and cfg.freq_width > 0:
        width = (rand(B, cfg.freq_masks) * (cfg.freq_width + 1)).long()
        start = (rand(B, cfg.freq_masks) * (F - width).clamp(min=1)).long()
        f = torch.arange(F, device=dev)[None, None, :]
        masked = ((f >= start[..., None]) & (f < (start + width)[..., None])).any(1)  # (B, F)
        keep &= ~masked[:, None, :]
    if cfg.time_masks > 0 and cfg.time_width > 0:
        max_w = torch.minimum(torch.full_like(lengths, cfg.time_width), (lengths.float() * cfg.time_width_frac).long())
        width = (rand(B, cfg.time_masks) * (max_w[:, None].float() + 1)).long()
        start = (rand(B, cfg.time_masks) * (lengths[:, None] - width).clamp(min=1).float()).long()
        t = torch.arange(T, device=dev)[None, None, :]
        masked = ((t >= start[..., None]) & (t < (start + width)[..., None])).any(1)  # (B, T)
        keep &= ~masked[:, :, None]
    return feats * keep


class SpecAugment(nn.Module):
    def __init__(self, cfg: SpecAugConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        return spec_augment(feats, lengths, self.cfg) if self.training else feats


class FeatureExtractor(nn.Module):
    """waveforms -> log-mel -> CMVN -> SpecAugment (in training mode only), in one batched call."""

    def __init__(self, cfg: FeatureConfig, specaug: SpecAugConfig | None = None):
        super().__init__()
        self.logmel = LogMel(cfg)
        self.cmvn = GlobalCMVN(cfg.n_mels)
        self.specaug = SpecAugment(specaug) if specaug is not None else None

    def forward(self, wav: Tensor, lengths: Tensor, means: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """wav (B, S), lengths (B,) in samples -> feats (B, T, F), lengths (B,) in frames;
        ``means`` (B, F): speaker means for ``speaker_cmn`` (see ``LogMel.forward``)."""
        feats, flen = self.logmel(wav, lengths, means)
        feats = self.cmvn(feats, flen)
        if self.specaug is not None and self.training:
            feats = self.specaug(feats, flen)
        return feats, flen
