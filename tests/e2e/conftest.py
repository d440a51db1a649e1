"""The Serve application started once for the e2e tier, on a small model trained by the real pipeline.

Order matters on a 2-CPU box: the models are trained (Ray Train) before Serve takes its CPUs; Serve
ends with the session's Ray (or is shut down, on a Ray the session joined).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from muxrec.artifacts import ArtifactRegistry, ModelVersion

from tests.conftest import MODEL, REPO, SESSION

ADMIN_TOKEN = "e2e-admin-token-0123456789"


@dataclass(frozen=True)
class Served:
    url: str
    registry: ArtifactRegistry
    v1: ModelVersion
    v2: ModelVersion
    spec_path: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served(small_models, redis_url) -> Served:
    from ray import serve

    from muxrec.apps.serving import wait_ready
    from muxrec.services.app import load_serve_config, start
    from dataclasses import replace

    registry, v1, v2, spec_path = small_models
    config = replace(load_serve_config(REPO / "deploy" / "serve.yaml"), port=free_port())
    url = start(config, {"registry": str(registry.root), "model": MODEL, "version": v1.version,
                         "redis_url": redis_url, "admin_token": ADMIN_TOKEN})
    wait_ready(url)
    yield Served(url, registry, v1, v2, spec_path)
    if not SESSION["owns_ray"]:  # a Ray of this session's own ends with it, Serve included: 5 s sooner
        serve.shutdown()


def extra_app(served: Served, name: str, overrides: dict) -> str:
    """Deploy another copy of the app under /<name>, with tiny CPU reservations; return its URL."""
    from ray import serve

    from muxrec.services.app import build_app, load_serve_config, make_settings

    config = load_serve_config(REPO / "deploy" / "serve.yaml")
    # One replica each (these apps test other things): fewer processes to start on a 2-core box.
    small = {n: {**opts, "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.05}}
             for n, opts in config.deployments.items()}
    settings = make_settings({"registry": str(served.registry.root), "model": MODEL, "version": served.v1.version,
                              "serving_alias": f"serving-{name}", **overrides})
    serve.run(build_app(settings, small), name=name, route_prefix=f"/{name}")
    return f"{served.url}/{name}"


def delete_app(name: str) -> None:
    """serve.delete without waiting for the replicas' graceful stop (4-5 s per app here): the tests after
    it use other apps, and these reserve almost no CPU."""
    from ray import serve

    serve.delete(name, _blocking=False)


@pytest.fixture(scope="session")
def redisless_app(served) -> str:
    """A second copy of the app under /local, one replica each, with no Redis (the in-process cache) and
    model calls that give up after 2 s (call_timeout_s; 5 s by default). The tests of either share it:
    a deployment costs ~10 s here. A test that kills a replica waits until the app answers again."""
    yield extra_app(served, "local", {"call_timeout_s": 2.0, "redis_url": ""})
    delete_app("local")
