"""asr.data.prefetch: batches copied to the GPU one step ahead (a pass-through elsewhere)."""
from __future__ import annotations

import pytest
import torch

from asr.data.prefetch import prefetch_to_device


def batches(n: int) -> list[dict]:
    return [{"wav": torch.full((2, 5), i, dtype=torch.int16), "lengths": torch.tensor([5, 3]), "ids": [f"a{i}", f"b{i}"]}
            for i in range(n)]


def test_on_the_cpu_the_batches_pass_through_as_they_are():
    src = batches(3)
    out = list(prefetch_to_device(iter(src), torch.device("cpu")))
    assert len(out) == 3 and all(a is b for a, b in zip(out, src))
    assert list(prefetch_to_device(iter([]), torch.device("cpu"))) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_a_gpu_each_batch_arrives_copied_and_the_next_one_is_already_on_its_way():
    dev = torch.device("cuda")
    src = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches(4)]
    read = []

    def loader():
        for b in src:
            read.append(b["ids"][0])
            yield b

    it = prefetch_to_device(loader(), dev)
    first = next(it)
    assert read == ["a0", "a1"]  # the second batch was read (and its copy started) before the first is used
    got = [first] + list(it)
    for b, ref in zip(got, src):
        assert b["wav"].device.type == "cuda" and b["lengths"].device.type == "cpu" and b["ids"] == ref["ids"]
        torch.testing.assert_close(b["wav"].cpu(), ref["wav"])
    assert len(got) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_a_gpu_the_steps_first_kernel_sees_the_whole_copy():
    """The step's stream waits for its batch's copy on the side stream: a kernel queued at once on the
    step's stream reads all of a large batch (without the wait it would race the copy)."""
    dev = torch.device("cuda")
    big = [{"wav": torch.full((64, 2_000_000), i + 1, dtype=torch.int16).pin_memory()} for i in range(3)]
    sums = [int(b["wav"].sum(dtype=torch.int64)) for b in prefetch_to_device(iter(big), dev)]
    assert sums == [(i + 1) * 64 * 2_000_000 for i in range(3)]
