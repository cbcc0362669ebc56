"""asr.ctc_loss: torch's CTC loss on the CPU, cuDNN's on a GPU once checked against torch's.

cuDNN's path is run here through a stand-in for ``torch._cudnn_ctc_loss`` that returns what cuDNN
does (per-utterance costs, and the gradient with the frames past each input length left unwritten,
NaN here); the last test runs the real one when a GPU is present."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import asr.ctc_loss as C
from asr.features import length_mask


def batch(seed: int = 0, b: int = 5, t: int = 40, v: int = 12):
    """Logits (T, B, V) requiring grad, host targets (N,), input and target lengths (B,) of various sizes."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, b, v, generator=g, requires_grad=True)
    il = torch.randint(t // 2, t + 1, (b,), generator=g)
    il[0] = t
    tl = torch.randint(1, t // 4, (b,), generator=g)
    targets = torch.randint(1, v, (int(tl.sum()),), generator=g)
    targets[:2] = targets[0]  # a repeated token: CTC needs a blank between
    return logits, targets, il, tl


def fake_cudnn(calls: list, scale: float = 1.0, fail: bool = False):
    """A CPU stand-in for torch._cudnn_ctc_loss: torch's costs and gradient, NaN past each length."""
    def run(lp, targets, il, tl, blank, deterministic, zero_infinity):
        calls.append((targets.dtype, il.dtype, tl.dtype, blank, deterministic))
        if fail:
            raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED")
        with torch.enable_grad():  # an autograd.Function's forward runs without
            x = lp.detach().requires_grad_()
            costs = F.ctc_loss(x, targets.long(), il.long(), tl.long(), reduction="none")
            (grad,) = torch.autograd.grad(costs.sum(), x)
        grad = torch.where(length_mask(il, lp.shape[0]).T[..., None], grad * scale, float("nan"))
        return costs.detach(), grad
    return run


@pytest.fixture
def cudnn(monkeypatch):
    """Make the CPU take cuDNN's path, with a fresh record of which devices agreed."""
    monkeypatch.setattr(C, "cudnn_available", lambda device: True)
    monkeypatch.setattr(C, "_cudnn_agrees", {})
    calls: list = []
    monkeypatch.setattr(torch, "_cudnn_ctc_loss", fake_cudnn(calls))
    return calls


def reference(logits, targets, il, tl):
    """torch's summed CTC loss through log_softmax, and the gradient of the logits."""
    x = logits.detach().requires_grad_()
    loss = F.ctc_loss(x.log_softmax(-1), targets, il, tl, blank=0, reduction="sum")
    loss.backward()
    return loss.detach(), x.grad


def test_on_the_cpu_it_is_torchs_ctc_loss_summed():
    logits, targets, il, tl = batch()
    loss = C.ctc_loss(logits.log_softmax(-1), targets, il, tl)
    ref, ref_grad = reference(logits, targets, il, tl)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    torch.testing.assert_close(logits.grad, ref_grad)
    with pytest.raises(ValueError, match="'warp'"):
        C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="warp")


def test_cudnn_path_gives_torchs_loss_and_gradients_with_the_padding_zeroed(cudnn):
    logits, targets, il, tl = batch()
    ntok = int(tl.sum())
    loss = C.ctc_loss(logits.log_softmax(-1), targets, il, tl) / ntok  # as compute_loss scales it
    ref, ref_grad = reference(logits, targets, il, tl)
    torch.testing.assert_close(loss, ref / ntok)
    loss.backward()
    # The stand-in left NaN past each input length: none of it may reach the gradient.
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad, ref_grad / ntok)
    assert not logits.grad[~length_mask(il, logits.shape[0]).T].any()
    # The check (once) and the loss: int32 labels and lengths, blank 0, the deterministic algorithm.
    assert cudnn == [(torch.int32, torch.int32, torch.int32, 0, True)] * 2
    assert C._cudnn_agrees == {torch.device("cpu"): True}
    C.ctc_loss(logits.log_softmax(-1), targets, il, tl)
    assert len(cudnn) == 3  # checked once per device, not again


def test_a_batch_cudnn_cannot_take_goes_to_torch(cudnn):
    logits, targets, il, tl = batch()
    tl = tl.clone()
    tl[1] = il[1] + 1  # a target longer than its input (infinite loss): cuDNN may read out of bounds
    targets = torch.randint(1, 12, (int(tl.sum()),))
    loss = C.ctc_loss(logits.log_softmax(-1), targets, il, tl)
    assert cudnn == [] and torch.isinf(loss)


@pytest.mark.parametrize("lengths, fits", [
    (([10, 10], [1, 10]), True),
    (([300, 300], [255, 3]), True),
    (([300, 300], [256, 3]), False),  # cuDNN takes labels of at most 255 tokens
    (([10, 10], [0, 3]), False),      # an empty target: torch's
    (([10, 10], [11, 3]), False),
])
def test_cudnn_fits(lengths, fits):
    il, tl = (torch.tensor(x) for x in lengths)
    assert C.cudnn_fits(il, tl) is fits


@pytest.mark.parametrize("how", ["disagrees", "fails"])
def test_torchs_loss_is_used_with_a_warning_when_cudnn_disagrees_or_fails(monkeypatch, cudnn, caplog, how):
    calls: list = []
    monkeypatch.setattr(torch, "_cudnn_ctc_loss", fake_cudnn(calls, scale=2.0, fail=how == "fails"))
    logits, targets, il, tl = batch()
    with caplog.at_level(logging.WARNING, logger="asr.ctc_loss"):
        loss = C.ctc_loss(logits.log_softmax(-1), targets, il, tl)
        C.ctc_loss(logits.log_softmax(-1), targets, il, tl)
    assert len(calls) == 1  # the check only: then torch's, for good on this device
    assert ("disagrees with torch's" if how == "disagrees" else "CUDNN_STATUS_NOT_SUPPORTED") in caplog.text
    torch.testing.assert_close(loss.detach(), reference(logits, targets, il, tl)[0])


def test_impl_torch_never_takes_cudnn(cudnn):
    logits, targets, il, tl = batch()
    C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="torch").backward()
    assert cudnn == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_a_gpu_cudnn_agrees_with_torch_and_never_waits(monkeypatch):
    monkeypatch.setattr(C, "_cudnn_agrees", {})
    dev = torch.device("cuda")
    logits, targets, il, tl = batch(seed=1, b=64, t=300, v=256)
    x = logits.detach().to(dev).requires_grad_()
    ref = F.ctc_loss(x.log_softmax(-1), targets.to(dev), il, tl, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, x)
    C.ctc_loss(x.log_softmax(-1), targets, il, tl)  # the one-off check, which waits
    assert C._cudnn_agrees[dev] is True
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = C.ctc_loss(x.log_softmax(-1), targets, il, tl)
        (grad,) = torch.autograd.grad(loss, x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-4)
