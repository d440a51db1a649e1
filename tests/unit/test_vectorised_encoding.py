"""The vectorised vocabulary lookup (binary search in a vocabulary sorted once, all features of a
block at once) against the per-row meaning of an id, written out row by row here: the position of
the value's first occurrence in the vocabulary plus 1; null and unknown values -> OOV_ID."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from muxrec.encoding import OOV_ID, TableVocab, Vocabulary, count_values, derive, encode, moments, \
    quantile_sketch, vocabulary_ids
from muxrec.spec import FeatureKind, parse_spec


def _per_row(vocab: list[str], values: list[str | None]) -> list[int]:
    first: dict[str, int] = {}
    for i, v in enumerate(vocab):
        first.setdefault(v, i + 1)
    return [OOV_ID if v is None else first.get(v, OOV_ID) for v in values]


VOCAB = ["red", "green", "blue", "é", "日本", "a", "ab", "abc", "green", "x" * 40, "tab\tbed", " lead"]
ODD = [None, "", "gre", "greenish", "ab\x00", "a\x00", "\x00", "abcd", "x" * 39, "x" * 41, "lead", "ÉÉ", "red"]


@pytest.mark.parametrize("values", [
    VOCAB + ODD,  # every kind of hit and miss: prefixes, longer than any key, NUL, repeated key
    ODD[4:],  # a NUL in the block: the whole block takes the hashing path, same ids
    [None, None],
    [],
])
def test_lookup_matches_the_per_row_meaning(values):
    table = TableVocab("t", values=VOCAB)
    got = table.ids(pa.array(values, pa.string()))
    assert got.dtype == np.int64
    assert got.tolist() == _per_row(VOCAB, values)


def test_search_and_hashing_paths_agree_on_a_large_random_block():
    rng = np.random.default_rng(7)
    vocab = [f"v{i}" for i in rng.permutation(3000)]
    table = TableVocab("t", values=vocab)
    small = [f"v{i}" if i % 11 else None for i in rng.integers(0, 4000, size=200)]  # n <= 256: binary search
    large = [f"v{i}" for i in rng.integers(0, 4000, size=5000)]  # n > max(256, V / 16): hashing
    assert table._searchable(len(small)) and not table._searchable(len(large))
    for values in (small, large):
        assert table.ids(pa.array(values, pa.string())).tolist() == _per_row(vocab, values)
    assert table._hash_lookup(pa.array(small, pa.string())).tolist() == _per_row(vocab, small)


def test_ascii_blocks_are_laid_out_from_arrow_buffers_as_python_strings_would_be():
    """_ascii_strings (numpy strings built from Arrow's offsets and bytes) against the per-value
    conversion: nulls, empty values, a sliced array (offset into shared buffers), printable and control
    characters; and None where it must step aside (non-ASCII, NUL)."""
    from muxrec.encoding import _ascii_strings

    rng = np.random.default_rng(3)
    alphabet = [chr(c) for c in range(1, 128)]
    words = ["".join(rng.choice(alphabet, size=int(k))) for k in rng.integers(0, 12, size=300)]
    block = pa.array([None if i % 17 == 0 else w for i, w in enumerate(words)], pa.string())
    for values in (block, block.slice(5, 200), block.slice(299, 1), pa.array(["", ""], pa.string())):
        missing = values.is_null().to_numpy(zero_copy_only=False)
        expected = np.array(["" if v is None else v for v in values.to_pylist()]).astype(str)
        got = _ascii_strings(values, missing if values.null_count else None)
        assert got.dtype == expected.dtype and got.tolist() == expected.tolist()
    for odd in (["ok", "é"], ["ok", "a\x00"], ["\x00"]):
        assert _ascii_strings(pa.array(odd), None) is None
    sliced = block.slice(40, 150)  # ASCII after slicing, with nulls: same ids as one by one
    vocab = sorted(set(words))[::3]
    assert TableVocab("t", values=vocab).ids(sliced).tolist() == _per_row(vocab, sliced.to_pylist())


def test_several_lookups_at_once_equal_one_by_one():
    tables = [TableVocab("a", values=["x", "y"]), TableVocab("b", values=[]), TableVocab("c", values=VOCAB),
              TableVocab("d", values=["only\x00nul"])]  # a NUL in the vocabulary: always hashed
    blocks = [pa.array(["y", None, "z", "x"]), pa.array(["x"]), pa.array(ODD, pa.string()),
              pa.array(["only\x00nul", "only"], pa.large_string())]
    together = vocabulary_ids(list(zip(tables, blocks)))
    for table, block, ids in zip(tables, blocks, together):
        assert ids.tolist() == _per_row(table.values.to_pylist(), block.to_pylist())
    assert [ids.tolist() for ids in together[:2]] == [[2, 0, 0, 1], [0]]


SPEC = {
    "name": "encode-equivalence",
    "source": {"loader": "parquet", "path": "/nonexistent"},
    "labels": [{"name": "click", "source": "y"}],
    "split": {"row_number": True, "buckets": 4, "test": [0], "valid": [1]},
    "tables": {"shops": {}},
    "features": [
        {"name": "shop", "kind": "categorical", "table": "shops"},
        {"name": "year", "kind": "categorical", "source": "date", "slice": [-4, None], "fill": "unknown"},
        {"name": "tags", "kind": "multi_categorical", "max_len": 3},
        {"name": "seen", "kind": "sequence", "max_len": 4, "table": "shops"},
        {"name": "band", "kind": "categorical", "source": "price", "bucketize": {"boundaries": [5.0, 10.0]}},
        {"name": "stock", "kind": "numeric", "fill": 0},
        {"name": "title", "kind": "text", "max_len": 3, "hash_buckets": 16},
    ],
}


def _raw(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    shops = [None if i % 9 == 0 else "" if i % 13 == 0 else f"s{rng.integers(0, 30)}" for i in range(n)]
    return pa.table({
        "shop": pa.array(shops, pa.string()),
        "date": pa.array([None if i % 7 == 0 else f"01-Jan-{1990 + int(rng.integers(0, 12))}" for i in range(n)]),
        "tags": pa.array([None if i % 5 == 0 else [str(t) if t % 4 else None for t in rng.integers(0, 9, i % 6)]
                          for i in range(n)], pa.list_(pa.string())),
        "seen": pa.array([[f"s{k}" for k in rng.integers(0, 40, i % 7)] + [f"new-{seed}-{i}"] * (i % 10 == 3)
                          for i in range(n)], pa.list_(pa.string())),
        "price": pa.array([None if i % 6 == 0 else float(rng.uniform(0, 15)) for i in range(n)]),
        "stock": pa.array([None if i % 4 == 0 else float(rng.integers(0, 50)) for i in range(n)]),
        "title": pa.array([f"Red shoe {i % 5}" for i in range(n)]),
        "y": pa.array(rng.integers(0, 2, n)),
    })


def test_encode_of_a_request_sized_block_matches_the_per_row_meaning():
    """encode() on 100 rows (binary search) and on the training rows (hashing) against ids worked out
    row by row from the derived values: OOV, nulls and defaults, lists, bucketize, normalisation."""
    spec = parse_spec(SPEC)
    derived = derive(_raw(3000, 1), spec)
    vocab = Vocabulary.fit(spec, count_values(derived, spec), moments(derived, spec), quantile_sketch(derived, spec))
    request = derive(_raw(100, 2), spec, labels=False, split=False)
    for block in (request, derived):
        encoded = encode(block, spec, vocab)
        for f in spec.features:
            values, got = block[f.name].to_pylist(), encoded[f.name].to_pylist()
            table = vocab.tables.get(f.table_name)
            if f.kind == FeatureKind.NUMERIC:
                stats = vocab.numeric[f.name]
                assert got == pytest.approx([(v - stats.mean) / stats.std for v in values], rel=1e-5), f.name
            elif f.bucketize is not None:
                assert got == [OOV_ID if v is None else 1 + sum(v >= b for b in table.boundaries) for v in values]
            elif table.hash_buckets is not None:
                assert all(0 < i <= table.hash_buckets for ids in got for i in ids), f.name
            elif f.kind in (FeatureKind.MULTI_CATEGORICAL, FeatureKind.SEQUENCE):
                vocabulary = table.values.to_pylist()
                assert got == [_per_row(vocabulary, v or []) for v in values], f.name
            else:
                assert got == _per_row(table.values.to_pylist(), values), f.name
    # The request block did exercise the cases: misses, nulls, the fill value, truncated lists.
    encoded = encode(request, spec, vocab)
    assert OOV_ID in encoded["shop"].to_pylist() and None in request["shop"].to_pylist()
    assert "unknown" in request["year"].to_pylist()
    assert any(OOV_ID in ids for ids in encoded["seen"].to_pylist())
    assert max(len(ids) for ids in encoded["seen"].to_pylist()) == 4
    assert not any(math.isnan(x) for x in encoded["stock"].to_pylist())


def test_batches_from_encoded_arrays_equal_batches_from_the_encoded_table():
    """The scoring path (encode_arrays -> array_batches: no Arrow table, no gather) builds the same batch
    tensors as the offline path (encode -> Arrow table -> EncodedRows.take), whole or in slices."""
    import torch

    from muxrec.encoding import encode_arrays
    from muxrec.models import EncodedRows
    from muxrec.models.batch import array_batches
    from muxrec.spec import ModelInputs

    spec = parse_spec(SPEC)
    derived = derive(_raw(600, 1), spec)
    vocab = Vocabulary.fit(spec, count_values(derived, spec), moments(derived, spec), quantile_sketch(derived, spec))
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    request = derive(_raw(100, 2), spec, labels=False, split=False)
    offline_rows = EncodedRows(encode(request, spec, vocab), inputs, with_labels=False)
    arrays = encode_arrays(request, spec, vocab)
    for size in (100, 7):
        online = list(array_batches(arrays, inputs, size))
        assert [len(b) for b in online] == [min(size, 100 - s) for s in range(0, 100, size)]
        for start, got in zip(range(0, 100, size), online):
            want = offline_rows.take(torch.arange(start, min(start + size, 100)))
            assert got.sparse.keys() == want.sparse.keys()
            assert torch.equal(got.sparse.values(), want.sparse.values())
            assert torch.equal(got.sparse.lengths(), want.sparse.lengths())
            assert torch.equal(got.dense, want.dense) and got.labels is None
            assert got.sequences.keys() == want.sequences.keys() == {"seen"}
            for name, (ids, lengths) in want.sequences.items():
                assert torch.equal(got.sequences[name][0], ids) and torch.equal(got.sequences[name][1], lengths)
    # Lists longer than max_len (derive cuts them; arrays from elsewhere may not): each row's first ids.
    long_tags = [list(range(1, 1 + i % 6)) for i in range(100)]  # up to 5 ids, max_len 3
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in long_tags])]).astype(np.int32)
    table = encode(request, spec, vocab)
    table = table.set_column(table.column_names.index("tags"), "tags", pa.array(long_tags, pa.list_(pa.int64())))
    want = EncodedRows(table, inputs, with_labels=False).take(torch.arange(40, 60))
    got = list(array_batches({**arrays, "tags": (offsets, np.concatenate(long_tags))}, inputs, 20))[2]
    assert torch.equal(got.sparse.values(), want.sparse.values())
    assert torch.equal(got.sparse.lengths(), want.sparse.lengths()) and int(got.sparse["tags"].lengths().max()) == 3
    whole = offline_rows.take(torch.arange(100))
    assert int(whole.sequences["seen"][1].max()) == 4 and (whole.sparse.lengths() == 0).any()
    with pytest.raises(ValueError, match="lack feature column"):
        next(array_batches({k: v for k, v in arrays.items() if k != "seen"}, inputs, 10))


def test_a_slice_derives_and_encodes_as_the_same_rows_of_the_whole_block():
    """Arrays that are slices of larger buffers (Arrow offsets not starting at 0) take the same paths:
    empty values read from string offsets, list offsets and values taken from the list array."""
    spec = parse_spec(SPEC)
    derived = derive(_raw(600, 1), spec)
    vocab = Vocabulary.fit(spec, count_values(derived, spec), moments(derived, spec), quantile_sketch(derived, spec))
    raw = _raw(100, 2)
    whole = derive(raw, spec, labels=False, split=False)
    part = derive(raw.slice(30, 40), spec, labels=False, split=False)
    assert part.to_pylist() == whole.slice(30, 40).to_pylist()
    assert None in whole["shop"].to_pylist()  # "" became null
    assert encode(whole.slice(30, 40), spec, vocab).to_pylist() == encode(whole, spec, vocab).slice(30, 40).to_pylist()
