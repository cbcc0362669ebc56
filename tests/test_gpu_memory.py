"""The CUDA allocator's set-up for training (asr.gpu_memory): expandable segments unless the user's
environment says otherwise; the GPU test checks the allocator really reserves them."""
import pytest
import torch

from asr import gpu_memory
from asr.config import TrainConfig

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.fixture
def calls(monkeypatch):
    """The settings handed to the allocator, through whichever setter this torch has."""
    got = []
    for name in gpu_memory.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", got.append, raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    return got


def test_expandable_segments_are_asked_for_on_or_off(calls):
    assert TrainConfig().expandable_segments, "on by default"
    assert gpu_memory.set_expandable_segments(True) == "expandable_segments:True"
    assert gpu_memory.set_expandable_segments(False) == "expandable_segments:False"
    assert calls == ["expandable_segments:True", "expandable_segments:False"]


def test_a_torch_without_the_accelerator_api_gets_the_cuda_setter(calls, monkeypatch):
    monkeypatch.delattr(torch._C, "_accelerator_setAllocatorSettings")
    older = []
    monkeypatch.setattr(torch.cuda.memory, "_set_allocator_settings", older.append)
    gpu_memory.set_expandable_segments(True)
    assert older == ["expandable_segments:True"] and calls == []


@pytest.mark.parametrize("name", gpu_memory.ENV_VARS)
def test_the_users_allocator_settings_win(calls, monkeypatch, name):
    monkeypatch.setenv(name, "max_split_size_mb:256")
    assert gpu_memory.set_expandable_segments(True) == f"{name}=max_split_size_mb:256 (from the environment)"
    assert calls == []


def test_memory_already_cached_is_released_when_cuda_is_in_use(calls, monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    gpu_memory.set_expandable_segments(False)
    assert calls == ["expandable_segments:False"] and emptied == [True]


def test_a_platform_that_refuses_them_trains_with_the_default(calls, monkeypatch):
    def refuse(setting):
        raise RuntimeError("expandable_segments not supported on this platform")

    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", refuse)
    said = gpu_memory.set_expandable_segments(True)
    assert said.startswith("the default (expandable_segments:True refused") and "not supported" in said


def test_nothing_to_say_on_the_cpu():
    assert gpu_memory.expandable_in_use(torch.device("cpu")) is None


def test_expandable_in_use_reads_the_devices_segments(monkeypatch):
    segments = [{"device": 0, "is_expandable": True}, {"device": 1, "is_expandable": False}]
    monkeypatch.setattr(torch.cuda, "memory_snapshot", lambda: segments)
    assert gpu_memory.expandable_in_use(torch.device("cuda", 0)) is True
    assert gpu_memory.expandable_in_use(torch.device("cuda", 1)) is False
    assert gpu_memory.expandable_in_use(torch.device("cuda", 2)) is None  # nothing reserved there
    segments.append({"device": 0})  # a fixed-size segment left from before (cuBLAS's workspace, say)
    assert gpu_memory.expandable_in_use(torch.device("cuda", 0)) is False


@gpu
def test_on_a_gpu_the_allocator_reserves_what_was_asked_for(monkeypatch):
    for name in gpu_memory.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    dev = torch.device("cuda")
    try:
        for on in (True, False, True):
            gpu_memory.set_expandable_segments(on)
            x = torch.empty(64 << 20, dtype=torch.uint8, device=dev)  # 64 MiB: a large-pool segment
            [seg] = [s for s in torch.cuda.memory_snapshot()
                     if s["address"] <= x.data_ptr() < s["address"] + s["total_size"]]
            assert bool(seg.get("is_expandable")) == on
            del x
    finally:
        gpu_memory.set_expandable_segments(False)  # the allocator's default, for the tests after this one
