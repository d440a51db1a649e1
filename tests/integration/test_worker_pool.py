"""The Ray that muxrec starts keeps idle worker processes for reuse (muxrec.ray_env.MIN_IDLE_WORKERS).

Ray Data runs several fractional-CPU tasks per CPU; with Ray's default (keep as many idle workers as
CPUs) every burst of them started fresh processes that import Ray Data, pyarrow and muxrec again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from muxrec.ray_env import MIN_IDLE_WORKERS

pytestmark = pytest.mark.integration

BURST = 6  # tasks at once: more than the session's 2 CPUs, no more than MIN_IDLE_WORKERS


def _worker_pids() -> set[int]:
    """Pids of this session's Ray worker processes: those under this process that Ray titles
    `ray::IDLE`, `ray::<task>`, ... (the session's local Ray is started by this process)."""
    from muxrec.ray_env import _process_tree

    pids = set()
    for pid in _process_tree(os.getpid()):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                pids.add(pid)
        except OSError:  # the process ended meanwhile
            continue
    return pids


def test_a_burst_of_fractional_cpu_tasks_reuses_the_workers_it_started(ray_cluster, tmp_path):
    ray = ray_cluster
    assert BURST <= MIN_IDLE_WORKERS

    @ray.remote(num_cpus=2 / BURST)
    def pid(barrier: str, i: int) -> int:
        """This worker's pid, once every task of the burst is running (one worker per task)."""
        Path(barrier, str(i)).touch()
        deadline = time.monotonic() + 60
        while len(os.listdir(barrier)) < BURST and time.monotonic() < deadline:
            time.sleep(0.05)
        return os.getpid()

    def burst(name: str) -> set[int]:
        (tmp_path / name).mkdir()
        return set(ray.get([pid.remote(str(tmp_path / name), i) for i in range(BURST)]))

    first = burst("first")
    assert len(first) == BURST
    time.sleep(3.0)  # Ray stops the idle workers over its soft limit 1 s after they fall idle
    before = _worker_pids()
    second = burst("second")
    assert second <= before, f"new worker processes for the second burst: {sorted(second - before)}"
