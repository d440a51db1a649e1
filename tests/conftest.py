"""Fixtures shared by every test tier.

Tiers: tests/unit (CPU, no network, seconds), tests/integration (a local Ray started once per
session; the real Redis on 127.0.0.1:6379), tests/e2e (the Serve app over HTTP).
In CI (CI=true) a test that needs Ray or Redis must run: `require()` turns a skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODEL = "small-synthetic-deepfm"  # registry name of the session's small trained model
CONFIGS = REPO / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests read MovieLens from ../shared/data unless told otherwise; never from the network.
os.environ.setdefault("MUXREC_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip with a reason locally; fail in CI, where every Ray / Redis / data test must run."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required in CI but unavailable: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = Path(os.environ["MUXREC_DATA_DIR"]) / "ml-100k"
    require((path / "u.data").is_file(), f"MovieLens-100K not found at {path} (set MUXREC_DATA_DIR)")
    return path


SESSION = {"owns_ray": False}  # facts about this test session's Ray that fixtures share


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session, shared by the integration and e2e tiers."""
    import ray

    from muxrec.ray_env import ensure_ray

    SESSION["owns_ray"] = ensure_ray(num_cpus=2)  # False when it joined RAY_ADDRESS or a `muxrec ray up`
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis on 127.0.0.1:6379 (a skip locally, a failure in CI, when it is not running)."""
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        ok = redis.Redis.from_url(url, socket_timeout=1).ping()
    except redis.RedisError as err:
        ok, why = False, str(err)
    else:
        why = "no PONG"
    require(ok, f"Redis at {url} is not reachable ({why})")
    return url


@pytest.fixture(scope="session")
def small_models(ray_cluster, tmp_path_factory):
    """A small model trained by the real pipeline (prepare on Ray Data, the loop in this process as
    num_workers 0 runs it: a Ray Train worker would add ~15 s) and a second version of it.

    v0001: DeepFM on 6,000 synthetic rows, 2 epochs. v0002: the same weights shifted (a reload /
    version-pinning target). Created before any Serve app takes the CPUs.
    Returns (registry, v0001, v0002, path of the spec YAML).
    """
    import torch

    from muxrec.artifacts import ArtifactRegistry
    from muxrec.config import TrainConfig
    from muxrec.models.deepfm import DeepFMConfig
    from muxrec.models.serialization import load_model, model_files
    from muxrec.pipelines.prepare import prepare
    from muxrec.pipelines.train import TrainJob, train

    from tests.helpers import synthetic_spec

    root = tmp_path_factory.mktemp("small-models")
    spec = synthetic_spec(rows=6000, seed=21)
    prepared = prepare(spec, root / "prepared")
    registry = ArtifactRegistry(root / "registry")
    job = TrainJob(str(prepared.root), "deepfm", DeepFMConfig(embedding_dim=8, hidden_units=(32, 16)),
                   TrainConfig(epochs=2, batch_size=256, lr=3e-3, num_workers=0))
    v1 = train(job, registry, MODEL, root / "ray").version
    loaded = load_model(v1)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.05)
    files = model_files(loaded.model, loaded.name, loaded.config, loaded.spec, loaded.vocab)
    files["importance.json"] = v1.read_text("importance.json")
    v2 = registry.publish(MODEL, files, aliases=())
    spec_path = root / "spec.yaml"
    spec_path.write_text(spec.to_yaml())
    return registry, v1, v2, spec_path
