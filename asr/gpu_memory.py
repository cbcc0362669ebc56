"""How PyTorch's CUDA caching allocator is set up for training, where batch shapes change every step.

The allocator keeps freed GPU memory in fixed-size segments and reuses a cached block only when a
request fits in one. Batches of a new shape every step ask for activations of new sizes, so the
cache fragments: requests that fit in no cached block call the driver (``cudaMalloc``), and when
the GPU fills up the whole cache is freed and retried (``cudaFree``, which waits for the GPU). With
``expandable_segments`` the allocator maps physical pages into one growing address range per stream
instead, so blocks of any size are carved from it without new segments (PyTorch's notes on CUDA
memory name changing batch sizes as its use; NeMo turns it on for ASR training for that reason).

A user's own ``PYTORCH_ALLOC_CONF`` / ``PYTORCH_CUDA_ALLOC_CONF`` always wins: nothing is changed then.
"""
from __future__ import annotations

import os

import torch

ENV_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


def user_settings() -> str | None:
    """The allocator settings the user gave in the environment ("NAME=value"), or None."""
    for name in ENV_VARS:
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return None


def set_expandable_segments(on: bool) -> str:
    """Turn the CUDA allocator's expandable segments on or off for memory it reserves from now on,
    unless the user's environment sets the allocator up; returns what is in force, for the log.
    Memory cached under the other setting is released (when CUDA is already in use), so that new
    requests are served under this one. Call it on a CUDA device only."""
    mine = user_settings()
    if mine is not None:
        return f"{mine} (from the environment)"
    setting = f"expandable_segments:{on}"
    # torch 2.11 moved the setter to the accelerator API and deprecated torch.cuda's.
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    try:
        setter(setting)
    except (RuntimeError, ValueError) as e:  # a build or platform without them: train with the default
        return f"the default ({setting} refused: {e})"
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return setting


def expandable_in_use(device: torch.device) -> bool | None:
    """Whether the memory reserved on ``device`` is in expandable segments (read off the allocator's
    own snapshot, whatever set it up); None where nothing is reserved or ``device`` is not a GPU."""
    if device.type != "cuda":
        return None
    index = torch.cuda.current_device() if device.index is None else device.index
    segments = [s for s in torch.cuda.memory_snapshot() if s.get("device") == index]
    if not segments:
        return None
    return all(s.get("is_expandable", False) for s in segments)
