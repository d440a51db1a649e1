"""Unified Embedding (feature multiplexing): several features in one hashed table, each through its own
seeded hash, and the multi-slot variant. Spec, encoding, model and the Embedder's lookup path."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from muxrec.encoding import OOV_ID, SPLIT_COLUMN, derive, encode_arrays, slot_seed
from muxrec.errors import SpecError
from muxrec.models import EncodedRows
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.spec import ModelInputs, load_spec, parse_spec

from tests.conftest import CONFIGS, REPO
from tests.helpers import fitted, synthetic_raw, tiny_spec, unified_spec

def test_the_shipped_unified_spec_keeps_the_protocol_and_shares_one_table():
    unified, plain = load_spec(CONFIGS / "ml-100k-unified.yaml"), load_spec(CONFIGS / "ml-100k.yaml")
    assert (unified.labels, unified.split, unified.keys) == (plain.labels, plain.split, plain.keys)
    strip = ("table", "slots")
    assert [f.model_copy(update={k: None for k in strip}) for f in unified.features] == plain.features
    [table] = [t for t in unified.tables_list() if t.multiplex]
    assert table.features == ("user_id", "item_id", "age", "gender", "occupation", "zip_code", "release_year")
    inputs = ModelInputs.from_spec(unified, {"unified": 1025, "genres": 20})
    assert inputs.max_len == {"user_id": 2, "item_id": 2, "genres": 6}
    assert [(t.name, t.pooling, t.num_embeddings) for t in inputs.tables] == [("unified", "sum", 1025),
                                                                              ("genres", "mean", 20)]


def test_older_specs_keep_their_fingerprint():
    """multiplex / slots are left out of the fingerprint while unused: published models stay loadable."""
    plain = load_spec(CONFIGS / "ml-100k.yaml")
    data = plain.model_dump(mode="json")
    assert "slots" in data["features"][0]
    assert parse_spec(data).fingerprint() == plain.fingerprint()
    assert load_spec(CONFIGS / "ml-100k-unified.yaml").fingerprint() != plain.fingerprint()


@pytest.mark.parametrize("tables, features, message", [
    ({"u": {"multiplex": True}}, [{"name": "a", "kind": "categorical", "table": "u"}],
     "a multiplexed table hashes each feature into its rows: set `hash_buckets`"),
    ({"u": {"hash_buckets": 8}}, [{"name": "a", "kind": "categorical", "table": "u", "slots": 2}],
     "feature 'a': `slots` needs a multiplexed shared table"),
    ({}, [{"name": "a", "kind": "categorical", "slots": 2}], "`slots` needs a multiplexed shared table"),
    ({"u": {"hash_buckets": 8, "multiplex": True}},
     [{"name": "a", "kind": "multi_categorical", "max_len": 3, "table": "u", "slots": 2}],
     "`slots` applies to single-valued categorical features"),
    ({"u": {"hash_buckets": 8, "multiplex": True}},
     [{"name": "a", "kind": "categorical", "table": "u"}, {"name": "h", "kind": "sequence", "max_len": 4, "table": "u"}],
     "table 'u' is multiplexed .* a sequence feature there would not meet its items' rows"),
    ({"u": {"hash_buckets": 8, "multiplex": True, "min_count": 3}}, [{"name": "a", "kind": "categorical", "table": "u"}],
     "`min_count` does not apply to a multiplexed table"),
    ({"u": {"hash_buckets": 8, "multiplex": True}}, [{"name": "a", "kind": "categorical", "table": "u", "slots": 17}],
     "slots: Input should be less than or equal to 16"),
])
def test_impossible_multiplexing_is_refused_in_one_line(tables, features, message):
    with pytest.raises(SpecError, match=message) as err:
        tiny_spec(tables=tables, features=features)
    assert "\n" not in str(err.value).strip().split("\n")[0]


def test_each_feature_hashes_by_its_own_seed_and_the_seed_is_stable():
    spec = unified_spec(buckets=1000, slots=1)
    vocab, _ = fitted(spec, synthetic_raw(spec))
    table = vocab.tables["unified"]
    values = pa.array([f"v{i}" for i in range(2000)] + [None])
    a, b = table.ids(values, "site"), table.ids(values, "region")
    assert a.shape == (2001,) and a[:-1].min() >= 1 and a[:-1].max() <= 1000 and a[-1] == b[-1] == OOV_ID
    same = float(np.mean(a[:-1] == b[:-1]))
    print(f"equal strings of two features on the same row: {same:.2%} (chance: 0.10%)")
    assert same < 0.005  # unrelated hashes, not one shared vocabulary
    # the seed is blake2b-64 of "<feature>/<slot>", read little-endian: no process state in it
    expected = int.from_bytes(hashlib.blake2b(b"site/0", digest_size=8).digest(), "little")
    assert slot_seed("site", 0) == expected
    code = ("import pyarrow as pa; from muxrec.encoding import TableVocab; "
            "print(TableVocab('u', hash_buckets=1000, multiplex=True).ids(pa.array(['v1','v2','v3']), 'site').tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert out.strip() == str(a[1:4].tolist())


def test_a_slotted_feature_is_a_bag_of_k_rows_summed():
    spec = unified_spec(buckets=64, slots=3)
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    table = vocab.tables["unified"]
    with pytest.raises(ValueError, match="multiplexed: ids depend on the feature"):
        table.ids(pa.array(["x"]))
    ids = table.ids(pa.array(["u1", None]), "user_id", 3)
    assert ids.shape == (2, 3) and (ids[1] == OOV_ID).all() and len(set(ids[0].tolist())) > 1

    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    assert vocab.num_embeddings()["unified"] == 65 and inputs.max_len["user_id"] == 3
    rows = EncodedRows(encoded["train"], inputs)
    batch = rows.take(torch.arange(8))
    torch.manual_seed(0)
    emb = FeatureEmbedding(inputs, dim=4, init_std=0.1)
    fields = emb(batch)  # (B, F, D)
    user = encoded["train"].column("user_id").to_pylist()[:8]
    assert all(len(u) == 3 for u in user)
    expected = emb.lookup("user_id", torch.tensor(user))  # (B, D): the k rows summed
    torch.testing.assert_close(fields[:, inputs.fields.index("user_id")], expected)
    weight = emb.table_weights()["unified"]
    torch.testing.assert_close(expected[0], weight[user[0]].sum(0))
    # serving encodes the same way: encode_arrays gives the k ids as a bag per row
    offsets, flat = encode_arrays(spec_rows(spec, encoded), spec, vocab)["user_id"]
    assert offsets.tolist() == [0, 3, 6] and flat.reshape(2, 3).tolist() == user[:2]


def spec_rows(spec, encoded):
    """The first two training rows again, as derived (pre-encoding) columns."""
    derived = derive(synthetic_raw(spec), spec)
    return derived.filter(pc.equal(derived[SPLIT_COLUMN], "train")).slice(0, 2)
