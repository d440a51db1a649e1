"""pipelines/trainer.py: Ray Train's TorchTrainer with a light controller and without the PlacementGroupCleaner
where Ray has no dashboard."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ray.train import ScalingConfig
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

from muxrec.pipelines import trainer


def _kinds(t: trainer.TorchTrainer) -> set[type]:
    return {type(c) for c in t._create_default_callbacks()}


def test_the_cleaner_is_left_out_without_a_dashboard_and_kept_with_one(monkeypatch: pytest.MonkeyPatch) -> None:
    t = trainer.TorchTrainer(lambda config: None, job=None, scaling_config=ScalingConfig(num_workers=1))
    assert not trainer.has_dashboard()  # this process has no Ray, so no dashboard either
    without = _kinds(t)
    assert PlacementGroupCleanerCallback not in without and without  # the other default callbacks stay
    monkeypatch.setattr(trainer, "has_dashboard", lambda: True)
    assert _kinds(t) == without | {PlacementGroupCleanerCallback}


def test_the_controller_polls_its_workers_often_unless_the_user_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    trainer.TorchTrainer(lambda config: None, job=None, scaling_config=ScalingConfig(num_workers=1))
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == trainer.CONTROLLER_POLL_S
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    trainer.TorchTrainer(lambda config: None, job=None, scaling_config=ScalingConfig(num_workers=1))
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"


def _what_the_controller_imports(t: trainer.TorchTrainer) -> set[str]:
    """The top-level packages a fresh process imports to unpickle what Ray Train's controller actor is
    given (the run context and the callbacks), beyond those `import ray` brings."""
    import ray.cloudpickle

    given = ray.cloudpickle.dumps((t.train_run_context, t._create_default_callbacks()))
    probe = ("import pickle, sys; import ray; before = set(sys.modules); pickle.loads(sys.stdin.buffer.read()); "
             "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    out = subprocess.run([sys.executable, "-c", probe], input=given, capture_output=True, check=True)
    return set(out.stdout.decode().split())


def test_the_controller_needs_neither_muxrec_nor_torch_for_a_one_worker_run() -> None:
    from muxrec.config import TrainConfig
    from muxrec.models.deepfm import DeepFMConfig
    from muxrec.pipelines.train import TrainJob

    job = TrainJob("/nowhere", "deepfm", DeepFMConfig(embedding_dim=4), TrainConfig(epochs=2, seed=5))
    one = trainer.TorchTrainer(lambda config: None, job=job, process_group=False,
                               scaling_config=ScalingConfig(num_workers=1))
    assert trainer.job_of(one.train_loop_config) == job  # the worker gets the job back whole
    assert not {"muxrec", "torch", "torchrec"} & _what_the_controller_imports(one)
    # With a process group (DDP, sharding) the controller runs torch's backend, so it imports torch.
    ddp = trainer.TorchTrainer(lambda config: None, job=job, scaling_config=ScalingConfig(num_workers=2))
    assert {"torch", "muxrec"} & _what_the_controller_imports(ddp) == {"torch"}
