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


def test_fingerprint_follows_the_tables_optimizer_not_the_sharding():
    spec = "spec-sha"
    job = _job(hidden_units=[8])

    def with_train(**train):
        return replace(job, train=replace(job.train, **train)).fingerprint(spec)

    # A run may resume with another sharding (its checkpoints are unsharded) but not another optimizer.
    assert with_train(sharding="data_parallel") == job.fingerprint(spec)  # auto = adam, as unsharded
    assert with_train(sharding="table_wise") == with_train(sharding="row_wise", embedding_optimizer="rowwise_adagrad") \
        == with_train(embedding_optimizer="rowwise_adagrad")
    assert with_train(sharding="table_wise") != job.fingerprint(spec)
    assert with_train(embedding_lr=0.05) != job.fingerprint(spec)


def test_tables_get_their_own_optimizer_and_learning_rate():
    import torch
    from torchrec.optim import RowWiseAdagrad

    from muxrec.pipelines.loop import Optimizers, make_optimizer, table_parameters
    from tests.helpers import build, tiny_rows

    inputs, _ = tiny_rows(300)
    model = build("deepfm", {"embedding_dim": 8, "hidden_units": [8]}, inputs)
    tables = {id(p) for p in table_parameters(model)}
    adam = make_optimizer(model, TrainConfig(embedding_lr=0.05))
    assert isinstance(adam, torch.optim.Adam) and [g["lr"] for g in adam.param_groups] == [0.05, 1e-3]
    split = make_optimizer(model, TrainConfig(embedding_optimizer="rowwise_adagrad", embedding_lr=0.05))
    assert isinstance(split, Optimizers)
    dense, rowwise = split.optimizers
    assert isinstance(rowwise, RowWiseAdagrad) and rowwise.param_groups[0]["lr"] == 0.05
    assert make_optimizer(model, TrainConfig(embedding_optimizer="adagrad")).optimizers[1].param_groups[0]["lr"] == 0.01
    assert {id(p) for p in rowwise.param_groups[0]["params"]} == tables
    assert not tables & {id(p) for g in dense.param_groups for p in g["params"]}
    state = split.state_dict()
    split.load_state_dict(state)  # a checkpoint's round trip


def test_to_dict_is_json_that_reads_back():
    job = _job(hidden_units=[8], activation="gelu")
    data = json.loads(json.dumps(job.to_dict()))
    assert data["model_config"]["hidden_units"] == [8]
    assert make_config("deepfm", data["model_config"]) == job.model_config
