"""Which CPUs the loader workers may run on, when some cores are kept for the training process.

Training on a GPU, the training process's threads launch the kernels, and the GPU idles while they
wait for a core. A worker that merely runs on the other hyper-thread of the same physical core slows
them too, which a lower priority (niceness) does not prevent; keeping whole cores free of workers does.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SYSFS_CPUS = Path("/sys/devices/system/cpu")


def parse_cpu_list(text: str) -> set[int]:
    """Linux's CPU list format: "0,8", "0-3,8-11" -> the CPU numbers."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def physical_cores(cpus: set[int], sysfs: Path = SYSFS_CPUS) -> list[set[int]]:
    """``cpus`` grouped by physical core (the hyper-threads of each core together), lowest CPU first;
    each CPU its own core where the topology cannot be read."""
    cores: list[set[int]] = []
    seen: set[int] = set()
    for cpu in sorted(cpus):
        if cpu in seen:
            continue
        try:
            siblings = parse_cpu_list((sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text())
        except (OSError, ValueError):
            siblings = {cpu}
        core = (siblings & cpus) | {cpu}
        seen |= core
        cores.append(core)
    return cores


def worker_cpus(reserve_cores: int, sysfs: Path = SYSFS_CPUS) -> set[int] | None:
    """The CPUs (of those this process may use) left to loader workers when ``reserve_cores`` physical
    cores are kept for the training process; None when none are kept, or when fewer than one core would
    be left (then nothing is reserved, with a warning)."""
    if reserve_cores <= 0:
        return None
    cores = physical_cores(os.sched_getaffinity(0), sysfs)
    if len(cores) <= reserve_cores:
        log.warning("train.reserve_cores=%d: this process may use %d physical core(s); nothing reserved",
                    reserve_cores, len(cores))
        return None
    return set().union(*cores[reserve_cores:])
