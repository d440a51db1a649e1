"""Ray Train's `TorchTrainer` as muxrec runs it: without a placement-group cleaner that cannot work.

For every run, Ray Train 2.x starts a detached `PlacementGroupCleaner` actor that asks the state API
(served by the Ray dashboard) every second whether the run's controller is still alive, waiting up to
10 s for an answer, so that it can remove the run's placement group if the controller dies. Without
a dashboard every question waits out those 10 s, and at the end of the run the controller waits for
the cleaner to stop: 12 s added to every `muxrec train`, `muxrec encoders align` and every test that
trains (measured: a 1.5 s epoch on 13k rows took 25 s from `fit()` to its result; the controller log
ends in "Failed to stop PlacementGroupCleaner gracefully" 12 s after the workers shut down).

The Ray that muxrec starts on one machine has no dashboard (muxrec.ray_env), so there the cleaner
cannot do its job and `TorchTrainer` below leaves it out. A placement group still goes when the job
that made it ends; what is lost is its removal when a controller dies inside a driver that lives on.
On a Ray with a dashboard (a cluster address) the cleaner stays.
"""

from __future__ import annotations

import ray
from ray.train.torch import TorchTrainer as RayTorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback


def has_dashboard() -> bool:
    """Whether the Ray this process is connected to serves a dashboard (and so the state API)."""
    node = getattr(ray._private.worker.global_worker, "node", None)
    return bool(getattr(node, "webui_url", ""))


class TorchTrainer(RayTorchTrainer):
    """`ray.train.torch.TorchTrainer`, without the PlacementGroupCleaner where Ray has no dashboard."""

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if has_dashboard():
            return callbacks
        return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]
