"""Acoustic model: convolutional time subsampling (4x by default) -> N x BiLSTM -> linear CTC head.

``AcousticModel.forward(feats (B, T, F), lengths (B,)) -> (log_probs (B, T', V), out_lengths (B,))``
with T' = ceil(T / stride) (``model.stride``, 4 by default). Padding never changes a result: conv
outputs beyond each length are zeroed before the next layer, and the LSTM never lets a padded frame
reach a valid one. ``model.lstm_layout`` picks how the LSTM meets padding: "split" (the default), each layer one
bidirectional call over the frames every utterance of the batch has (both directions at once, as
the bare cuDNN LSTM runs them, and no reversal), the frames past the shortest utterance run one
direction at a time and handed over as the state the bidirectional call starts or ends with;
"padded", each direction of each layer over the padded batch, the forward one as is (padding comes
after the valid frames), the backward one over each sequence reversed within its length, outputs
past each length zeroed; or "packed", cuDNN over packed sequences. All three use the same weights
and give the same results. Split is the fastest on a GPU (5 x 1024, bf16, on an H200: 88-92% of the
bare cuDNN LSTM against padded's 79-82%); padded is faster than packed (one GEMM shape for cuDNN,
where packing changes it at every time step: 9,262x against 6,254x real time on an H100) and on
the CPU (PyTorch's packed LSTM leaves oneDNN), where split is as fast as padded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from asr.config import ModelConfig
from asr.features import length_mask, to_device


def subsampled_lengths(lengths: Tensor, stride: int = 4) -> Tensor:
    """Frames after ``stride``x subsampling, ceil(T / stride): one convolution of that stride (kernel
    2 * stride - 1, padding stride - 1) and, for 4, two stride-2 ones (kernel 3, padding 1) agree."""
    return torch.div(lengths - 1, stride, rounding_mode="floor") + 1


def pack_index(lengths: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """Where a PackedSequence of ``lengths`` (B,) takes its rows from a (B, ``total``, D) batch-first
    tensor flattened to (B * total, D), longest sequence first at each time step as
    ``pack_padded_sequence`` orders them: (rows (sum(lengths),), batch_sizes (max(lengths),)), on the CPU."""
    ordered, order = lengths.cpu().sort(descending=True, stable=True)
    valid = torch.arange(total)[:, None] < ordered[None, :]  # (T, B): time-major, longest first
    step, rank = valid.nonzero(as_tuple=True)
    return order[rank] * total + step, valid.sum(1)[: int(ordered[0])]


def tail_pack_index(lengths: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """The split layout's backward tails as a PackedSequence: each utterance's ``lengths[b]`` (B,)
    frames (may be 0) taken last frame first from a time-major (L, ``batch``, D) tail flattened to
    (L * batch, D). Returns (rows (sum(lengths),), batch_sizes (max(lengths),), order (M,)): the rows
    to gather, packed (at each step the utterances longest first), how many at each step, and which
    utterance each of the M non-empty ones is, in packed order. On the host."""
    ordered, order = lengths.cpu().sort(descending=True, stable=True)
    m = int((ordered > 0).sum())
    ordered, order = ordered[:m], order[:m]
    total = int(ordered[0]) if m else 0
    valid = torch.arange(total)[:, None] < ordered[None, :]  # (L, M)
    step, rank = valid.nonzero(as_tuple=True)
    return (ordered[rank] - 1 - step) * batch + order[rank], valid.sum(1), order


def reversal_index(lengths: Tensor, total: int) -> Tensor:
    """Rows of a time-major (``total``, B, D) batch flattened to (total * B, D), in the order that
    reverses each sequence's first ``lengths[b]`` frames and leaves its padding in place: (total * B,),
    on the device of ``lengths``. The order is its own inverse (taking it twice gives x back)."""
    b = lengths.numel()
    t = torch.arange(total, device=lengths.device)[:, None]
    n = lengths[None, :]
    return (torch.where(t < n, n - 1 - t, t) * b + torch.arange(b, device=lengths.device)).reshape(-1)


class _Reverse(torch.autograd.Function):
    """x (N, D) -> its rows in the order ``index`` (N,), an order that is its own inverse, so the
    gradient is taken the same way: one more row gather, where ``index_select``'s own backward adds
    rows into zeros with atomics."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None


