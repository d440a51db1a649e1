"""Small builders shared by tests: tiny specs and raw tables made from the spec, not committed files."""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from muxrec.config import model_file
from muxrec.data.synthetic import SyntheticConfig, generate
from muxrec.encoding import SPLIT_COLUMN, Vocabulary, count_values, derive, encode, moments, quantile_sketch
from muxrec.models import build_model, make_config
from muxrec.spec import FeatureSpec, ModelInputs, load_spec, parse_spec

from tests.conftest import CONFIGS


def synthetic_spec(rows: int = 4000, seed: int = 7, labels: tuple[str, ...] | None = None,
                   chunk_rows: int | None = None) -> FeatureSpec:
    """configs/synthetic.yaml with a smaller row count (and only the named labels, when given; made in
    chunks of `chunk_rows`, the generator's unit of Ray work, when given)."""
    data = load_spec(CONFIGS / "synthetic.yaml").model_dump(mode="json")
    data["source"]["options"] = {"rows": rows, "seed": seed, **({"chunk_rows": chunk_rows} if chunk_rows else {})}
    if labels is not None:
        data["labels"] = [label for label in data["labels"] if label["name"] in labels]
    return parse_spec(data)


def mixed_dim_spec(rows: int = 4000, seed: int = 7) -> FeatureSpec:
    """synthetic_spec with three tables at their own embedding_dim: user_id 2 (a feature's own table),
    the item table 6 (shared by item_id and the history) and title 3."""
    data = synthetic_spec(rows, seed).model_dump(mode="json", exclude_defaults=True)
    data["tables"]["item"]["embedding_dim"] = 6
    dims = {"user_id": 2, "title": 3}
    data["features"] = [{**f, "embedding_dim": dims[f["name"]]} if f["name"] in dims else f for f in data["features"]]
    return parse_spec(data)


def unified_spec(rows: int = 1500, seed: int = 7, buckets: int = 64, slots: int = 2,
                 quantize: str | None = None) -> FeatureSpec:
    """synthetic_spec with its single-valued categorical features but item_id (which shares rows with
    the history) in one multiplexed table of `buckets` rows, user_id on `slots` rows of it (and the
    table stored `quantize`d when published, if given)."""
    shared = ("user_id", "site", "ad_type", "region", "device", "daypart", "slot", "noise_a", "noise_b")
    data = synthetic_spec(rows, seed).model_dump(mode="json", exclude_defaults=True)
    data["tables"]["unified"] = {"hash_buckets": buckets, "multiplex": True, **({"quantize": quantize} if quantize else {})}
    data["features"] = [{**f, "table": "unified", **({"slots": slots} if f["name"] == "user_id" else {})}
                        if f["name"] in shared else f for f in data["features"]]
    return parse_spec(data)


def synthetic_raw(spec: FeatureSpec) -> pa.Table:
    return generate(SyntheticConfig(**spec.source.options))[0]


def fitted(spec: FeatureSpec, raw: pa.Table) -> tuple[Vocabulary, dict[str, pa.Table]]:
    """Vocabulary fitted on train rows and the encoded rows of every split, all in-process."""
    derived = derive(raw, spec)
    parts = {s: derived.filter(pc.equal(derived[SPLIT_COLUMN], s)) for s in ("train", "valid", "test")}
    train = parts["train"]
    vocab = Vocabulary.fit(spec, count_values(train, spec), moments(train, spec), quantile_sketch(train, spec))
    return vocab, {s: encode(t, spec, vocab) for s, t in parts.items()}


def tiny_spec(**overrides: Any) -> FeatureSpec:
    """A 4-feature spec over an in-memory table, one feature of each main kind."""
    data = {
        "name": "tiny",
        "source": {"loader": "parquet", "path": "/nonexistent"},
        "labels": [{"name": "click", "source": "y"}],
        "split": {"hash": {"row": 1}, "buckets": 4, "test": [0], "valid": [1]},
        "features": [
            {"name": "color", "kind": "categorical", "min_count": 2},
            {"name": "tags", "kind": "multi_categorical", "max_len": 3},
            {"name": "price", "kind": "numeric"},
            {"name": "title", "kind": "text", "max_len": 4, "hash_buckets": 16},
        ],
    }
    data.update(overrides)
    return parse_spec(data)


