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
