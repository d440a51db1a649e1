"""One streamed DeepFM epoch through Ray Train, `SpinGuard` off then on, alternating; JSON last.

    python scripts/compare_spin_guard.py <prepared folder> <rounds> <object-store budget MiB, 0: Ray's own>

    python scripts/compare_spin_guard.py $PWD/runs/bench-pipeline-2000000/prepared/bench-pipeline-2000000 2 64

A capped budget keeps Ray Data reading through the whole epoch, as a 20M-row split does on this machine
(findings: docs/training.md, "How a worker gets its rows"). The prepared folder must be an absolute path.
"""
import json, sys, time
from dataclasses import replace
from pathlib import Path
import muxrec.pipelines.train as T
from muxrec.pipelines.backpressure import SpinGuard
from muxrec.config import load_model_file
from muxrec.models import make_config
from muxrec.ray_env import ensure_ray
from ray.data import DataContext

root, rounds, budget_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mf = load_model_file(Path("configs/models/deepfm.yaml"))
job = T.TrainJob(root, "deepfm", make_config("deepfm", mf.model), replace(mf.train, epochs=1))
ensure_ray()
ctx = DataContext.get_current()
if budget_mb:
    limits = ctx.execution_options.resource_limits
    ctx.execution_options.resource_limits = limits.copy(object_store_memory=budget_mb * 2**20)
    print("limits", ctx.execution_options.resource_limits, flush=True)
out = []
for rnd in range(rounds):
    for guard in (False, True):
        ctx.custom_execution_callback_classes[:] = []
        T.use_spin_guard = (lambda: ctx.custom_execution_callback_classes.append(SpinGuard)) if guard else (lambda: None)
        state, _, wall = T.fit(job, Path("runs/compare-spin-guard").resolve(), f"spin{int(guard)}", fresh=True)
        h = state["history"][0]
        out.append({"round": rnd, "guard": guard, "budget_mb": budget_mb, "epoch_s": round(h["epoch_seconds"], 1),
                    "rows_per_s": round(state["train_rows"] / h["epoch_seconds"]), "wall_s": round(wall, 1),
                    "valid_auc": round(h["valid_auc"], 5)})
        print(out[-1], flush=True)
print(json.dumps(out))
