"""Large tables learn from sparse gradients with lazy Adam: the rows a batch looked up, and only those."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from muxrec.config import TrainConfig
from muxrec.pipelines.loop import Objective, Optimizers, make_optimizer, table_parameters
from muxrec.pipelines.sparse import LazyAdam, use_sparse_gradients
from tests.helpers import build, tiny_rows


def _steps(optimizer, weight, grads):
    for grad in grads:
        optimizer.zero_grad()
        weight.grad = grad.clone()
        optimizer.step()


def test_it_is_adam_where_every_row_is_touched():
    torch.manual_seed(0)
    grads = [torch.randn(6, 3) for _ in range(5)]
    for decay in (0.0, 0.1):
        dense, lazy, from_sparse = (nn.Parameter(torch.ones(6, 3)) for _ in range(3))
        _steps(torch.optim.Adam([dense], lr=0.01, weight_decay=decay), dense, grads)
        _steps(LazyAdam([lazy], lr=0.01, weight_decay=decay), lazy, grads)
        _steps(LazyAdam([from_sparse], lr=0.01, weight_decay=decay), from_sparse, [g.to_sparse(1) for g in grads])
        torch.testing.assert_close(lazy, dense, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(from_sparse, dense, rtol=1e-6, atol=1e-7)


def test_untouched_rows_and_their_moments_stay_as_they_are():
    torch.manual_seed(1)
    table = nn.Embedding(10, 4, sparse=True)
    before = table.weight.detach().clone()
    optimizer = LazyAdam(table.parameters(), lr=0.1)
    reference = nn.Parameter(before.clone())
    torch_lazy = torch.optim.SparseAdam([reference], lr=0.1)  # torch's lazy Adam (its eps sits elsewhere: ~1e-8 apart)
    ours = LazyAdam([reference_ours := nn.Parameter(before.clone())], lr=0.1)
    for ids in ([1, 2, 2], [2, 5], [1, 7, 7, 7]):
        optimizer.zero_grad()
        table(torch.tensor(ids)).pow(2).sum().backward()
        assert table.weight.grad.is_sparse
        grad = table.weight.grad
        optimizer.step()
        _steps(torch_lazy, reference, [grad])
        _steps(ours, reference_ours, [grad])
    moved = (table.weight.detach() != before).any(dim=1)
    assert moved.nonzero().squeeze(1).tolist() == [1, 2, 5, 7]
    assert (optimizer.state[table.weight]["exp_avg"][[0, 3, 4, 6, 8, 9]] == 0).all()
    torch.testing.assert_close(reference_ours, reference, rtol=1e-5, atol=1e-6)


def test_make_optimizer_switches_only_large_tables_to_sparse_gradients():
    inputs, rows = tiny_rows(300)
    model = build("deepfm", {"embedding_dim": 8, "hidden_units": [8]}, inputs)
    sizes = sorted(p.shape[0] for p in table_parameters(model))
    limit = sizes[len(sizes) // 2]  # about half the tables are larger
    large = {id(p) for p in table_parameters(model) if p.shape[0] > limit}
    assert large and len(large) < len(sizes)
    optimizer = make_optimizer(model, TrainConfig(sparse_table_rows=limit, embedding_l2=1e-4))
    assert isinstance(optimizer, Optimizers)
    adam, lazy = optimizer.optimizers
    assert {id(p) for p in lazy.param_groups[0]["params"]} == large and lazy.param_groups[0]["weight_decay"] == 1e-4
    assert not large & {id(p) for g in adam.param_groups for p in g["params"]}

    batch = next(iter(rows.batches(64)))
    Objective(inputs, {t: 0.5 for t in inputs.tasks})(model(batch), batch.labels).backward()
    for p in table_parameters(model):
        assert p.grad.is_sparse == (id(p) in large)
    before = {id(p): p.detach().clone() for p in table_parameters(model)}
    optimizer.step()
    for p in table_parameters(model):
        if p.grad.is_sparse:  # a large table: rows the batch did not look up stayed where they were
            looked_up = set(p.grad.coalesce().indices()[0].tolist())
            moved = set((p.detach() != before[id(p)]).any(dim=1).nonzero().squeeze(1).tolist())
            assert moved and moved <= looked_up

    buffer = io.BytesIO()  # the checkpoint's round trip, loaded without executing code
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    optimizer.load_state_dict(torch.load(buffer, weights_only=True))


@pytest.mark.parametrize("cfg", [TrainConfig(sparse_table_rows=0), TrainConfig(embedding_optimizer="adagrad"),
                                 TrainConfig(sharding="data_parallel")])
def test_tables_stay_dense_when_off_or_not_under_adam(cfg):
    inputs, _ = tiny_rows(300)
    model = build("deepfm", {"embedding_dim": 8, "hidden_units": [8]}, inputs)
    make_optimizer(model, TrainConfig(sparse_table_rows=0) if cfg.sharding != "none" else cfg)
    assert not cfg.lazy_tables
    assert not any(getattr(m, "sparse", False) for m in model.modules() if isinstance(m, (nn.EmbeddingBag, nn.Embedding)))


def test_use_sparse_gradients_and_config_bounds():
    model = nn.ModuleDict({"big": nn.EmbeddingBag(50, 2), "small": nn.Embedding(5, 2)})
    assert use_sparse_gradients(model, 10) == [model["big"].weight]
    assert model["big"].sparse and not model["small"].sparse
    with pytest.raises(ValueError, match="sparse_table_rows must be >= 0"):
        TrainConfig(sparse_table_rows=-1)
    with pytest.raises(ValueError, match="LazyAdam: invalid lr"):
        LazyAdam(model.parameters(), lr=0.0)
