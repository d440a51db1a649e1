"""`muxrec bench embedding` on a small synthetic set: how each method meets a budget, and the report."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from muxrec.benchmarks.embedding import bench_embedding, budget_spec, mixed_blocks, prune_keep, qr_buckets, winners
from muxrec.errors import ConfigError
from muxrec.spec import FeatureKind

from tests.conftest import CONFIGS
from tests.helpers import synthetic_spec


@pytest.mark.parametrize("rows, target", [(1683, 420), (1683, 105), (944, 59), (1683, 26), (62, 4)])
def test_qr_buckets_fit_the_target_or_take_the_smallest_table(rows, target):
    m = qr_buckets(rows, target)
    size = math.ceil(rows / m) + m
    smallest = min(math.ceil(rows / k) + k for k in range(2, rows))
    assert 2 <= m < rows
    assert size <= target or size == smallest
    if size <= target:  # no m gives a larger table that still fits
        assert all(math.ceil(rows / k) + k > target or math.ceil(rows / k) + k <= size for k in range(2, rows))
    assert qr_buckets(4, 2) is None


@pytest.mark.parametrize("budget, dim", [(1 / 4, 16), (1 / 16, 16), (1 / 4, 32), (1 / 2, 8)])
def test_mixed_blocks_weigh_the_budget(budget, dim):
    blocks = mixed_blocks(budget, dim)
    weight, start = 0.0, 0.0
    for end, d in blocks:
        weight, start = weight + (end - start) * d, end
    print(f"budget {budget:g}, d {dim}: blocks {blocks}, {weight / dim:.3f} of the rows' floats")
    assert weight / dim == pytest.approx(budget, abs=1e-3) and blocks[-1][0] == 1.0


def test_each_method_shrinks_the_own_tables_to_the_budget():
    spec = synthetic_spec(rows=2000)
    rows = {"user_id": 900, "site": 41, "tags": 30, "item": 500, "title": 513, "region": 9}
    own = [f.name for f in spec.features if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.MULTI_CATEGORICAL)
           and f.table is None]
    rows.update({n: rows.get(n, 20) for n in own})
    hashed = budget_spec(spec, rows, "hash", 1 / 4)
    assert hashed.feature("user_id").hash_buckets == 225 - 1 and hashed.feature("item_id").table == "item"
    assert hashed.tables["item"].hash_buckets == 125 - 1  # the shared table too, still read by the history
    assert hashed.feature("title").hash_buckets == spec.feature("title").hash_buckets  # text is left alone
    unified = budget_spec(spec, rows, "unified", 1 / 4)
    assert unified.tables["unified"].multiplex and all(unified.feature(n).table == "unified" for n in own)
    assert unified.tables["unified"].hash_buckets + 1 == round(sum(rows[n] for n in own) / 4)
    assert not unified.tables["item"].multiplex and unified.tables["item"].hash_buckets == 125 - 1
    qr = budget_spec(spec, rows, "qr", 1 / 4)
    m = qr.feature("user_id").compression.buckets
    assert math.ceil(900 / m) + m <= 225
    assert qr.tables["item"].compression.method == "qr"
    assert budget_spec(spec, rows, "int4", 1).tables["item"].quantize == "int4"
    nested = budget_spec(spec, rows, "matryoshka", 1 / 4, dim=16).feature("user_id").compression
    assert (nested.dims, nested.serve_dim) == ((4, 8), 4)
    pruned = budget_spec(spec, rows, "prune", 1 / 4, dim=16).feature("user_id").compression
    assert (pruned.method, pruned.keep) == ("prune", prune_keep(1 / 4, 16))
    assert pruned.keep * 16 * (4 + 1) + 4 == pytest.approx(16 * 4 / 4)  # a row's sparse bytes: 1/4 of dense
    assert prune_keep(1 / 16, 16) is None and budget_spec(spec, rows, "prune", 1 / 16).feature("user_id").compression is None
    mixed = budget_spec(spec, rows, "mixed", 1 / 4, dim=16)
    assert mixed.feature("user_id").compression.blocks == ((0.1429, 16), (1.0, 2))
    with pytest.raises(ConfigError, match="unknown method 'zip'"):
        budget_spec(spec, rows, "zip", 1 / 4)
    quantized = budget_spec(spec, rows, "unified+int4", 1 / 4)
    assert quantized.tables["unified"].quantize == "int4" and quantized.feature("user_id").quantize is None
    assert budget_spec(spec, rows, "int8", 1 / 4).feature("user_id").quantize == "int8"
    assert budget_spec(spec, rows, "int8", 1 / 4).feature("user_id").hash_buckets is None


def test_the_best_method_at_a_budget_is_chosen_among_rows_whose_bytes_fit_it():
    def row(method, budget, nbytes, auc):
        return {"model": "m", "method": method, "budget": budget, "serve_bytes": nbytes, "test_auc": auc}

    rows = [row("full", 1.0, 1000, 0.78), row("int8", 1.0, 310, 0.7799), row("qr", 0.25, 600, 0.79),
            row("hash", 0.25, 250, 0.70), row("unified", 0.0625, 62, 0.69)]
    best = winners(rows)
    assert best[("m", 1.0)]["method"] == "qr"  # 0.6 of the bytes: it fits budget 1 too
    assert best[("m", 0.25)]["method"] == "hash"  # qr overshot 0.25, int8 (0.31) too: not counted there
    assert best[("m", 0.0625)]["method"] == "unified"


def test_bench_embedding_writes_rows_a_table_and_a_plot(tmp_path):
    configs = tmp_path / "configs"
    (configs / "models").mkdir(parents=True)
    data = synthetic_spec(rows=1500).model_dump(mode="json", exclude_defaults=True)
    (configs / "small.yaml").write_text(yaml.safe_dump(data))
    model = yaml.safe_load((CONFIGS / "models" / "deepfm.yaml").read_text())
    model["model"].update(embedding_dim=4, hidden_units=[16])
    model["train"].update(epochs=2, batch_size=256)
    (configs / "models" / "deepfm.yaml").write_text(yaml.safe_dump(model))
    out = tmp_path / "docs"
    rows = list(bench_embedding("small", ["deepfm"], [1], configs, out,
                                methods=["hash", "unified", "qr", "int8", "hash+int4", "mixed", "prune"], budgets=[1.0, 0.25]))
    assert [(r["method"], r["budget"]) for r in rows] == [("full", 1.0), ("int8", 1.0), ("hash", 0.25),
                                                          ("unified", 0.25), ("qr", 0.25), ("hash+int4", 0.25),
                                                          ("mixed", 0.25)]  # no prune: see below
    # D = 4 here: a pruned row's offset (4 bytes) alone weighs 1/4 of a dense row (16), so prune has no run.
    assert prune_keep(0.25, 4) is None
    full, int8, hashed, hashed4 = rows[0], rows[1], rows[2], rows[5]
    for r in rows[1:]:
        assert r["serve_bytes"] < full["serve_bytes"] and 0.4 < r["test_auc"] < 1.0
    for r in rows:  # in memory: the tables as served and the rest of the model (MLP, numeric vectors)
        assert r["resident_bytes"] > r["serve_bytes"]
    for r in (full, *rows[2:5]):  # float32 when served: training holds 3 copies
        assert r["train_bytes"] == 3 * r["serve_bytes"]
    assert int8["train_bytes"] == full["train_bytes"] and int8["stored_rows"] == full["stored_rows"]
    assert hashed4["stored_rows"] == hashed["stored_rows"] and hashed4["serve_bytes"] < hashed["serve_bytes"]
    report = (out / "embedding-small.md").read_text()
    best, every = report.split("## Every run")
    # The shared item table and the text table are not shrunk here, so no method reaches 0.25 of all bytes.
    assert every.count("| deepfm |") == 7 and best.count("| deepfm |") == 1 and "| deepfm | 1 | " in best
    assert (out / "embedding-small.png").stat().st_size > 10_000
    saved = json.loads((out / "results" / "embedding-small-deepfm-qr-0.25.json").read_text())
    assert saved["test_auc"] == rows[4]["test_auc"]
    with pytest.raises(ConfigError, match="budgets are fractions"):
        next(bench_embedding("small", ["deepfm"], [1], configs, None, budgets=[2.0]))
