"""asr.data.cpus and the loader workers' set-up: the cores kept free of workers for the training process."""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal

import pytest
import torch

from asr.data import cpus as C
from asr.train import init_loader_worker, process_threads


def fake_sysfs(tmp_path, siblings: dict[int, str]):
    for cpu, text in siblings.items():
        d = tmp_path / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "thread_siblings_list").write_text(text + "\n")
    return tmp_path


@pytest.mark.parametrize("device, threads, expected", [("cuda", 0, 1), ("cpu", 0, 0), ("cuda", 4, 4), ("cpu", 2, 2)])
def test_the_training_process_runs_one_cpu_thread_on_a_gpu_unless_told(device, threads, expected):
    # 0: torch's default (a thread per core), which the CPU training needs and a GPU's does not
    assert process_threads(torch.device(device), threads) == expected


# 4 cores x 2 hyper-threads, numbered as many Linux machines do: CPU n and n + 4 share a core.
HT = {n: f"{n % 4},{n % 4 + 4}" for n in range(8)}


@pytest.mark.parametrize("text, cpus", [("0", {0}), ("0,8", {0, 8}), ("0-3,8-11", {0, 1, 2, 3, 8, 9, 10, 11}),
                                        ("2-2", {2})])
def test_parse_cpu_list(text, cpus):
    assert C.parse_cpu_list(text) == cpus


def test_physical_cores_group_the_hyper_threads_of_the_cpus_given(tmp_path):
    sysfs = fake_sysfs(tmp_path, HT)
    assert C.physical_cores(set(range(8)), sysfs) == [{0, 4}, {1, 5}, {2, 6}, {3, 7}]
    assert C.physical_cores({1, 5, 6}, sysfs) == [{1, 5}, {6}]  # a sibling this process may not use is left out
    assert C.physical_cores({0, 1}, tmp_path / "missing") == [{0}, {1}]


def test_worker_cpus_leave_whole_cores_to_the_training_process(tmp_path, monkeypatch, caplog):
    sysfs = fake_sysfs(tmp_path, HT)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert C.worker_cpus(0, sysfs) is None
    assert C.worker_cpus(1, sysfs) == {1, 2, 3, 5, 6, 7}
    assert C.worker_cpus(2, sysfs) == {2, 3, 6, 7}
    with caplog.at_level(logging.WARNING, logger="asr.data.cpus"):
        assert C.worker_cpus(4, sysfs) is None  # nothing would be left for the workers
    assert "train.reserve_cores=4" in caplog.text


def _child(queue, cpus):
    init_loader_worker(0, niceness=3, cpus=cpus)
    queue.put((os.nice(0), sorted(os.sched_getaffinity(0)), signal.getsignal(signal.SIGTERM) == signal.SIG_IGN))


def test_a_loader_worker_runs_nicer_on_the_cpus_it_is_given():
    here = sorted(os.sched_getaffinity(0))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(queue, {here[-1]}))
    p.start()
    nice, affinity, ignores_sigterm = queue.get(timeout=30)
    p.join(timeout=30)
    assert nice == os.nice(0) + 3 and affinity == [here[-1]] and ignores_sigterm