def reverse_within(x: Tensor, index: Tensor) -> Tensor:
    """x (T, B, D) time-major -> the same shape with each sequence reversed within its length, as
    ``index = reversal_index(lengths, T)`` orders it (padding left in place)."""
    t, b, d = x.shape
    return _Reverse.apply(x.reshape(t * b, d), index).view(t, b, d)


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
    """One strided convolution over time (kernel 2 * stride - 1, mel bins as input channels) to ``out_dim``."""

    def __init__(self, n_mels: int, out_dim: int, stride: int = 4):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(n_mels, out_dim, kernel_size=2 * stride - 1, stride=stride, padding=stride - 1)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats (B, T, F) -> (B, ceil(T/stride), out_dim) zero beyond each length, lengths (B,) -> (B,)."""
        x = self.conv(feats.transpose(1, 2)).transpose(1, 2)
        lengths = subsampled_lengths(lengths, self.stride)
        return x * length_mask(lengths, x.shape[1])[..., None], lengths


class AcousticModel(nn.Module):
    def __init__(self, cfg: ModelConfig, n_mels: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.n_mels = n_mels
        self.vocab_size = vocab_size
        if cfg.stride < 1 or (cfg.subsample != "conv1d" and cfg.stride != 4):
            raise ValueError(f"model.stride={cfg.stride}: conv1d takes any stride >= 1, {cfg.subsample} only 4")
        if cfg.subsample == "conv1d":
            self.subsample = Conv1dSubsampling(n_mels, cfg.hidden, cfg.stride)
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
        """feats (B, T, F), lengths (B,) -> log_probs (B, T', V) float32, out_lengths (B,) on the
        device of ``lengths``.

        ``lengths`` may be on the host while ``feats`` are on a GPU: the packed layout is then made
        from them, where GPU lengths would have to be read back (a sync that idles the GPU).
        """
        host = subsampled_lengths(lengths, self.cfg.stride) if lengths.device.type == "cpu" else None
        x, lengths = self.subsample(feats, to_device(lengths, feats.device))
        x = self.dropout(x)
        # The padded path needs the plain nn.LSTM's weights: quantized or export-wrapped LSTMs, and
        # traced graphs, take the packed path.
        plain = type(self.lstm) is nn.LSTM and not torch.jit.is_tracing()
        if plain and self.cfg.lstm_layout == "padded":
            x = self._lstm_padded(x, lengths)
        elif plain and self.cfg.lstm_layout == "split":
            x = self._lstm_split(x, lengths, host)
        elif plain:
            x = self._lstm_packed(x, lengths if host is None else host)
        else:
            packed = pack_padded_sequence(x, (lengths if host is None else host).cpu(), batch_first=True,
                                          enforce_sorted=False)
            out, _ = self.lstm(packed)
            x, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        logits = self.head(self.dropout(x))
        return torch.log_softmax(logits.float(), dim=-1), lengths if host is None else host

    def _lstm_packed(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, T', H) -> (B, T', 2H), zero past each length: ``self.lstm`` over a PackedSequence made
        and undone with one gather and one scatter. (pack_padded_sequence and pad_packed_sequence copy
        once per time step, forward and backward: on an H100 those small copies took about a quarter
        of the 5 x 1024 model's GPU time.) ``lengths`` (B,): on the host, or they are read back."""
        b, t = x.shape[:2]
        idx, batch_sizes = pack_index(lengths, t)
        idx = to_device(idx, x.device)
        out, _ = self.lstm(PackedSequence(x.reshape(b * t, -1).index_select(0, idx), batch_sizes))
        y = out.data
        return y.new_zeros(b * t, y.shape[1]).index_copy(0, idx, y).view(b, t, -1)

    def _lstm_padded(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, T', H) -> (B, T', 2H), zero past each length: ``self.lstm`` one direction at a time,
        time-major inside (cuDNN's layout: batch-first input costs a transpose each way per call, which
        on an H100 were ~120 copies in three steps of the 5 x 1024 model). (Running the backward
        direction on a second CUDA stream, to overlap the two as a bidirectional cuDNN call does, was
        measured on an H100 and gained nothing: benchmarks/RESULTS.md.)"""
        lstm = self.lstm
        lengths = lengths.to(x.device)
        x = x.transpose(0, 1).contiguous()  # (T', B, H)
        index = reversal_index(lengths, x.shape[0])
        z = x.new_zeros(1, x.shape[1], lstm.hidden_size)
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        for k in range(lstm.num_layers):
            if k > 0:
                x = F.dropout(x, lstm.dropout, self.training)  # where nn.LSTM puts it: between layers
            fwd = [getattr(lstm, f"{n}_l{k}") for n in names]
            bwd = [getattr(lstm, f"{n}_l{k}_reverse") for n in names]
            # torch.lstm(input, (h0, c0), params, has_biases, layers, dropout, train, bidirectional, batch_first)
            y_f = torch.lstm(x, (z, z), fwd, True, 1, 0.0, self.training, False, False)[0]
            y_b = torch.lstm(reverse_within(x, index), (z, z), bwd, True, 1, 0.0, self.training, False, False)[0]
            x = torch.cat([y_f, reverse_within(y_b, index)], dim=2)
        return (x * length_mask(lengths, x.shape[0]).T[..., None].to(x.dtype)).transpose(0, 1)

    def _lstm_split(self, x: Tensor, lengths: Tensor, host: Tensor | None = None) -> Tensor:
        """x (B, T', H) -> (B, T', 2H), zero past each length: ``self.lstm`` with each layer cut in time
        at the shortest length n. Frames [0, n) are valid in every utterance, so one bidirectional
        cuDNN call runs them exactly; the frames after (the tail) run one direction at a time: the
        backward direction's tail first (packed, each utterance from its own last frame), whose final
        state starts the bidirectional call's backward direction, and the forward direction's tail
        last (padded), from the state the bidirectional call ends with. Layers pass the head and the
        tail on separately, so no full-size copy is made between layers. ``lengths`` (B,) on the
        device of x; ``host``: the same on the host (read back from ``lengths`` if not given)."""
        lstm = self.lstm
        host = lengths.cpu() if host is None else host
        b, t = x.shape[:2]
        n = int(host.min())
        if n == 0:  # an empty utterance: no frame is shared, and cuDNN takes no empty sequence
            return self._lstm_padded(x, lengths)
        xt = x.transpose(0, 1)  # (T', B, H)
        head, tail = xt[:n].contiguous(), xt[n:].contiguous()
        rows, batch_sizes, order = tail_pack_index(host - n, b)
        rows, order = to_device(rows, x.device), to_device(order, x.device)
        h = lstm.hidden_size
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        for k in range(lstm.num_layers):
            if k > 0:
                head = F.dropout(head, lstm.dropout, self.training)  # where nn.LSTM puts it: between layers
                tail = F.dropout(tail, lstm.dropout, self.training)
            fwd = [getattr(lstm, f"{p}_l{k}") for p in names]
            bwd = [getattr(lstm, f"{p}_l{k}_reverse") for p in names]
            z = head.new_zeros(1, b, h)
            h0 = c0 = torch.cat([z, z])
            if rows.numel():
                # torch.lstm(data, batch_sizes, (h0, c0), params, has_biases, layers, dropout, train, bidirectional)
                data = tail.reshape(-1, tail.shape[2]).index_select(0, rows)
                zm = z[:, : len(order)]
                y_b, hm, cm = torch.lstm(data, batch_sizes, (zm, zm), bwd, True, 1, 0.0, self.training, False)
                # (cuDNN's outputs under autocast are fp16, whatever the input's type: states in theirs)
                zs = hm.new_zeros(1, b, h)
                h0 = torch.cat([zs, zs.index_copy(1, order, hm)])
                c0 = torch.cat([zs, zs.index_copy(1, order, cm)])
            # torch.lstm(input, (h0, c0), params, has_biases, layers, dropout, train, bidirectional, batch_first)
            head, hn, cn = torch.lstm(head, (h0, c0), fwd + bwd, True, 1, 0.0, self.training, True, False)
            if tail.shape[0]:
                y_f = torch.lstm(tail, (hn[:1], cn[:1]), fwd, True, 1, 0.0, self.training, False, False)[0]
                back = y_f.new_zeros(tail.shape[0] * b, h)
                if rows.numel():
                    back = back.index_copy(0, rows, y_b.to(back.dtype))
                tail = torch.cat([y_f, back.view(tail.shape[0], b, h)], dim=2)
            else:
                tail = head.new_zeros(0, b, 2 * h)
            tail = tail.to(head.dtype)
        x = torch.cat([head, tail])
        return (x * length_mask(lengths, t).T[..., None].to(x.dtype)).transpose(0, 1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
