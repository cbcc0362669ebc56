"""asr.model: shapes and lengths, padding invariance, forget-gate bias, normalised log-probs."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from asr.config import ModelConfig
from asr.features import length_mask
from asr.model import AcousticModel, subsampled_lengths

N_MELS, VOCAB = 20, 11


def make_model(cfg: ModelConfig, seed: int = 0) -> AcousticModel:
    torch.manual_seed(seed)
    return AcousticModel(cfg, N_MELS, VOCAB).eval()


def padded(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([f.shape[0] for f in feats])
    out = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lengths


def test_subsampled_lengths_is_ceil_of_ceil():
    for t in range(1, 40):
        assert int(subsampled_lengths(torch.tensor([t]))) == math.ceil(math.ceil(t / 2) / 2)


@pytest.mark.parametrize("lengths", [[1], [4, 5], [37, 80, 9], [64, 64]])
def test_output_shapes_and_lengths(tiny_model_cfg, lengths):
    model = make_model(tiny_model_cfg)
    feats, lens = padded([torch.randn(n, N_MELS) for n in lengths])
    with torch.no_grad():
        log_probs, out_len = model(feats, lens)
    t_max = math.ceil(math.ceil(max(lengths) / 2) / 2)
    assert log_probs.shape == (len(lengths), t_max, VOCAB)
    assert log_probs.dtype == torch.float32
    assert out_len.tolist() == [math.ceil(math.ceil(n / 2) / 2) for n in lengths]


def test_log_probs_are_normalised(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    feats, lens = padded([torch.randn(30, N_MELS) * 3, torch.randn(13, N_MELS)])
    with torch.no_grad():
        log_probs, _ = model(feats, lens)
    assert (log_probs <= 0).all()
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("front", ["conv1d", "conv2d"])
@pytest.mark.parametrize("short", [37, 38, 40, 1])
def test_padding_does_not_change_the_result(tiny_model_cfg, short, front):
    """An utterance alone and the same utterance zero-padded in a batch with a longer one (eval mode)."""
    model = make_model(dataclasses.replace(tiny_model_cfg, subsample=front))
    torch.manual_seed(1)
    a, b = torch.randn(short, N_MELS), torch.randn(91, N_MELS)
    with torch.no_grad():
        alone, alone_len = model(a[None], torch.tensor([short]))
        both, both_len = model(*padded([b, a]))
        b_alone, _ = model(b[None], torch.tensor([91]))
    n = int(alone_len[0])
    assert int(both_len[1]) == n
    torch.testing.assert_close(both[1, :n], alone[0, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[0], b_alone[0], atol=1e-5, rtol=1e-5)


def test_batch_of_three_equals_three_batches_of_one(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    torch.manual_seed(2)
    utts = [torch.randn(n, N_MELS) for n in (23, 50, 7)]
    with torch.no_grad():
        batch, lens = model(*padded(utts))
        for i, u in enumerate(utts):
            one, n = model(u[None], torch.tensor([u.shape[0]]))
            torch.testing.assert_close(batch[i, : int(n[0])], one[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("front", ["conv1d", "conv2d"])
def test_conv_front_end_zeroes_frames_beyond_each_length(tiny_model_cfg, front):
    model = make_model(dataclasses.replace(tiny_model_cfg, subsample=front))
    feats, lens = padded([torch.randn(9, N_MELS), torch.randn(40, N_MELS)])
    with torch.no_grad():
        x, out_len = model.subsample(feats, lens)
    assert out_len.tolist() == [3, 10] and x.shape[1] == 10
    pad = x[0, int(out_len[0]):]
    assert pad.shape[0] > 0 and not pad.any()
    assert x[1].abs().sum(-1).gt(0).all()


@pytest.mark.parametrize("stride", [2, 3, 4, 5])
def test_conv1d_stride_gives_ceil_t_over_stride_frames_and_padding_stays_out(tiny_model_cfg, stride):
    model = make_model(dataclasses.replace(tiny_model_cfg, subsample="conv1d", stride=stride))
    torch.manual_seed(3)
    a, b = torch.randn(29, N_MELS), torch.randn(64, N_MELS)
    with torch.no_grad():
        alone, alone_len = model(a[None], torch.tensor([29]))
        both, both_len = model(*padded([b, a]))
    assert both_len.tolist() == [math.ceil(64 / stride), math.ceil(29 / stride)]
    assert both.shape[1] == math.ceil(64 / stride) and int(alone_len[0]) == math.ceil(29 / stride)
    torch.testing.assert_close(both[1, : int(alone_len[0])], alone[0], atol=1e-5, rtol=1e-5)
    for t in range(1, 40):
        assert int(subsampled_lengths(torch.tensor([t]), stride)) == math.ceil(t / stride)


def test_stride_other_than_4_needs_conv1d(tiny_model_cfg):
    with pytest.raises(ValueError, match="stride"):
        make_model(dataclasses.replace(tiny_model_cfg, subsample="conv2d", stride=3))


def test_unknown_front_end_is_refused(tiny_model_cfg):
    with pytest.raises(ValueError, match="subsample"):
        make_model(dataclasses.replace(tiny_model_cfg, subsample="lstm"))


def test_forget_gate_bias_is_one(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    h = tiny_model_cfg.hidden
    names = [n for n, _ in model.lstm.named_parameters() if n.startswith("bias")]
    # Both directions of every layer.
    assert len(names) == 2 * 2 * tiny_model_cfg.layers
    for name, p in model.lstm.named_parameters():
        if name.startswith("bias_ih"):
            assert torch.all(p[h : 2 * h] == 1.0), name
        elif name.startswith("bias_hh"):
            assert torch.all(p[h : 2 * h] == 0.0), name
    # The effective forget-gate bias (ih + hh) is 1.
    for layer in range(tiny_model_cfg.layers):
        for sfx in ("", "_reverse"):
            total = getattr(model.lstm, f"bias_ih_l{layer}{sfx}") + getattr(model.lstm, f"bias_hh_l{layer}{sfx}")
            assert torch.all(total[h : 2 * h] == 1.0)


def test_dropout_only_in_training():
    model = make_model(ModelConfig(subsample_channels=4, hidden=16, layers=2, dropout=0.5))
    feats, lens = padded([torch.randn(40, N_MELS)])
    with torch.no_grad():
        a, _ = model(feats, lens)
        b, _ = model(feats, lens)
        model.train()
        torch.manual_seed(0)
        c, _ = model(feats, lens)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_gradients_do_not_flow_from_padding(tiny_model_cfg):
    model = make_model(tiny_model_cfg)
    feats, lens = padded([torch.randn(60, N_MELS), torch.randn(21, N_MELS)])
    feats.requires_grad_(True)
    log_probs, out_len = model(feats, lens)
    n = int(out_len[1])
    log_probs[1, :n].sum().backward()
    assert feats.grad[0].abs().sum() == 0, "utterance 0 does not influence utterance 1"
    assert feats.grad[1, :21].abs().sum() > 0


def test_cpu_padded_lstm_equals_the_packed_lstm_with_its_gradients():
    """The CPU path (one direction at a time over padded tensors) computes what the packed path
    (used on the GPU, and when the LSTM is quantized or exported) computes, gradients included."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    model = make_model(ModelConfig(hidden=16, layers=3, dropout=0.0))
    x = torch.randn(3, 23, 16)
    lens = torch.tensor([23, 11, 2])
    fast = model._lstm_padded(x, lens)
    packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
    ref, _ = pad_packed_sequence(model.lstm(packed)[0], batch_first=True, total_length=23)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    grads = []
    for out in (fast, ref):
        model.zero_grad()
        (out * torch.linspace(-1, 1, 32)).sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in model.lstm.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_index_packing_equals_pack_padded_sequence_forward_and_backward():
    # The GPU path packs with one gather; it must match torch's pack/pad functions exactly.
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    from asr.config import ModelConfig
    from asr.model import AcousticModel, pack_index
    torch.manual_seed(0)
    lengths = torch.tensor([5, 9, 3, 9, 1, 7])
    _, batch_sizes = pack_index(lengths, 11)
    ref = pack_padded_sequence(torch.zeros(6, 11, 1), lengths, batch_first=True, enforce_sorted=False)
    assert torch.equal(batch_sizes, ref.batch_sizes)
    model = AcousticModel(ModelConfig(hidden=8, layers=2, dropout=0.0), 4, 5).eval()
    x = torch.randn(6, 11, 8, requires_grad=True)
    ours = model._lstm_packed(x, lengths)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    theirs, _ = pad_packed_sequence(model.lstm(packed)[0], batch_first=True, total_length=11)
    torch.testing.assert_close(ours, theirs)
    w = torch.randn_like(ours)
    g_ours = torch.autograd.grad((ours * w).sum(), [x, model.lstm.weight_hh_l0])
    g_theirs = torch.autograd.grad((theirs * w).sum(), [x, model.lstm.weight_hh_l0])
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b)
    # and the CPU's padded path agrees with both
    torch.testing.assert_close(model._lstm_padded(x, lengths), ours)


