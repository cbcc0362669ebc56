"""Inference: waveforms -> features -> acoustic model -> log-probs, in padded batches."""
from __future__ import annotations

import torch
from torch import Tensor

from asr.features import FeatureExtractor
from asr.model import AcousticModel
from asr.package import ModelPackage
from asr.text import Tokenizer


class Recognizer:
    """A model with its front end (log-mel + CMVN) and tokenizer, ready to turn audio into CTC log-probs."""

    def __init__(self, model: AcousticModel, frontend: FeatureExtractor, tokenizer: Tokenizer,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model
        self.frontend = frontend
        self.tokenizer = tokenizer

    @classmethod
    def from_package(cls, package: ModelPackage, device: str | torch.device = "cpu") -> "Recognizer":
        frontend = FeatureExtractor(package.features)
        frontend.cmvn.set_stats(package.cmvn_mean, package.cmvn_std)
        return cls(package.model.to(device).eval(), frontend.to(device).eval(), package.tokenizer, device)

    @torch.inference_mode()
    def log_probs(self, wav: Tensor, lengths: Tensor, means: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """wav (B, S) at the model's sample rate, lengths (B,) -> log_probs (B, T', V) float32, lengths (B,).
        ``means`` (B, n_mels): the speakers' mean log-mels, for a model trained with ``speaker_cmn``."""
        was_training = self.model.training, self.frontend.training
        self.model.eval()
        self.frontend.eval()
        wav, lengths = wav.to(self.device), lengths.to(self.device)
        feats, flen = self.frontend(wav, lengths, means)
        use_bf16 = self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = self.model(feats, flen)
        self.model.train(was_training[0])
        self.frontend.train(was_training[1])
        return out
