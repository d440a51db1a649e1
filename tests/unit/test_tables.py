"""Embedding tables behind one interface (models/layers/tables.py): each method's shapes, distinct
rows, byte formula, pooling, and the spec's refusals."""

from __future__ import annotations

import math

import pytest
import torch

from muxrec.errors import SpecError
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.artifacts import ArtifactRegistry
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.models.layers.tables import (DenseTable, MatryoshkaTable, MixedDimTable, PrefixTable, PrunedTable, QRTable,
                                         QuantizedTable, SparseTable, StandaloneTable)
from muxrec.models.serialization import load_model, model_files, serving_copy
from muxrec.spec import ModelInputs, load_spec, parse_spec

from tests.conftest import CONFIGS
from tests.helpers import fitted, qr_spec, quantized_spec, synthetic_raw, synthetic_spec, tiny_spec


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def test_qr_rows_are_distinct_and_weigh_what_the_formula_says():
    torch.manual_seed(0)
    table = QRTable(rows=1000, dim=8, buckets=32, init_std=0.1)
    ids = torch.arange(1000)
    vectors = table(ids)  # (1000, 8)
    assert vectors.shape == (1000, 8) and table(ids.reshape(10, 100)).shape == (10, 100, 8)
    torch.testing.assert_close(vectors[77], table.quotient[77 // 32] * table.remainder[77 % 32])
    distinct = torch.unique(vectors, dim=0).shape[0]
    print(f"QR 1000 rows from {math.ceil(1000 / 32)} + 32: {distinct} distinct vectors")
    assert distinct == 1000  # unlike hashing into 63 rows, no two ids share a vector
    assert table.num_bytes() == (math.ceil(1000 / 32) + 32) * 8 * 4 == _param_bytes(table)
    dense = DenseTable(torch.nn.Parameter(torch.zeros(1000, 8)))
    assert dense.num_bytes() == 1000 * 8 * 4 and dense(ids[:3]).shape == (3, 8)


def test_mixed_dim_rows_are_full_width_when_frequent_and_projected_when_not():
    torch.manual_seed(0)
    table = MixedDimTable(rows=100, dim=8, blocks=((0.1, 8), (0.5, 4), (1.0, 2)), init_std=0.1)
    assert [tuple(b.shape) for b in table.blocks] == [(10, 8), (40, 4), (50, 2)]
    ids = torch.tensor([[0, 9], [10, 99]])
    out = table(ids)  # (2, 2, 8)
    assert out.shape == (2, 2, 8)
    torch.testing.assert_close(out[0, 1], table.blocks[0][9])  # a frequent row, as stored
    torch.testing.assert_close(out[1, 0], table.projections[1](table.blocks[1][0]))
    torch.testing.assert_close(out[1, 1], table.projections[2](table.blocks[2][49]))
    assert table.num_bytes() == 4 * (10 * 8 + 40 * 4 + 4 * 8 + 50 * 2 + 2 * 8) == _param_bytes(table)
    out.sum().backward()
    assert all(b.grad is not None for b in table.blocks)
    first_order = MixedDimTable(rows=100, dim=1, blocks=((0.1, 8), (1.0, 2)), init_std=0.1)
    assert first_order.num_bytes() == 100 * 4  # every block cut to one value a row, nothing to project


def test_compressed_tables_pool_like_dense_ones_and_count_their_bytes():
    spec = qr_spec(rows=800)
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    assert inputs.pooled[-5:] == ("user_id", "item_id", "site", "region", "tags")  # compressed tables' keys last
    torch.manual_seed(0)
    emb = FeatureEmbedding(inputs, dim=4, init_std=0.1)
    batch = EncodedRows(encoded["train"], inputs).take(torch.arange(16))
    fields = emb(batch)  # (B, F, D)
    tags = encoded["train"].column("tags").to_pylist()[:16]
    table = emb.table("tags")
    for row, ids in enumerate(tags):
        expected = table(torch.tensor(ids)).mean(0) if ids else torch.zeros(4)
        torch.testing.assert_close(fields[row, inputs.fields.index("tags")], expected)
    user = torch.tensor(encoded["train"].column("user_id").to_pylist()[:16])
    torch.testing.assert_close(fields[:, inputs.fields.index("user_id")], emb.table("user_id")(user))
    table_bytes = sum(_param_bytes(m) for m in emb.compressed.values()) + \
        sum(w.numel() * 4 for w in emb.table_weights().values())
    assert emb.num_bytes() == table_bytes
    print(f"tables: {emb.num_bytes():,} bytes; dense would be "
          f"{sum(t.num_embeddings for t in inputs.tables) * 4 * 4:,}")


def test_a_spec_asking_for_impossible_compression_is_refused_in_one_line():
    with pytest.raises(SpecError, match="does not apply to text features"):
        tiny_spec(features=[{"name": "t", "kind": "text", "max_len": 4, "hash_buckets": 16,
                             "compression": {"method": "qr", "buckets": 4}}])
    with pytest.raises(SpecError, match=r"set \['compression'\] on the table, not the feature"):
        tiny_spec(tables={"s": {}}, features=[{"name": "a", "kind": "categorical", "table": "s",
                                               "compression": {"method": "qr", "buckets": 4}}])
    with pytest.raises(SpecError, match="buckets: Input should be greater than or equal to 2"):
        tiny_spec(features=[{"name": "a", "kind": "categorical", "compression": {"method": "qr", "buckets": 1}}])
    with pytest.raises(SpecError, match="`compression` does not apply to a numeric feature"):
        tiny_spec(features=[{"name": "a", "kind": "numeric", "compression": {"method": "qr", "buckets": 4}}])
    with pytest.raises(SpecError, match="`quantize` applies to dense tables; drop `compression` or `quantize`"):
        tiny_spec(features=[{"name": "a", "kind": "categorical", "quantize": "int8",
                             "compression": {"method": "qr", "buckets": 4}}])
    with pytest.raises(SpecError, match="`quantize` applies to dense tables"):
        tiny_spec(tables={"s": {"quantize": "int4", "compression": {"method": "qr", "buckets": 4}}},
                  features=[{"name": "a", "kind": "categorical", "table": "s"}])
    with pytest.raises(SpecError, match=r"quantize: Input should be 'int8' or 'int4'"):
        tiny_spec(features=[{"name": "a", "kind": "categorical", "quantize": "int2"}])
    for compression, message in [
        ({"method": "mixed_dim", "blocks": [[0.5, 4], [0.9, 2]]}, "the last at 1"),
        ({"method": "mixed_dim", "blocks": [[0.5, 2], [1.0, 4]]}, "do not grow"),
        ({"method": "mixed_dim", "buckets": 4}, "`buckets` does not apply to mixed_dim compression"),
        ({"method": "qr"}, "`buckets` is required by qr compression"),
    ]:
        with pytest.raises(SpecError, match=message):
            tiny_spec(features=[{"name": "a", "kind": "categorical", "compression": compression}])
    with pytest.raises(SpecError, match="mixed_dim needs a fitted vocabulary"):
        tiny_spec(features=[{"name": "a", "kind": "categorical", "hash_buckets": 100,
                             "compression": {"method": "mixed_dim", "blocks": [[1.0, 4]]}}])
    spec = tiny_spec(features=[{"name": "a", "kind": "categorical", "compression": {"method": "qr", "buckets": 64}}])
    with pytest.raises(SpecError, match=r"table 'a': qr buckets 64 >= its 20 rows, nothing to compress"):
        ModelInputs.from_spec(spec, {"a": 20})


def test_older_specs_keep_their_fingerprint_and_compression_changes_it():
    plain = load_spec(CONFIGS / "synthetic.yaml")
    assert parse_spec(plain.model_dump(mode="json")).fingerprint() == plain.fingerprint()
    data = plain.model_dump(mode="json")
    data["tables"]["item"]["compression"] = {"method": "qr", "buckets": 8}
    assert parse_spec(data).fingerprint() != plain.fingerprint()
    data["labels"][1]["parent"] = None  # the spec as it was then (conversion's parent came later)
    # A compressed table keeps the fingerprint it had before `keep` and `ramp_steps` existed (computed then).
    qr = parse_spec(data).model_dump(mode="json")
    compression = qr["tables"]["item"]["compression"]
    assert (compression["keep"], compression["ramp_steps"]) == (None, None)
    assert parse_spec(data).fingerprint() == "8a888872ad69d989f6cc291ce18798e3e2842760a8a7dd2c0b331bce2da2ed92"


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_rows_are_within_half_a_step_and_weigh_the_formula(bits):
    torch.manual_seed(0)
    weight = torch.randn(300, 16) * 0.1
    table = QuantizedTable.from_float(weight, bits)
    ids = torch.arange(300)
    restored = table(ids)  # (300, 16)
    step = (weight.max(1).values - weight.min(1).values) / (2 ** bits - 1)  # (300,)
    error = (restored - weight).abs().max(1).values
    print(f"int{bits}: max error / step {float((error / step).max()):.3f}; "
          f"{table.num_bytes():,} bytes against {300 * 16 * 4:,} as float32")
    assert bool((error <= step * 0.5 + 1e-3 * weight.abs().max()).all())  # half a step, plus fp16 scale / bias
    assert table.num_bytes() == 300 * (16 * bits // 8 + 4) == table.packed.numel()
    assert table(ids.reshape(3, 100)).shape == (3, 100, 16)
    with pytest.raises(ValueError, match="whole number of bytes"):
        QuantizedTable(10, 3, 4)


def test_a_quantized_version_stores_and_serves_the_quantized_tables(tmp_path):
    spec = quantized_spec(rows=800)
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    torch.manual_seed(0)
    model = build_model("deepfm", make_config("deepfm", {"embedding_dim": 8, "hidden_units": [16]}), inputs)
    assert inputs.pooled[-2:] == ("user_id", "item_id")  # tables to quantize live outside the collection
    batch = EncodedRows(encoded["train"], inputs).take(torch.arange(64))
    logits = model(batch)  # (B, T)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels[:, :logits.shape[1]])
    loss.backward()
    assert model.embedding.compressed["user_id"].weight.grad.abs().sum() > 0  # trained as float32
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    served, quantized = serving_copy(model)
    assert quantized == {"user_id": "int8", "item": "int8"}
    assert isinstance(model.embedding.compressed["user_id"], StandaloneTable)  # the trained model is kept
    cfg = make_config("deepfm", {"embedding_dim": 8, "hidden_units": [16]})
    version = ArtifactRegistry(tmp_path).publish("q", model_files(model, "deepfm", cfg, spec, vocab))
    assert version.read_json("model.json")["served_as"] == quantized
    loaded = load_model(version)
    with torch.no_grad():
        exact, float_scores, reloaded = served(batch), model(batch), loaded.model(batch)
    assert torch.equal(reloaded, exact)
    gap = float((torch.sigmoid(exact) - torch.sigmoid(float_scores)).abs().max())
    print(f"int8 tables: largest probability change {gap:.2e}")
    assert 0 < gap < 1e-2
    emb = loaded.model.embedding
    assert isinstance(emb.table("item"), QuantizedTable) and isinstance(emb.table("user_id"), QuantizedTable)
    for name in quantized:  # d = 8: 8 + 4 bytes a row against 32
        assert emb.table(name).num_bytes() * 32 == model.embedding.table(name).num_bytes() * 12
    saved = emb.num_bytes() - model.embedding.num_bytes()
    assert saved == -sum(model.embedding.table(n).num_bytes() * 20 // 32 for n in quantized)


def test_matryoshka_trains_every_prefix_and_serves_the_cut_one():
    torch.manual_seed(0)
    table = MatryoshkaTable(rows=50, dim=8, dims=(2, 4), serve_dim=4, init_std=0.1)
    ids = torch.arange(50)
    widths = set()
    for _ in range(40):
        out = table(ids)  # (50, 8): zero past the width drawn for this call
        widths.add(int((out.abs().sum(0) > 0).sum()))
    assert widths == {2, 4, 8}
    table.eval()
    served = table(ids)
    assert bool((served[:, 4:] == 0).all()) and torch.equal(served[:, :4], table.weight[:, :4])
    cut = table.cut()
    assert torch.equal(cut(ids), served) and cut.num_bytes() == 50 * 4 * 4 == _param_bytes(cut)
    assert table.num_bytes() == 50 * 8 * 4


def test_a_matryoshka_version_keeps_only_the_served_prefix(tmp_path):
    data = synthetic_spec(rows=800).model_dump(mode="json", exclude_defaults=True)
    data["features"] = [{**f, "compression": {"method": "matryoshka", "dims": [2, 4], "serve_dim": 4}}
                        if f["name"] == "user_id" else f for f in data["features"]]
    spec = parse_spec(data)
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    cfg = make_config("deepfm", {"embedding_dim": 8, "hidden_units": [16]})
    torch.manual_seed(0)
    model = build_model("deepfm", cfg, inputs).eval()
    batch = EncodedRows(encoded["train"], inputs).take(torch.arange(32))
    version = ArtifactRegistry(tmp_path).publish("m", model_files(model, "deepfm", cfg, spec, vocab))
    assert version.read_json("model.json")["served_as"] == {"user_id": "prefix:4"}
    loaded = load_model(version)
    assert isinstance(loaded.model.embedding.table("user_id"), PrefixTable)
    with torch.no_grad():
        assert torch.equal(loaded.model(batch), model(batch))  # eval already read the 4-value prefix
    assert loaded.model.embedding.table("user_id").num_bytes() * 2 == model.embedding.table("user_id").num_bytes()
    for compression, message in [({"method": "matryoshka"}, "matryoshka needs `dims`"),
                                 ({"method": "matryoshka", "dims": [4, 2]}, "increasing widths"),
                                 ({"method": "matryoshka", "dims": [2, 4], "serve_dim": 3}, "not one of its trained dims"),
                                 ({"method": "qr", "buckets": 4, "serve_dim": 2}, "do not apply to qr")]:
        with pytest.raises(SpecError, match=message):
            tiny_spec(features=[{"name": "a", "kind": "categorical", "compression": compression}])


def test_pruning_follows_its_schedule_and_serves_the_kept_values_sparse():
    torch.manual_seed(0)
    table = PrunedTable(rows=100, dim=8, keep=0.25, ramp_steps=40, init_std=0.1)
    ids = torch.randint(100, (5, 3))
    kept = []
    for _ in range(40):
        table(ids)  # training: one step of the schedule per call
        kept.append(float(table.mask.float().mean()))
    assert kept[19] == pytest.approx(1 - table.sparsity(20), abs=1 / 800)  # renewed every 2 steps
    assert 1 - table.sparsity(20) > kept[-1] == pytest.approx(0.25, abs=1 / 800)
    assert torch.equal(table.weight != 0, table.mask)  # pruned values are zero, not only masked
    table.eval()
    sparse = table.sparse()
    assert torch.equal(sparse(ids), table(ids))  # (5, 3, 8): the kept values, the rest zeros
    assert torch.equal(sparse(torch.arange(100)), table.weight * table.mask)
    nnz = SparseTable.kept_values(100, 8, 0.25)
    assert sparse.num_bytes() == nnz * (4 + 1) + 101 * 4 == sum(b.numel() * b.element_size() for b in sparse.buffers())
    assert sparse.num_bytes() < table.num_bytes() / 2
    assert table.num_bytes() == sum(t.numel() * t.element_size() for t in (table.weight, table.mask)) == 100 * 8 * 5
    early = PrunedTable(rows=100, dim=8, keep=0.25, ramp_steps=40, init_std=0.1).eval()
    assert float((early(torch.arange(100)) != 0).float().mean()) == 0.25  # eval reads as served, ramp or not
    assert "_served" not in dict(early.named_modules()) and set(early.state_dict()) == {"weight", "mask", "steps"}


def test_a_pruned_version_stores_sparse_rows_and_scores_as_trained(tmp_path):
    data = synthetic_spec(rows=800).model_dump(mode="json", exclude_defaults=True)
    data["features"] = [{**f, "compression": {"method": "prune", "keep": 0.25, "ramp_steps": 4}}
                        if f["name"] == "user_id" else f for f in data["features"]]
    spec = parse_spec(data)
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    cfg = make_config("deepfm", {"embedding_dim": 8, "hidden_units": [16], "dropout": 0.0})
    torch.manual_seed(0)
    model = build_model("deepfm", cfg, inputs)
    batch = EncodedRows(encoded["train"], inputs).take(torch.arange(32))
    for _ in range(4):
        model(batch)  # training calls: the schedule reaches keep = 0.25
    model.eval()
    version = ArtifactRegistry(tmp_path).publish("m", model_files(model, "deepfm", cfg, spec, vocab))
    assert version.read_json("model.json")["served_as"] == {"user_id": "prune:0.25"}
    loaded = load_model(version)
    served = loaded.model.embedding.table("user_id")
    assert isinstance(served, SparseTable) and served.num_bytes() < model.embedding.table("user_id").num_bytes() / 2
    assert isinstance(model.linear.weights.table("user_id"), StandaloneTable)  # first-order weights: not pruned
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch), model(batch))
    for compression, message in [({"method": "prune"}, "`keep` is required by prune compression"),
                                 ({"method": "prune", "keep": 1.0}, "keep: Input should be less than 1"),
                                 ({"method": "qr", "buckets": 4, "ramp_steps": 9}, "`ramp_steps` does not apply to qr")]:
        with pytest.raises(SpecError, match=message):
            tiny_spec(features=[{"name": "a", "kind": "categorical", "compression": compression}])


def test_a_pruned_table_is_ramping_until_its_schedule_ends_and_early_stopping_waits_for_it():
    from muxrec.pipelines.loop import still_ramping

    table = PrunedTable(rows=50, dim=4, keep=0.5, ramp_steps=3, init_std=0.1)
    model = torch.nn.Sequential(table)
    assert still_ramping(model)
    for _ in range(3):
        table(torch.arange(5))
    assert not still_ramping(model) and float((table.mask == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert not still_ramping(torch.nn.Sequential(torch.nn.Linear(2, 2)))  # no pruned table: never ramping
