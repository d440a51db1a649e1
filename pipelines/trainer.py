"""Ray Train's `TorchTrainer` as muxrec runs it: a light controller, and no placement-group cleaner
that cannot work.

**A light controller.** Ray Train's controller actor unpickles the run's `train_loop_config` and its
backend config in a process of its own. Handed a muxrec job object, it imported muxrec's training
module to rebuild it, and with it torch and TorchRec (4.8 s); handed `TorchConfig`, it imported torch
(1.9 s). It never uses either: it only passes them on. So the job travels as bytes (`job=`, read back
in the worker by `job_of`), and a run with one worker and no sharding, which needs no process group,
gets Ray Train's no-op backend. Measured on 1-worker DeepFM runs with Ray already up (6,000 synthetic
rows): the controller asked for its worker 6.6 s after `fit()` before, 1.9 s after; epoch 1 began
13.1-16.8 s after `fit()` before and 11.2-12.9 s after (3 runs each, alternated twice). What remains
is mostly the worker's own start: a new process (2.4 s) importing torch and TorchRec (4.5 s).

**No placement-group cleaner.** For every run, Ray Train 2.x starts a detached `PlacementGroupCleaner`
actor that asks the state API (served by the Ray dashboard) every second whether the run's controller
is still alive, waiting up to 10 s for an answer, so that it can remove the run's placement group if
the controller dies. Without a dashboard every question waits out those 10 s, and at the end of the
run the controller waits for the cleaner to stop: 12 s added to every `muxrec train`, `muxrec encoders
align` and every test that trains (measured: a 1.5 s epoch on 13k rows took 25 s from `fit()` to its
result; the controller log ends in "Failed to stop PlacementGroupCleaner gracefully" 12 s after the
workers shut down).

The Ray that muxrec starts on one machine has no dashboard (muxrec.ray_env), so there the cleaner
cannot do its job and `TorchTrainer` below leaves it out. A placement group still goes when the job
that made it ends; what is lost is its removal when a controller dies inside a driver that lives on.
On a Ray with a dashboard (a cluster address) the cleaner stays.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable

import ray
from ray.train.backend import BackendConfig
from ray.train.torch import TorchTrainer as RayTorchTrainer
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

# Ray Train's controller collects each worker's report by polling the worker group every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), and a worker's `report` blocks until the previous
# one was collected (a queue of one). Epochs shorter than the interval were paced at it (ML-100K DeepFM:
# 0.85 s of work per epoch, 1.84 s between epochs), and start-up and the end of a run each waited for a
# poll. Polling a local worker group costs well under a millisecond; the user's own setting wins.
CONTROLLER_POLL_S = "0.1"


def has_dashboard() -> bool:
    """Whether the Ray this process is connected to serves a dashboard (and so the state API)."""
    node = getattr(ray._private.worker.global_worker, "node", None)
    return bool(getattr(node, "webui_url", ""))


def job_of(config: dict[str, Any]) -> Any:
    """The job a `TorchTrainer` was given, in the worker's `train_loop_per_worker(config)`."""
    return pickle.loads(config["job"])


class TorchTrainer(RayTorchTrainer):
    """`ray.train.torch.TorchTrainer` with the job as bytes, torch's process group only where asked
    for (`process_group`: more than one worker, or TorchRec sharding), the controller polling its
    workers every CONTROLLER_POLL_S, and without the PlacementGroupCleaner where Ray has no dashboard."""

    def __init__(self, train_loop_per_worker: Callable[[dict[str, Any]], None], *, job: Any,
                 process_group: bool = True, **kwargs: Any) -> None:
        kwargs["train_loop_config"] = {"job": pickle.dumps(job)}
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", CONTROLLER_POLL_S)  # read by the controller
        if process_group:
            super().__init__(train_loop_per_worker, **kwargs)
        else:
            DataParallelTrainer.__init__(self, train_loop_per_worker, backend_config=BackendConfig(), **kwargs)

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if has_dashboard():
            return callbacks
        return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]
