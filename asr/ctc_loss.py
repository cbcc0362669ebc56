"""The training's CTC loss (blank 0, fp32, summed over the batch), without host-device waits on a GPU.

torch's CUDA CTC loss copies the lengths it is given to the GPU with blocking copies, in its forward
pass and again in its backward one (8 host-device synchronisations a training step, counted on an
H100). Each waits for all the work queued before it, so the host cannot queue the backward pass while
the GPU still runs the forward one, and the GPU idles after each while the host launches what comes
next. cuDNN's CTC loss (its v8 API) reads labels and lengths from GPU memory: given them through
non-blocking copies from the host, it never waits. So ``ctc_loss`` takes cuDNN's on a GPU when the
batch fits it (every target 1 to 255 tokens, feasible in its input: ``cudnn_fits``), once it has
agreed with torch's on a first batch (per device; if it does not, or fails, torch's is used, with a
warning), and torch's everywhere else. ``impl="torch"`` always takes torch's.

torch's is the default all the same: measured in training on one H200 (2026-11-28, benchmarks/
RESULTS.md), the step with cuDNN's took 288 ms against 248 ms with torch's, the waits included, though
cuDNN's kernels take ~3 ms of it and the two are within 2 ms of each other in ``step_parts.py``'s
build-up of the step (no loader workers there). The profile points at the host: ``cudnn_fits``'s CPU
ops on the batch's ~30,000 targets took 7-11 ms each, split over a thread per core that the loader's
workers share. ``asr train`` now gives its process one CPU thread on a GPU (``asr.train.
process_threads``), which should remove that; until a GPU run says so, ``impl="cudnn"``
(``train.ctc=cudnn``) stays the choice to measure, not the default.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from asr.features import length_mask, to_device
from asr.targets import ctc_min_frames_batch

log = logging.getLogger(__name__)

IMPLS = ("torch", "cudnn")
CUDNN_MAX_TARGET = 255  # the maximum label length torch gives cuDNN's CTC descriptor

# Per device: whether cuDNN's CTC loss agreed with torch's on the first batch that fitted it.
_cudnn_agrees: dict[torch.device, bool] = {}
_unfit_logged: set[torch.device] = set()


class _CudnnCTC(torch.autograd.Function):
    """Per-utterance CTC costs (B,) of log_probs (T, B, V) float32, all on one GPU, with targets (N,)
    and lengths (B,) int32 there too.

    The gradient cuDNN returns is the one torch's CTC returns (with respect to the log-probs as the
    input of a softmax: probabilities minus the alignment posteriors), but only for frames within each
    input length: the rest of the (uninitialised) buffer is left as it was, so it is zeroed here."""

    @staticmethod
    def forward(ctx, log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
        # Packed (T, B, V): the training passes a transposed (B, T, V) tensor, and torch describes
        # cuDNN's input by its strides but its gradient as packed. Deterministic: cuDNN's deterministic
        # algorithm, so a run repeats exactly.
        costs, grad = torch._cudnn_ctc_loss(log_probs.contiguous(), targets, input_lengths, target_lengths, 0, True,
                                            False)
        valid = length_mask(input_lengths, log_probs.shape[0]).T[..., None]  # (T, B, 1)
        ctx.save_for_backward(grad.masked_fill_(~valid, 0.0))
        return costs

    @staticmethod
    def backward(ctx, grad_costs: Tensor) -> tuple[Tensor, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_costs[None, :, None], None, None, None


def cudnn_fits(targets: Tensor, input_lengths: Tensor, target_lengths: Tensor, frames: int, vocab: int) -> bool:
    """Whether cuDNN's CTC loss can take a batch: host targets (N,) with ids 1 to ``vocab`` - 1, every
    target 1 to 255 tokens long and CTC-feasible in its input, input lengths (B,) at most ``frames``.
    (cuDNN reads labels and lengths from GPU memory, where it cannot check them: a bad one would be
    undefined behaviour on the GPU, not an error; torch's loss copes with all of these.)"""
    if targets.numel() != int(target_lengths.sum()) or not targets.numel():
        return False
    return bool(((target_lengths >= 1) & (target_lengths <= CUDNN_MAX_TARGET) & (input_lengths <= frames)
                 & (ctc_min_frames_batch(targets, target_lengths) <= input_lengths)).all()
                and targets.min() >= 1 and targets.max() < vocab)


def cudnn_available(device: torch.device) -> bool:
    """Whether cuDNN's CTC loss can run on ``device``: a GPU, with cuDNN there and enabled."""
    return device.type == "cuda" and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled


def _check_cudnn(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
                 on_device: tuple[Tensor, Tensor, Tensor]) -> bool:
    """Whether cuDNN's costs and gradients agree with torch's on this batch (a one-off check: it
    waits for the GPU). Tolerances: float32 sums over hundreds of frames."""
    lp = log_probs.detach().requires_grad_()
    try:
        with torch.enable_grad():
            ours = _CudnnCTC.apply(lp, *on_device)
            (g_ours,) = torch.autograd.grad(ours.sum(), lp)
        if lp.device.type == "cuda":
            torch.cuda.synchronize(lp.device)  # an error cuDNN reports asynchronously surfaces here
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as e:
        log.warning("cuDNN's CTC loss failed on %s (%s); torch's is used", log_probs.device, e)
        return False
    with torch.enable_grad():
        ref = F.ctc_loss(lp, to_device(targets, lp.device), input_lengths, target_lengths, blank=0,
                         reduction="none", zero_infinity=False)
        (g_ref,) = torch.autograd.grad(ref.sum(), lp)
    ours, ref = ours.detach(), ref.detach()
    cost_err = float((ours - ref).abs().max())
    grad_err = float((g_ours - g_ref).abs().max())
    ok = (torch.allclose(ours, ref, rtol=1e-3, atol=1e-2, equal_nan=True)
          and torch.allclose(g_ours, g_ref, rtol=1e-3, atol=1e-3, equal_nan=True))
    if ok:
        log.info("CTC loss: cuDNN's (agrees with torch's on the first batch: max cost difference %.2g, "
                 "gradient %.2g)", cost_err, grad_err)
    else:
        log.warning("cuDNN's CTC loss disagrees with torch's on %s (max cost difference %.3g, gradient "
                    "%.3g); torch's is used", log_probs.device, cost_err, grad_err)
    return ok


def ctc_loss(log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor,
             impl: str = "torch") -> Tensor:
    """Summed CTC loss (blank 0), a scalar: log_probs (T, B, V) float32; targets (N,) the token ids
    end to end, input_lengths and target_lengths (B,), all three on the host (on a GPU they are
    copied from pinned memory without waiting). ``impl``: "torch" or "cudnn" (cuDNN's when it can, see
    the module docstring)."""
    if impl not in IMPLS:
        raise ValueError(f"CTC implementation {impl!r}: expected one of {', '.join(IMPLS)}")
    dev = log_probs.device
    if impl == "cudnn" and cudnn_available(dev) and _cudnn_agrees.get(dev, True):
        if cudnn_fits(targets, input_lengths, target_lengths, log_probs.shape[0], log_probs.shape[2]):
            on_device = tuple(to_device(t.to(torch.int32), dev) for t in (targets, input_lengths, target_lengths))
            if dev not in _cudnn_agrees:
                _cudnn_agrees[dev] = _check_cudnn(log_probs, targets, input_lengths, target_lengths, on_device)
            if _cudnn_agrees[dev]:
                return _CudnnCTC.apply(log_probs, *on_device).sum()
        elif dev not in _unfit_logged:
            _unfit_logged.add(dev)
            log.info("a batch that cuDNN's CTC loss cannot take (its longest target: %d tokens; cuDNN takes "
                     "%d): torch's loss for such batches, which waits for the GPU (said once)",
                     int(target_lengths.max()), CUDNN_MAX_TARGET)
    return F.ctc_loss(log_probs, to_device(targets, dev), input_lengths, target_lengths, blank=0,
                      reduction="sum", zero_infinity=False)
