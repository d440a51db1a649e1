"""Every model of the zoo learns the synthetic set's planted interactions better than LR.

The synthetic generator drives clicks with pairwise and third-order interactions that a linear model
cannot represent, so each interaction model must clearly beat LR on validation AUC after a short run.
Models are shrunk (embedding 8, MLPs 64-32) and trained in-process with the same epoch loop the Ray
Train workers run (muxrec.pipelines.loop); a model stops as soon as it is clearly ahead.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from muxrec.config import TrainConfig
from muxrec.models import EncodedRows, build_model
from muxrec.pipelines.loop import evaluate_rows, make_optimizer, train_epoch

from tests.helpers import fitted, inputs_for, model_config_files, small_model, synthetic_raw, synthetic_spec

MODEL_FILES = [name for name in model_config_files() if name != "lr"]
MARGIN = 0.025  # valid AUC above LR's best; the models reach 0.65-0.80 here, LR about 0.63 (AutoInt, the weakest, +0.03)
MAX_EPOCHS = 12  # AutoInt climbs slowly at first (it plateaus for a few epochs at this lr)
TRAIN = TrainConfig(epochs=MAX_EPOCHS, batch_size=512, lr=5e-3, seed=1)


@pytest.fixture(scope="module")
def encoded():
    spec = synthetic_spec(rows=30_000, seed=11, labels=("click",))  # the planted interactions drive clicks
    vocab, tables = fitted(spec, synthetic_raw(spec))
    return inputs_for(spec, vocab), tables


@pytest.fixture(scope="module")
def data(encoded):
    inputs, tables = encoded
    return inputs, EncodedRows(tables["train"], inputs), EncodedRows(tables["valid"], inputs)


def _fit(name: str, data, stop_above: float = 1.0) -> list[float]:
    """Validation AUC after each epoch, stopping once it passes `stop_above`."""
    inputs, train_rows, valid_rows = data
    architecture, cfg = small_model(name)
    torch.manual_seed(TRAIN.seed)
    model = build_model(architecture, cfg, inputs)
    optimizer = make_optimizer(model, TRAIN)
    aucs = []
    for epoch in range(MAX_EPOCHS):
        train_epoch(model, model, train_rows, TRAIN, epoch, optimizer)
        aucs.append(evaluate_rows(model, valid_rows, inputs, TRAIN.eval_batch_size)["auc"])
        if aucs[-1] > stop_above:
            break
    return aucs


@pytest.fixture(scope="module")
def lr_auc(data) -> float:
    return max(_fit("lr", data))


@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_beats_lr_on_planted_interactions(name, data, lr_auc):
    aucs = _fit(name, data, stop_above=lr_auc + MARGIN)
    assert max(aucs) > lr_auc + MARGIN, f"{name}: valid AUC per epoch {[round(a, 4) for a in aucs]}, LR {lr_auc:.4f}"


def _blank(table: pa.Table, column: str) -> pa.Table:
    """`column` emptied (a sequence) or set to the out-of-vocabulary id 0 (a categorical) on every row."""
    index = table.schema.get_field_index(column)
    kind = table.schema.field(index).type
    value = [] if pa.types.is_list(kind) else 0
    return table.set_column(index, column, pa.array([value] * table.num_rows, kind))


def test_din_finds_the_signal_in_behaviour_histories(encoded):
    """With user ids hidden, the history is DIN's only clue to a user's topics: emptying it costs AUC."""
    inputs, tables = encoded

    def rows(*blank: str):
        out = []
        for split in ("train", "valid"):
            table = tables[split]
            for column in blank:
                table = _blank(table, column)
            out.append(EncodedRows(table, inputs))
        return (inputs, *out)

    # The run without history goes its full length; the one with it stops once clearly ahead (the
    # assertion is true of an early-stopped run exactly when it is true of the full one).
    without = max(_fit("din", rows("user_id", "history")))
    with_history = max(_fit("din", rows("user_id"), stop_above=without + 0.02))
    assert with_history > without + 0.02, (with_history, without)
