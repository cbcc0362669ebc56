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
from asr.targets import ctc_min_frames, ctc_min_frames_batch


def batch(seed: int = 0, b: int = 5, t: int = 40, v: int = 12):
    """Logits (T, B, V) requiring grad (transposed from (B, T, V), as the training passes them), host
    targets (N,), input and target lengths (B,) of various sizes."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g).transpose(0, 1).requires_grad_()
    il = torch.randint(t // 2, t + 1, (b,), generator=g)
    il[0] = t
    tl = torch.randint(1, t // 4, (b,), generator=g)
    targets = torch.randint(1, v, (int(tl.sum()),), generator=g)
    targets[:2] = targets[0]  # a repeated token: CTC needs a blank between
    return logits, targets, il, tl


def fake_cudnn(calls: list, scale: float = 1.0, fail: Exception | None = None):
    """A CPU stand-in for torch._cudnn_ctc_loss: torch's costs and gradient, NaN past each length."""
    def run(lp, targets, il, tl, blank, deterministic, zero_infinity):
        calls.append((targets.dtype, il.dtype, tl.dtype, blank, deterministic, lp.is_contiguous()))
        if fail is not None:
            raise fail
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
    loss = C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="cudnn")  # no cuDNN on the CPU: torch's
    ref, ref_grad = reference(logits, targets, il, tl)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    torch.testing.assert_close(logits.grad, ref_grad)
    with pytest.raises(ValueError, match="'warp'"):
        C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="warp")


def test_cudnn_path_gives_torchs_loss_and_gradients_with_the_padding_zeroed(cudnn):
    logits, targets, il, tl = batch()
    ntok = int(tl.sum())
    loss = C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="cudnn") / ntok  # as compute_loss scales it
    ref, ref_grad = reference(logits, targets, il, tl)
    torch.testing.assert_close(loss, ref / ntok)
    loss.backward()
    # The stand-in left NaN past each input length: none of it may reach the gradient.
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad, ref_grad / ntok)
    assert not logits.grad[~length_mask(il, logits.shape[0]).T].any()
    # The check (once) and the loss: int32 labels and lengths, blank 0, the deterministic algorithm.
    assert cudnn == [(torch.int32, torch.int32, torch.int32, 0, True, True)] * 2
    assert C._cudnn_agrees == {torch.device("cpu"): True}
    C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="cudnn")
    assert len(cudnn) == 3  # checked once per device, not again


def test_a_batch_cudnn_cannot_take_goes_to_torch(cudnn, caplog):
    logits, targets, il, tl = batch()
    tl = tl.clone()
    tl[1] = il[1] + 1  # a target longer than its input (infinite loss): cuDNN may read out of bounds
    targets = torch.randint(1, 12, (int(tl.sum()),))
    with caplog.at_level(logging.INFO, logger="asr.ctc_loss"):
        loss = C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="cudnn")
        C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="cudnn")
    assert cudnn == [] and torch.isinf(loss)
    assert caplog.text.count("cannot take") == 1


def test_ctc_min_frames_batch_agrees_with_ctc_min_frames():
    g = torch.Generator().manual_seed(0)
    tl = torch.randint(0, 30, (50,), generator=g)
    targets = torch.randint(1, 4, (int(tl.sum()),), generator=g)  # 3 ids: many repeats, some across targets
    each = [ctc_min_frames(t.tolist()) for t in targets.split(tl.tolist())]
    assert ctc_min_frames_batch(targets, tl).tolist() == each


@pytest.mark.parametrize("targets, il, tl, fits", [
    ([1, 2, 3], [10, 10], [1, 2], True),
    ([1] * 255 + [2], [300, 300], [255, 1], False),  # 255 repeats need 509 frames
    ([1, 2] * 128, [300, 300], [255, 1], True),
    ([1, 2] * 128 + [3], [300, 300], [256, 1], False),  # cuDNN takes labels of at most 255 tokens
    ([1, 2, 3], [10, 10], [0, 3], False),     # an empty target: torch's
    ([1, 1, 2], [2, 10], [2, 1], False),      # a repeat needs a blank between: 3 frames
    ([1, 1, 2], [3, 10], [2, 1], True),
    ([0, 2, 3], [10, 10], [1, 2], False),     # the blank as a label
    ([1, 2, 12], [10, 10], [1, 2], False),    # an id outside the vocabulary (12)
    ([1, 2, 3], [10, 401], [1, 2], False),    # an input longer than the log-probs (400 frames)
    ([1, 2], [10, 10], [1, 2], False),        # fewer labels than the lengths say
])
def test_cudnn_fits(targets, il, tl, fits):
    assert C.cudnn_fits(torch.tensor(targets), torch.tensor(il), torch.tensor(tl), frames=400, vocab=12) is fits


@pytest.mark.parametrize("how", ["disagrees", "fails"])
def test_torchs_loss_is_used_with_a_warning_when_cudnn_disagrees_or_fails(monkeypatch, cudnn, caplog, how):
    calls: list = []
    fail = RuntimeError("CUDNN_STATUS_NOT_SUPPORTED") if how == "fails" else None
    monkeypatch.setattr(torch, "_cudnn_ctc_loss", fake_cudnn(calls, scale=2.0, fail=fail))
    logits, targets, il, tl = batch()
    with caplog.at_level(logging.WARNING, logger="asr.ctc_loss"):
        loss = C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="cudnn")
        C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="cudnn")
    assert len(calls) == 1  # the check only: then torch's, for good on this device
    assert ("disagrees with torch's" if how == "disagrees" else "CUDNN_STATUS_NOT_SUPPORTED") in caplog.text
    torch.testing.assert_close(loss.detach(), reference(logits, targets, il, tl)[0])


def test_running_out_of_memory_in_the_check_is_not_taken_for_a_cudnn_failure(monkeypatch, cudnn):
    monkeypatch.setattr(torch, "_cudnn_ctc_loss", fake_cudnn([], fail=torch.OutOfMemoryError("CUDA out of memory")))
    logits, targets, il, tl = batch()
    with pytest.raises(torch.OutOfMemoryError):
        C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="cudnn")
    assert C._cudnn_agrees == {}


def test_impl_torch_the_default_never_takes_cudnn(cudnn):
    logits, targets, il, tl = batch()
    C.ctc_loss(logits.log_softmax(-1), targets, il, tl, impl="torch").backward()
    C.ctc_loss(logits.log_softmax(-1), targets, il, tl).backward()
    assert cudnn == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_a_gpu_cudnn_agrees_with_torch_and_never_waits(monkeypatch):
    monkeypatch.setattr(C, "_cudnn_agrees", {})
    dev = torch.device("cuda")
    logits, targets, il, tl = batch(seed=1, b=64, t=300, v=256)
    x = logits.detach().transpose(0, 1).to(dev).requires_grad_()  # (B, T, V), as the model returns them
    x_t = x.transpose(0, 1)
    ref = F.ctc_loss(x_t.log_softmax(-1), targets.to(dev), il, tl, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, x)
    C.ctc_loss(x_t.log_softmax(-1), targets, il, tl, impl="cudnn")  # the one-off check, which waits
    assert C._cudnn_agrees[x.device] is True  # keyed by the device with its index, cuda:0
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = C.ctc_loss(x_t.log_softmax(-1), targets, il, tl, impl="cudnn")
        (grad,) = torch.autograd.grad(loss, x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-3)
    # cuDNN sums in another order: 0.1% of the gradient differed by up to 9e-4 on an H200
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=2e-3)
