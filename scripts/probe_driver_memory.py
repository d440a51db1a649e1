"""What publishing a fitted model holds, step by step: resident memory after each step.

    python scripts/probe_driver_memory.py --prepared runs/bench-pipeline-20000000/prepared/bench-pipeline-20000000

Replays, in this process and with an untrained DeepFM, what `pipelines/train.py: finish_run` does once
Ray Train is done (on the driver until 15a6a94; in a Ray task for large data since): load the prepared
data (vocabulary), build the model, serialise its weights and the vocabulary for publishing, evaluate
valid a chunk at a time (`PreparedData.rows`), permutation importance on the first validation rows. Prints RSS (MB) after each step and the peak sampled during it, then one JSON
object. Findings: docs/benchmarks/README.md, "Streaming pipeline at scale".
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // 2**20


class Peak:
    """The largest RSS sampled every 0.1 s since the last `reset`."""

    def __init__(self) -> None:
        self.mb = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.mb = max(self.mb, rss_mb())
            time.sleep(0.1)

    def reset(self) -> None:
        self.mb = rss_mb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", type=Path, required=True, help="a folder written by `muxrec prepare`")
    args = ap.parse_args()
    torch.set_num_threads(2)
    steps: dict[str, dict[str, int]] = {}
    peak = Peak()

    def step(name: str, fn):
        peak.reset()
        out = fn()
        steps[name] = {"rss_mb": rss_mb(), "peak_mb": max(peak.mb, rss_mb())}
        print(f"{name}: {steps[name]}", flush=True)
        return out

    from muxrec.config import load_model_file
    from muxrec.models import build_model, make_config
    from muxrec.models.serialization import state_bytes
    from muxrec.pipelines.importance import permutation_importance
    from muxrec.pipelines.loop import evaluate_rows
    from muxrec.pipelines.prepare import PreparedData
    from muxrec.pipelines.train import IMPORTANCE_ROWS

    step("imports", lambda: None)
    prepared = step("load prepared data", lambda: PreparedData.load(args.prepared))
    inputs = prepared.inputs
    model_file = load_model_file(REPO / "configs" / "models" / "deepfm.yaml")
    model = step("build the model", lambda: build_model("deepfm", make_config("deepfm", model_file.model), inputs))
    weights = step("serialise the weights", lambda: state_bytes(model))
    vocab = step("vocabulary as JSON", lambda: prepared.vocab.to_json())
    del weights, vocab
    step("evaluate valid (chunked)", lambda: evaluate_rows(model, prepared.rows("valid"), inputs, 8192))
    step("permutation importance", lambda: permutation_importance(model, prepared.read_head("valid", IMPORTANCE_ROWS),
                                                                  inputs))
    print(json.dumps({"prepared": str(args.prepared), "ids": sum(t.num_embeddings for t in inputs.tables),
                      "steps": steps}))


if __name__ == "__main__":
    main()