def tiny_raw(n: int = 64, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    colors = rng.choice(["red", "green", "blue", "rare"], size=n, p=[0.4, 0.3, 0.29, 0.01])
    return pa.table({
        "row": pa.array(np.arange(n), pa.int64()),
        "color": pa.array(colors),
        "tags": pa.array([list(rng.choice(["a", "b", "c", "d", "e"], size=rng.integers(0, 5))) for _ in range(n)],
                         pa.list_(pa.string())),
        "price": pa.array(rng.normal(10, 2, size=n)),
        "title": pa.array([f"Big {c} Sale" for c in colors]),
        "y": pa.array(rng.integers(0, 2, size=n).astype(np.int8)),
    })


def inputs_for(spec: FeatureSpec, vocab: Vocabulary) -> ModelInputs:
    return ModelInputs.from_spec(spec, vocab.num_embeddings())


def build(name: str, data: dict[str, Any], inputs: ModelInputs) -> Any:
    """Model `name` from a config mapping, as a YAML file gives it: read by make_config, then built."""
    return build_model(name, make_config(name, data), inputs)


def model_config_files() -> list[str]:
    """Every configs/models/<name>.yaml, by name (architectures and their variants, e.g. hiformer-fast)."""
    return sorted(p.stem for p in (CONFIGS / "models").glob("*.yaml"))


def small_model(name: str) -> tuple[str, Any]:
    """(architecture, config) of configs/models/<name>.yaml with its sizes shrunk, the architecture unchanged."""
    mf = model_file(CONFIGS, name)
    cfg = make_config(mf.architecture, mf.model)
    fields = {f.name for f in dataclasses.fields(cfg)}
    small = {"embedding_dim": 8 if cfg.embedding_dim > 1 else 1, "hidden_units": (64, 32),
             "neurons_per_head": 8}  # ARM-Net: 8 exponential neurons per head beat LR in 6 s, 32 in 13 s
    if getattr(cfg, "dnn_hidden_units", ()):
        small["dnn_hidden_units"] = (64, 32)
    return mf.architecture, dataclasses.replace(cfg, **{k: v for k, v in small.items() if k in fields})


def tiny_rows(rows: int = 600) -> tuple[ModelInputs, "EncodedRows"]:
    """(inputs, encoded train rows) of a small synthetic set: the unit tier's model data."""
    from muxrec.models import EncodedRows

    spec = synthetic_spec(rows=rows)
    vocab, encoded = fitted(spec, synthetic_raw(spec))
    inputs = inputs_for(spec, vocab)
    return inputs, EncodedRows(encoded["train"], inputs)


def qr_spec(rows: int = 4000, seed: int = 7) -> FeatureSpec:
    """synthetic_spec with three quotient-remainder tables: user_id's own (a single value), the item table
    (item_id and the history, read position by position) and tags' own (a mean-pooled bag); and site's
    own table at mixed dims by frequency (its first 30% of rows 4 wide, the rest 2), and region's trained
    Matryoshka-style at widths 2 and full, published at 2."""
    data = synthetic_spec(rows, seed).model_dump(mode="json", exclude_defaults=True)
    data["tables"]["item"]["compression"] = {"method": "qr", "buckets": 8}
    compression = {"user_id": {"method": "qr", "buckets": 8}, "tags": {"method": "qr", "buckets": 3},
                   "site": {"method": "mixed_dim", "blocks": [[0.3, 4], [1.0, 2]]},
                   "region": {"method": "matryoshka", "dims": [2], "serve_dim": 2}}
    data["features"] = [{**f, "compression": compression[f["name"]]} if f["name"] in compression else f
                        for f in data["features"]]
    return parse_spec(data)


def quantized_spec(rows: int = 4000, seed: int = 7, bits: str = "int8") -> FeatureSpec:
    """synthetic_spec with user_id's own table and the item table (item_id + history) marked `quantize`."""
    data = synthetic_spec(rows, seed).model_dump(mode="json", exclude_defaults=True)
    data["tables"]["item"]["quantize"] = bits
    data["features"] = [{**f, "quantize": bits} if f["name"] == "user_id" else f for f in data["features"]]
    return parse_spec(data)


def every_method_spec(rows: int = 4000, seed: int = 7) -> FeatureSpec:
    """synthetic_spec with one table per embedding method: user_id stored int8, the item table (item_id
    and the history) quotient-remainder, site at mixed dims, region Matryoshka (published at 2 values),
    slot pruned to half its values (published sparse), and ad_type, device, daypart in one multiplexed
    table (device on two slots)."""
    data = synthetic_spec(rows, seed).model_dump(mode="json", exclude_defaults=True)
    data["tables"]["item"]["compression"] = {"method": "qr", "buckets": 16}
    data["tables"]["unified"] = {"hash_buckets": 64, "multiplex": True}
    extra = {"user_id": {"quantize": "int8"},
             "site": {"compression": {"method": "mixed_dim", "blocks": [[0.3, 8], [1.0, 2]]}},
             "region": {"compression": {"method": "matryoshka", "dims": [2, 4], "serve_dim": 2}},
             "slot": {"compression": {"method": "prune", "keep": 0.5, "ramp_steps": 50}},
             "ad_type": {"table": "unified"}, "daypart": {"table": "unified"},
             "device": {"table": "unified", "slots": 2}}
    data["features"] = [{**f, **extra.get(f["name"], {})} for f in data["features"]]
    return parse_spec(data)


def spec_data(spec: FeatureSpec) -> tuple[FeatureSpec, Any, ModelInputs, "EncodedRows"]:
    """(spec, vocabulary, model inputs, encoded train rows) of the spec's synthetic rows."""
    from muxrec.models import EncodedRows

    vocab, encoded = fitted(spec, synthetic_raw(spec))
    inputs = inputs_for(spec, vocab)
    return spec, vocab, inputs, EncodedRows(encoded["train"], inputs)


@contextmanager
def no_idle_actor_warning() -> Iterator[None]:
    """Fails if Ray Data warns, inside the block, that an actor pool got fewer blocks than actors (the
    scoring pool is cut to the input's blocks: pipelines/score.py)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not [w for w in caught if "concurrent actors" in str(w.message)]
