"""The shared tower + head block: head width from the tasks, the model config's flat fields, MLP weights."""

from __future__ import annotations

import pytest
import torch

from muxrec.models.deepfm import DeepFMConfig
from muxrec.models.din import DINConfig
from muxrec.models.layers.mlp import MLP
from muxrec.models.layers.tower import Tower, TowerConfig


def test_head_has_one_logit_per_task_and_no_head_leaves_the_trunk():
    cfg = TowerConfig((16, 8), dropout=0.1, batch_norm=True, activation="gelu")
    x = torch.randn(5, 12)  # (B, in)
    for tasks in (1, 3):
        tower = Tower(12, cfg, num_tasks=tasks)
        assert tower(x).shape == (5, tasks) and tower.out_dim == tasks
    trunk = Tower(12, cfg, num_tasks=None)
    assert trunk(x).shape == (5, 8) and trunk.out_dim == 8
    kinds = [type(m).__name__ for m in Tower(12, cfg, 2).net]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Dropout"] * 2 + ["Linear"]


def test_same_parameters_as_the_mlp_it_replaced():
    """Weights published before the tower existed (an MLP with out_dim=1) load into it unchanged."""
    cfg = TowerConfig((16, 8), dropout=0.2)
    torch.manual_seed(0)
    old = MLP(12, cfg.hidden_units, out_dim=1, dropout=cfg.dropout)
    new = Tower(12, cfg, num_tasks=1)
    new.load_state_dict(old.state_dict())  # strict: same names and shapes
    x = torch.randn(4, 12)
    torch.testing.assert_close(new.eval()(x), old.eval()(x))


def test_config_reads_the_flat_fields_of_a_model_config():
    deepfm = DeepFMConfig(hidden_units=(32,), dropout=0.3, batch_norm=True, activation="silu")
    assert TowerConfig.of(deepfm) == TowerConfig((32,), 0.3, True, "silu")
    din = DINConfig()  # no batch_norm field: off
    assert TowerConfig.of(din) == TowerConfig(din.hidden_units, din.dropout, False, "dice")
    with pytest.raises(ValueError, match="dropout must be in"):
        TowerConfig((8,), dropout=1.0)
    with pytest.raises(ValueError, match="hidden_units must be a list of positive integers"):
        TowerConfig((8, 0))
