"""pipelines/trainer.py: Ray Train's TorchTrainer without the PlacementGroupCleaner where Ray has no dashboard."""

from __future__ import annotations

import pytest
from ray.train import ScalingConfig
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

from muxrec.pipelines import trainer


def _kinds(t: trainer.TorchTrainer) -> set[type]:
    return {type(c) for c in t._create_default_callbacks()}


def test_the_cleaner_is_left_out_without_a_dashboard_and_kept_with_one(monkeypatch: pytest.MonkeyPatch) -> None:
    t = trainer.TorchTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=1))
    assert not trainer.has_dashboard()  # this process has no Ray, so no dashboard either
    without = _kinds(t)
    assert PlacementGroupCleanerCallback not in without and without  # the other default callbacks stay
    monkeypatch.setattr(trainer, "has_dashboard", lambda: True)
    assert _kinds(t) == without | {PlacementGroupCleanerCallback}
