"""Integration fixtures: one local Ray instance for the whole session (ray.init costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from muxrec.pipelines.ray_env import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()
