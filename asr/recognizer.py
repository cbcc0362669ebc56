"""Inference: waveforms -> features -> acoustic model -> log-probs, in padded batches."""
from __future__ import annotations

import torch
from torch import Tensor

from asr.features import FeatureExtractor
from asr.package import ModelPackage


def pad_waveforms(wavs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """list of (S_i,) -> padded (B, max S) with zeros, lengths (B,)."""
    lengths = torch.tensor([w.shape[0] for w in wavs], dtype=torch.long)
    out = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        out[i, : w.shape[0]] = w
    return out, lengths


class Recognizer:
    """A loaded model package ready to turn audio into CTC log-probs."""

    def __init__(self, package: ModelPackage, device: str | torch.device = "cpu"):
        self.package = package
        self.device = torch.device(device)
        self.tokenizer = package.tokenizer
        self.frontend = FeatureExtractor(package.features).to(self.device).eval()
        self.frontend.cmvn.set_stats(package.cmvn_mean.to(self.device), package.cmvn_std.to(self.device))
        self.model = package.model.to(self.device).eval()

    @torch.inference_mode()
    def log_probs(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """wav (B, S) at the model's sample rate, lengths (B,) -> log_probs (B, T', V), lengths (B,)."""
        wav, lengths = wav.to(self.device), lengths.to(self.device)
        feats, flen = self.frontend(wav, lengths)
        use_bf16 = self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return self.model(feats, flen)
