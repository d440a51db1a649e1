"""The Serve application started once for the e2e tier, on a small model trained by the real pipeline.

Order matters on a 2-CPU box: the models are trained (Ray Train) before Serve takes its CPUs, and
Serve is shut down when the session ends.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from muxrec.artifacts import ArtifactRegistry, ModelVersion

from tests.conftest import MODEL, REPO

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
    serve.shutdown()