def test_lstm_layout_picks_the_path_and_all_give_the_same_log_probs(monkeypatch):
    """model.lstm_layout: "split" (the default), "padded" and "packed" run their own path and give
    the same log-probs on the same weights (they meet the padding differently, so a wrong reversal
    or a wrong hand-over of state would show)."""
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=8, layers=2, dropout=0.0)
    assert cfg.lstm_layout == "split"
    model = AcousticModel(cfg, 6, 5).eval()
    feats, lengths = torch.randn(3, 20, 6), torch.tensor([20, 9, 14])
    outs, used = {}, []
    for name in ("_lstm_packed", "_lstm_padded", "_lstm_split"):
        real = getattr(AcousticModel, name)
        monkeypatch.setattr(model, name, lambda *a, _n=name, _r=real: used.append(_n) or _r(model, *a))
    for layout in ("packed", "padded", "split"):
        model.cfg = dataclasses.replace(cfg, lstm_layout=layout)
        outs[layout], out_len = model(feats, lengths)
        assert torch.equal(out_len, subsampled_lengths(lengths))
    assert used == ["_lstm_packed", "_lstm_padded", "_lstm_split"]
    mask = length_mask(out_len, outs["packed"].shape[1])
    for layout in ("padded", "split"):
        torch.testing.assert_close(outs["packed"][mask], outs[layout][mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lengths", [[23, 11, 2], [23, 23, 23], [1, 23, 9, 23, 4], [7], [0, 23, 9]])
def test_split_lstm_equals_the_padded_one_with_its_gradients(lengths):
    """The split layout (one bidirectional call over the frames all utterances have, the rest one
    direction at a time) gives the padded layout's output and gradients, to the input and to every
    weight, whatever the lengths: all equal (no tail), one of a single frame, a batch of one, a
    batch padded past its longest utterance, and an empty utterance (no frame shared)."""
    model = make_model(ModelConfig(hidden=16, layers=3, dropout=0.0))
    lens = torch.tensor(lengths)
    x = torch.randn(len(lengths), 25, 16, requires_grad=True)
    ours, ref = model._lstm_split(x, lens), model._lstm_padded(x, lens)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert ours[length_mask(lens, 25) == 0].abs().max() == 0
    w = torch.randn_like(ref)
    params = [x, *model.lstm.parameters()]
    for a, b in zip(torch.autograd.grad((ours * w).sum(), params), torch.autograd.grad((ref * w).sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_split_lstm_takes_the_mixed_types_autocast_gives_it(monkeypatch):
    """Under bf16 autocast on a GPU, cuDNN's LSTM returns fp16 whatever its input (autocast casts its
    arguments to fp16), so the split layout meets bf16 input and fp16 states side by side. Stood in
    for on the CPU: torch.lstm computing in fp32 and returning fp16; the layout then runs, and agrees
    with the padded one under the same stand-in, gradients included."""
    real = torch.lstm

    def cast(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.float()
        if isinstance(a, (list, tuple)):
            return type(a)(cast(v) for v in a)
        return a

    monkeypatch.setattr(torch, "lstm", lambda *args: tuple(o.half() for o in real(*cast(args))))
    model = make_model(ModelConfig(hidden=16, layers=2, dropout=0.0))
    lens = torch.tensor([20, 13, 4])
    x = torch.randn(3, 21, 16).bfloat16().requires_grad_()
    outs = []
    for run in (model._lstm_split, model._lstm_padded):
        y = run(x, lens)
        outs.append((y.float(), torch.autograd.grad(y.float().sum(), x)[0].float()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


def test_tail_pack_index_takes_each_tail_last_frame_first():
    """The split layout's backward tails: rows of a time-major (L, B) tail, each utterance's frames
    from its own last one back, longest first at each step; empty tails left out."""
    from asr.model import tail_pack_index
    rows, batch_sizes, order = tail_pack_index(torch.tensor([2, 0, 3]), 3)
    assert order.tolist() == [2, 0]
    assert batch_sizes.tolist() == [2, 2, 1]
    # step 0: utterance 2's frame 2, utterance 0's frame 1; step 1: frames 1 and 0; step 2: utterance 2's frame 0
    assert rows.tolist() == [2 * 3 + 2, 1 * 3 + 0, 1 * 3 + 2, 0 * 3 + 0, 0 * 3 + 2]
    rows, batch_sizes, order = tail_pack_index(torch.tensor([0, 0]), 2)
    assert rows.numel() == batch_sizes.numel() == order.numel() == 0


def test_reverse_within_reverses_each_sequence_and_its_gradient():
    """The padded layout's reversal: each sequence's valid frames reversed, padding left in place,
    twice gives x back, and its custom backward (a gather, not index_select's scatter) is the true
    gradient."""
    from asr.model import reversal_index, reverse_within
    torch.manual_seed(0)
    lengths = torch.tensor([5, 2, 7, 1])
    x = torch.randn(7, 4, 3, dtype=torch.float64, requires_grad=True)  # (T, B, D)
    index = reversal_index(lengths, 7)
    y = reverse_within(x, index)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(y[:n, b], x[:n, b].flip(0))
        assert torch.equal(y[n:, b], x[n:, b])
    assert torch.equal(reverse_within(y, index), x)
    assert torch.autograd.gradcheck(lambda t: reverse_within(t, index), (x,))



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_split_lstm_on_the_gpu_equals_the_padded_one(monkeypatch):
    """On cuDNN (its bidirectional call started from a given backward state, its packed call for the
    tails), in fp32 and under bf16 autocast as training runs it: the split layout's output and input
    gradient are the padded layout's."""
    # fp32 without TF32 (on by default for cuDNN: ~1e-3 relative, which would hide nothing but fail 1e-4)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    # training mode: cuDNN refuses a backward through an RNN run in eval mode (dropout is 0 here)
    model = make_model(ModelConfig(hidden=64, layers=3, dropout=0.0)).cuda().train()
    lens = torch.tensor([40, 31, 40, 3, 25])
    x = torch.randn(5, 42, 64, device="cuda", requires_grad=True)
    for bf16, tol in ((False, 1e-4), (True, 3e-2)):
        outs = []
        for run in (model._lstm_split, model._lstm_padded):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                y = run(x, lens.cuda()) if run == model._lstm_padded else run(x, lens.cuda(), lens)
            outs.append((y.float(), torch.autograd.grad(y.float().sum(), x)[0]))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)
