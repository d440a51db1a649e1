"""Helper of test_cluster.py, run as its own process: a two-node Ray cluster on this machine, then
`muxrec --address` prepare and score against it. Prints one JSON line: nodes, rows, and the nodes
on which prepare's tasks and score's actors ran (from Ray's state API).

    python tests/integration/cluster_run.py SPEC.yaml WORKDIR REGISTRY MODEL
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from muxrec.data.synthetic import SyntheticConfig, generate


def muxrec(address: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "muxrec.cli", "--address", address, *args],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit(f"muxrec {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):])


def main(spec: str, work: str, registry: str, model: str) -> None:
    work_dir = Path(work)
    # The state API (which node ran what) needs the dashboard; it listens on 127.0.0.1 only. The
    # nodes take the machine's address, as a local `ray.init` does (with 127.0.0.1 the head is unreachable).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": True,
                                                            "dashboard_host": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        nodes = len([n for n in ray.nodes() if n["Alive"]])

        prepared = muxrec(cluster.address, "prepare", "--spec", spec, "--out", str(work_dir / "prepared"))
        tasks = list_tasks(filters=[("type", "=", "NORMAL_TASK")], limit=10_000, detail=True, raise_on_missing_output=False)
        task_nodes = sorted({t.node_id for t in tasks if t.node_id})

        rows = work_dir / "rows"
        rows.mkdir()
        raw = generate(SyntheticConfig(rows=8000, seed=32))[0]
        for i in range(4):
            pq.write_table(raw.slice(i * 2000, 2000), rows / f"{i}.parquet")
        scored = muxrec(cluster.address, "score", "--input", str(rows), "--output", str(work_dir / "scored"),
                        "--name", model, "--registry", registry, "--batch-size", "500", "--concurrency", "2")
        actors = list_actors(filters=[("class_name", "=", "MapWorker(MapBatches(Scorer))")], limit=1000, detail=True,
                             raise_on_missing_output=False)
        actor_nodes = sorted({a.node_id for a in actors if a.node_id})
    finally:
        ray.shutdown()
        cluster.shutdown()
    rows_prepared = sum(s["rows"] for s in prepared["splits"].values())
    print(json.dumps({"nodes": nodes, "prepare": {"rows": rows_prepared, "task_nodes": task_nodes},
                      "score": {"rows": scored["rows"], "actor_nodes": actor_nodes}}))


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # runs main's `finally`: the cluster is shut down


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    signal.signal(signal.SIGTERM, _stop)
    main(*sys.argv[1:])
