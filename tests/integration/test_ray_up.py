"""`muxrec ray up` keeps a local Ray on 127.0.0.1 that later commands join; `muxrec ray down` stops it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _muxrec(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "muxrec.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_ray_up_is_joined_by_later_processes_and_ray_down_stops_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["XDG_CACHE_HOME"] = str(tmp_path)  # this test's own record of the kept Ray
    up = _muxrec("ray", "up", "--num-cpus", "1", env=env)
    assert up.returncode == 0, up.stderr
    try:
        address = _muxrec("ray", "status", env=env).stdout.strip()
        assert address.startswith("127.0.0.1:")
        port = address.rsplit(":", 1)[1]
        assert "already running" in _muxrec("ray", "up", env=env).stderr  # a second `up` starts nothing
        # A program that imports Ray before muxrec (Ray reads its auth mode at import) joins it too.
        joined = subprocess.run(
            [sys.executable, "-c", "import ray; from muxrec.ray_env import ensure_ray; ensure_ray(); "
                                   "print(ray.get_runtime_context().gcs_address); print(ray.cluster_resources()['CPU'])"],
            capture_output=True, text=True, env=env, timeout=120)
        assert joined.returncode == 0, joined.stderr
        gcs, cpus = joined.stdout.split()
        assert gcs.endswith(f":{port}") and cpus == "1.0"  # the kept Ray, not a new one (which has every CPU)
        assert "Started a local Ray instance" not in joined.stderr
        # RAY_ADDRESS naming the kept Ray joins it the same way (its token auth included).
        named = subprocess.run([sys.executable, "-c", "import ray; from muxrec.ray_env import ensure_ray; "
                                "ensure_ray(); print(ray.get_runtime_context().gcs_address)"],
                               capture_output=True, text=True, env={**env, "RAY_ADDRESS": address}, timeout=120)
        assert named.returncode == 0, named.stderr[-3000:]
        assert named.stdout.strip().endswith(f":{port}")
    finally:
        down = _muxrec("ray", "down", env=env)
    assert down.returncode == 0 and "Ray stopped" in down.stderr
    # The head stopped at once: no drain on SIGTERM, which waited up to 30 s (and after a training run
    # never finished), and no SIGTERM to every Ray process at once (the drain then failed after 30 s).
    log = next(tmp_path.rglob("ray-up.log")).read_text(errors="replace")
    assert "Draining for up to" not in log and "Failed to mark the local node as draining" not in log
    assert _muxrec("ray", "status", env=env).stdout.strip() == "not running"
    assert "no Ray kept" in _muxrec("ray", "down", env=env).stderr
