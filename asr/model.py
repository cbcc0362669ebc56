"""Acoustic model: convolutional 4x time subsampling -> N x BiLSTM -> linear CTC head.

``AcousticModel.forward(feats (B, T, F), lengths (B,)) -> (log_probs (B, T', V), out_lengths (B,))``
with T' = ceil(T / 4). Padding never changes a result: conv outputs beyond each length are zeroed
before the next layer, and the LSTM runs on packed sequences.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.config import ModelConfig
from asr.features import length_mask


def subsampled_lengths(lengths: Tensor) -> Tensor:
    """Frames after 4x subsampling, ceil(T / 4): two stride-2 convolutions (kernel 3, padding 1) and
    one stride-4 convolution (kernel 7, padding 3) give the same count."""
    for _ in range(2):
        lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
    return lengths


class ConvSubsampling(nn.Module):
    """Two stride-2 3x3 convolutions over (time, mel), then a projection to ``out_dim``."""

    def __init__(self, n_mels: int, channels: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        f = (n_mels - 1) // 2 + 1
        f = (f - 1) // 2 + 1
        self.proj = nn.Linear(channels * f, out_dim)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, F) -> (B, T', out_dim), lengths (B,) -> (B,)."""
        x = feats.unsqueeze(1)  # (B, 1, T, F)
        for conv in (self.conv1, self.conv2):
            x = torch.relu(conv(x))
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
            x = x * length_mask(lengths, x.shape[2])[:, None, :, None]
        b, c, t, f = x.shape
        x = self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return x * length_mask(lengths, t)[..., None], lengths


class Conv1dSubsampling(nn.Module):
    """One stride-4 convolution over time (kernel 7, mel bins as input channels) to ``out_dim``."""

    def __init__(self, n_mels: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv1d(n_mels, out_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, F) -> (B, ceil(T/4), out_dim) zero beyond each length, lengths (B,) -> (B,)."""
        x = self.conv(feats.transpose(1, 2)).transpose(1, 2)
        lengths = subsampled_lengths(lengths)
        return x * length_mask(lengths, x.shape[1])[..., None], lengths


class AcousticModel(nn.Module):
    def __init__(self, cfg: ModelConfig, n_mels: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.n_mels = n_mels
        self.vocab_size = vocab_size
        if cfg.subsample == "conv1d":
            self.subsample = Conv1dSubsampling(n_mels, cfg.hidden)
        elif cfg.subsample == "conv2d":
            self.subsample = ConvSubsampling(n_mels, cfg.subsample_channels, cfg.hidden)
        else:
            raise ValueError(f"model.subsample={cfg.subsample!r}: expected 'conv1d' or 'conv2d'")
        self.lstm = nn.LSTM(
            input_size=cfg.hidden,
            hidden_size=cfg.hidden,
            num_layers=cfg.layers,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            bidirectional=True,
            batch_first=True,
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.hidden, vocab_size)
        self._init_forget_gate()

    def _init_forget_gate(self) -> None:
        """Forget-gate bias 1 (gate order i, f, g, o): cells remember by default early in training."""
        h = self.cfg.hidden
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    p[h : 2 * h].fill_(1.0)
            elif name.startswith("bias_hh"):
                with torch.no_grad():
                    p[h : 2 * h].fill_(0.0)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, F), lengths (B,) -> log_probs (B, T', V) float32, out_lengths (B,)."""
        x, lengths = self.subsample(feats, lengths)
        x = self.dropout(x)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        x, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        logits = self.head(self.dropout(x))
        return torch.log_softmax(logits.float(), dim=-1), lengths

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
