"""TrainJob: typed configs from the boundary on, a resume fingerprint that means the same as before."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import pytest

from muxrec.config import TrainConfig
from muxrec.models import make_config
from muxrec.models.deepfm import DeepFMConfig
from muxrec.pipelines.train import TrainJob


def _job(**model):
    return TrainJob("/prepared", "deepfm", make_config("deepfm", model), TrainConfig(epochs=3))


def test_it_carries_the_typed_config_and_refuses_a_mapping():
    job = _job(hidden_units=[8])
    assert job.model_config == DeepFMConfig(hidden_units=(8,))
    with pytest.raises(TypeError, match="model_config must be a DeepFMConfig, got dict"):
        TrainJob("/prepared", "deepfm", {"hidden_units": [8]})
    with pytest.raises(TypeError, match="must be a DeepFMConfig, got DCNv2Config"):
        TrainJob("/prepared", "deepfm", make_config("dcn_v2", {}))
    assert pickle.loads(pickle.dumps({"job": job}))["job"] == job  # how it reaches the Ray workers


def test_fingerprint_follows_what_is_learned_not_how_it_runs():
    job = _job(hidden_units=[8])
    spec = "spec-sha"
    # The same config however it was written (defaults spelled out or not, a list or a tuple).
    assert _job(hidden_units=(8,), dropout=0.2).fingerprint(spec) == job.fingerprint(spec)
    longer = replace(job, train=replace(job.train, epochs=9, num_workers=2, patience=4), threads=3)
    assert longer.fingerprint(spec) == job.fingerprint(spec)  # a resumed run may run longer, on more workers
    assert _job(hidden_units=[16]).fingerprint(spec) != job.fingerprint(spec)
    assert replace(job, train=replace(job.train, lr=2e-3)).fingerprint(spec) != job.fingerprint(spec)
    assert job.fingerprint("another-spec") != job.fingerprint(spec)


def test_to_dict_is_json_that_reads_back():
    job = _job(hidden_units=[8], activation="gelu")
    data = json.loads(json.dumps(job.to_dict()))
    assert data["model_config"]["hidden_units"] == [8]
    assert make_config("deepfm", data["model_config"]) == job.model_config
