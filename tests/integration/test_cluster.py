"""`muxrec --address` on a two-node Ray cluster (both nodes on this machine).

The session's shared Ray instance stays untouched: the cluster is made and torn down by a separate
Python process (tests/integration/cluster_run.py), which runs `muxrec --address <head> prepare` and
`muxrec --address <head> score` as commands and reports on which nodes their Ray tasks and actors ran.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import MODEL, REPO
from tests.helpers import synthetic_spec

pytestmark = pytest.mark.integration


def test_prepare_and_score_run_on_both_nodes_of_a_cluster(small_models, tmp_path):
    registry, *_ = small_models
    spec = synthetic_spec(rows=16_000, seed=31, chunk_rows=4_000).model_dump(mode="json")  # 4 chunks: work for both nodes
    spec["name"] = "cluster"
    spec_path = tmp_path / "cluster.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = subprocess.run([sys.executable, str(REPO / "tests" / "integration" / "cluster_run.py"), str(spec_path),
                          str(tmp_path), str(registry.root), MODEL],
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 2
    assert report["prepare"]["rows"] == 16_000
    assert len(report["prepare"]["task_nodes"]) == 2, report  # tasks of prepare ran on both nodes
    # Scoring runs through the cluster; where its 2 actors land is Ray's choice (both fit on one node).
    assert report["score"]["rows"] == 8000 and report["score"]["actor_nodes"], report
