"""Batches copied to the GPU one step ahead, on a side stream, so the copy overlaps the step before.

The loader hands over each batch in pinned host memory. Copied at the start of its own step, on the
stream the step runs on, a batch's audio (~120 MB at ``conf/large.yaml``'s 384,000 frames) holds back
that step's first kernels for the whole copy; copied on a second stream while the step before runs,
it is there when the step starts.
"""
from __future__ import annotations

from typing import Iterator

import torch


def prefetch_to_device(batches: Iterator[dict], device: torch.device,
                       keys: tuple[str, ...] = ("wav",)) -> Iterator[dict]:
    """The batches of ``batches`` (dicts) with the tensors under ``keys`` on ``device``; on a GPU,
    each batch's copy is started when the batch before it is handed out. Elsewhere the batches pass
    through unchanged (the step copies them).

    One batch is read ahead from ``batches``: a consumer that stops early leaves it unused (``asr train``
    resumes from the batches it counted, not from the loader's position)."""
    if device.type != "cuda":
        yield from batches
        return
    side = torch.cuda.Stream(device)

    def start(batch: dict | None) -> dict | None:
        if batch is None:
            return None
        with torch.cuda.stream(side):
            return {k: v.to(device, non_blocking=True) if k in keys else v for k, v in batch.items()}

    staged = start(next(batches, None))
    while staged is not None:
        main = torch.cuda.current_stream(device)
        main.wait_stream(side)  # the step's kernels start after its batch's copy, not before
        for k in keys:
            # The copy was allocated on the side stream: without this, its memory could be handed out
            # again while the step still reads it.
            staged[k].record_stream(main)
        batch, staged = staged, start(next(batches, None))
        yield batch
