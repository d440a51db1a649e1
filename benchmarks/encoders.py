"""`muxrec bench encoders`: what shared text / image encoders buy a CTR model, and what they cost.

    muxrec bench encoders --dataset ml-100k --seeds 2026,2027,2028 --json
    muxrec bench encoders --dataset synthetic --seeds 2026,2027,2028 --json

1. Encoders, made in this run and published to the registry: ML-100K's text encoder is fitted on the item
   texts (title + genres; `muxrec encoders fit-text`, PCA over frozen MiniLM); synthetic's text and image
   encoders are trained together by ALIGN on (image, title) pairs (`muxrec encoders align`). The dataset's
   spec (configs/ml-100k-text.yaml, configs/synthetic-content.yaml) is pinned to the versions made.
2. Cold start: the spec with `split.cold` (10% of items held out of training whole into test, 10% into
   valid; a behaviour history sharing the item table is dropped, as it would train the held-out items'
   rows), trained with and without its content features, per seed; test AUC on the rows of held-out items
   (their ids map to the OOV row: the model has never seen them) and on the other test rows (warm). The
   lift is the per-seed difference, mean ± std. Targets (issue 13): cold lift >= 0.03 on synthetic, lift >
   2 std on ML-100K, warm AUC not lower.
3. ML-100K only: the fixed protocol (configs/ml-100k.yaml) with and without the item text, test AUC.
4. Cost: items encoded per second on one core per tower, and the latency of getting 16 items' vectors
   through the real Redis cache when warm (one MGET) and when cold (MGET, the encoder, the writes).

Models train in-process with the loop a Ray Train worker runs (muxrec.pipelines.loop), on rows encoded
once (`bench embedding`'s encoded_splits); the model is configs/models/<model>.yaml (default DeepFM).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow.compute as pc
import torch

from muxrec.artifacts import ArtifactRegistry
from muxrec.benchmarks.embedding import encoded_splits
from muxrec.benchmarks.environment import commit, machine, write_result
from muxrec.config import load_model_file, with_overrides
from muxrec.data import load_source
from muxrec.encoding import OOV_ID
from muxrec.errors import ConfigError
from muxrec.metrics import roc_auc
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.models.encoders.content import ContentVectors
from muxrec.models.serialization import predict_proba
from muxrec.pipelines.loop import evaluate_rows, fit_in_process
from muxrec.spec import FeatureSpec, load_spec, parse_spec

DATASETS = {"ml-100k": "ml-100k-text", "synthetic": "synthetic-content"}
COLD = {"column": "item_id", "buckets": 10, "test": [0], "valid": [1]}
LATENCY_ITEMS = 16  # values per cached lookup, as a rank request's candidates
LATENCY_REPEATS = 30


def pinned(spec: FeatureSpec, refs: dict[str, str]) -> FeatureSpec:
    """`spec` with each content feature's encoder name pinned to the version made here (name -> ref)."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    for f in data["features"]:
        if "encoder" in f:
            f["encoder"] = refs[f["encoder"].rpartition("@")[0]]
    return parse_spec(data)


def variant(spec: FeatureSpec, content: bool, cold: bool) -> FeatureSpec:
    """`spec` with or without its content features, with or without the cold-item split."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    if not content:
        data["features"] = [f for f in data["features"] if "encoder" not in f]
        data["name"] = f"{spec.name}-ids"
    if cold:
        data["split"]["cold"] = dict(COLD)
        data["name"] = f"{data['name']}-cold"
        # A history sharing the item table would train the held-out items' rows (they appear in users' pasts):
        # dropped, so that a cold item's id is seen nowhere in training and reads the OOV row.
        item_table = next((f.get("table") for f in data["features"] if f["name"] == "item_id"), None)
        if item_table is not None:
            data["features"] = [f for f in data["features"] if not (f["kind"] == "sequence" and f.get("table") == item_table)]
            used = {f.get("table") for f in data["features"]}
            data["tables"] = {k: v for k, v in data.get("tables", {}).items() if k in used}
    return parse_spec(data)


def make_encoders(dataset: str, spec: FeatureSpec, registry: ArtifactRegistry, say: Callable[[str], None]
                  ) -> dict[str, Any]:
    """Train and publish the dataset's encoders; {"refs": name -> ref, "seconds": ..., ...}."""
    t0 = time.perf_counter()
    if dataset == "ml-100k":
        from muxrec.pipelines.encoders import fit_text_encoder

        version = fit_text_encoder(spec.source, "item_text", registry, "ml-100k-text")
        out = {"refs": {"ml-100k-text": f"ml-100k-text@{version.version}"}, "fit": "pca", **version.metadata}
    else:
        from muxrec.pipelines.align import AlignConfig, align

        result = align(spec, "title", "image", registry, "synthetic", AlignConfig())
        out = {"refs": {"synthetic-text": result["text"], "synthetic-image": result["image"]}, "fit": "align",
               **{k: v for k, v in result.items() if k not in ("text", "image")}}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    say(f"encoders {sorted(out['refs'].values())} in {out['seconds']:.0f}s")
    return out


def cold_warm_auc(model: torch.nn.Module, rows: EncodedRows, batch_size: int) -> dict[str, float]:
    """Test AUC on rows whose item is unknown to the model (OOV: a held-out item) and on the others."""
    cold = rows.ids(rows.inputs.item_feature).numpy() == OOV_ID  # (N,) rows of items unknown to the model
    probs = predict_proba(model, rows, batch_size)[:, 0]
    labels = rows.labels.numpy()[:, 0]
    return {"cold_auc": roc_auc(labels[cold], probs[cold]), "warm_auc": roc_auc(labels[~cold], probs[~cold]),
            "cold_rows": int(cold.sum()), "warm_rows": int((~cold).sum())}


def _train(mf: Any, inputs, rows, rates, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(mf.architecture, make_config(mf.architecture, mf.model), inputs)
    fit_in_process(model, rows["train"], rows["valid"], inputs, replace(mf.train, seed=seed), rates)
    return model


def cold_start(spec: FeatureSpec, raw, content: ContentVectors, mf: Any, seeds: Sequence[int],
               say: Callable[[str], None]) -> dict[str, Any]:
    """Per seed, cold / warm test AUC with and without the content features on the cold-item split."""
    runs: dict[str, list[dict[str, float]]] = {}
    for name, with_content in (("ids", False), ("content", True)):
        v = variant(spec, with_content, cold=True)
        inputs, rows, rates = encoded_splits(v, raw, content if with_content else None)
        runs[name] = []
        for seed in seeds:
            model = _train(mf, inputs, rows, rates, seed)
            runs[name].append(cold_warm_auc(model, rows["test"], mf.train.eval_batch_size))
            say(f"cold start, {name}, seed {seed}: cold {runs[name][-1]['cold_auc']:.4f}, "
                f"warm {runs[name][-1]['warm_auc']:.4f}")
    out: dict[str, Any] = {"per_seed": runs}
    for part in ("cold", "warm"):
        lifts = [c[f"{part}_auc"] - i[f"{part}_auc"] for c, i in zip(runs["content"], runs["ids"])]
        out[part] = {"ids": _mean_std([r[f"{part}_auc"] for r in runs["ids"]]),
                     "content": _mean_std([r[f"{part}_auc"] for r in runs["content"]]),
                     "lift": _mean_std(lifts)}
    out["rows"] = {k: runs["ids"][0][k] for k in ("cold_rows", "warm_rows")}
    return out


def protocol(spec: FeatureSpec, raw, content: ContentVectors, mf: Any, seeds: Sequence[int],
             say: Callable[[str], None]) -> dict[str, Any]:
    """The fixed ML-100K protocol with and without the item text: test AUC, mean ± std over seeds."""
    out = {}
    for name, with_content in (("ids", False), ("content", True)):
        v = variant(spec, with_content, cold=False)
        inputs, rows, rates = encoded_splits(v, raw, content if with_content else None)
        aucs = []
        for seed in seeds:
            model = _train(mf, inputs, rows, rates, seed)
            aucs.append(evaluate_rows(model, rows["test"], inputs, mf.train.eval_batch_size)["auc"])
        out[name] = _mean_std(aucs)
        say(f"protocol, {name}: test AUC {out[name][0]:.4f} ± {out[name][1]:.4f}")
    return out


def throughput(spec: FeatureSpec, raw, content: ContentVectors) -> dict[str, Any]:
    """Items encoded per second on one core, per content feature's tower (distinct values of the source)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for f in spec.content:
            values = pc.unique(raw[f.column].combine_chunks()).to_pylist()[:512]
            content.catalog(f, values[:8])  # warm up: the tower loads
            t0 = time.perf_counter()
            content.catalog(f, values)
            seconds = time.perf_counter() - t0
            out[f.name] = {"encoder": f.encoder, "items": len(values), "items_per_second_per_core":
                           round(len(values) / seconds, 1)}
    finally:
        torch.set_num_threads(threads)
    return out


def cache_latency(spec: FeatureSpec, raw, content: ContentVectors, redis_url: str) -> dict[str, Any]:
    """p50 ms to get LATENCY_ITEMS values' vectors through the real Redis cache: warm (all hits, one MGET)
    and cold (all misses: MGET, the encoder, then the writes), as the gateway does (services/content.py)."""
    from muxrec.services.cache import CircuitBreaker, RedisEmbeddingCache, version_tag
    from muxrec.services.content import value_key

    f = spec.content[0]
    values = pc.unique(raw[f.column].combine_chunks()).to_pylist()
    cache = RedisEmbeddingCache(redis_url, ttl_s=600, timeout_s=1.0, breaker=CircuitBreaker(3, 1.0))
    tag = version_tag(f"{f.encoder}-bench-{time.time_ns()}", content.digests[f.encoder])  # a fresh key space
    entity = f"{f.kind.value}{f.dim}"

    async def lookup(batch: list[str]) -> float:
        t0 = time.perf_counter()
        keys = [value_key(v) for v in batch]
        found = await cache.get_many(tag, entity, keys, f.dim)
        missing = [v for v, hit in zip(batch, found) if hit is None]
        if missing:
            vectors = content.catalog(f, missing)
            await cache.put_many(tag, entity, dict(zip([value_key(v) for v in missing], vectors)))
        return (time.perf_counter() - t0) * 1e3

    async def run() -> tuple[list[float], list[float]]:
        content.catalog(f, values[:4])  # the tower loads outside the timing
        cold, warm = [], []
        for r in range(LATENCY_REPEATS):
            batch = values[(r * LATENCY_ITEMS) % len(values):][:LATENCY_ITEMS]
            cold.append(await lookup(batch))
            warm.append(await lookup(batch))
        await cache.close()
        return cold, warm

    cold, warm = asyncio.run(run())
    return {"feature": f.name, "items": LATENCY_ITEMS, "cold_ms_p50": round(statistics.median(cold), 2),
            "warm_ms_p50": round(statistics.median(warm), 2),
            "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 1)}


def bench_encoders(dataset: str, seeds: list[int], config_dir: Path, registry: ArtifactRegistry, out_dir: Path | None,
                   model: str = "deepfm", overrides: Sequence[str] = (), redis_url: str = "redis://127.0.0.1:6379/0",
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    if dataset not in DATASETS:
        raise ConfigError(f"bench encoders runs on {sorted(DATASETS)}, not {dataset!r}")
    say = progress or (lambda line: None)
    spec = load_spec(config_dir / f"{DATASETS[dataset]}.yaml")
    mf = with_overrides(load_model_file(config_dir / "models" / f"{model}.yaml"), overrides)
    encoders = make_encoders(dataset, spec, registry, say)
    spec = pinned(spec, encoders["refs"])
    content = ContentVectors(spec, registry)
    raw = load_source(spec.source)
    row: dict[str, Any] = {"dataset": dataset, "spec": DATASETS[dataset], "model": model, "seeds": seeds,
                           "overrides": list(overrides), "encoders": encoders}
    row["cold_start"] = cold_start(spec, raw, content, mf, seeds, say)
    if dataset == "ml-100k":
        row["protocol"] = protocol(spec, raw, content, mf, seeds, say)
    row["throughput"] = throughput(spec, raw, content)
    row["cache_latency"] = cache_latency(spec, raw, content, redis_url)
    cold = row["cold_start"]["cold"]["lift"]
    row["targets"] = {
        "cold_lift": cold[0], "cold_lift_std": cold[1],
        "met": (cold[0] >= 0.03) if dataset == "synthetic" else (cold[0] > 2 * cold[1]),
        "warm_not_lower": row["cold_start"]["warm"]["lift"][0] >= 0.0,
    }
    row.update(commit=commit(), machine=machine())
    if out_dir is not None:
        write_result(out_dir, f"encoders-{dataset}", row)
        write_report(row, out_dir)
    return row


def _mean_std(values: list[float]) -> list[float]:
    return [round(statistics.fmean(values), 5), round(statistics.stdev(values), 5) if len(values) > 1 else 0.0]


def write_report(row: dict[str, Any], out_dir: Path) -> None:
    cs, dataset = row["cold_start"], row["dataset"]
    fmt = lambda ms: f"{ms[0]:.4f} ± {ms[1]:.4f}"  # noqa: E731
    lines = [
        f"# Shared encoders: {dataset}",
        "",
        f"Spec `configs/{row['spec']}.yaml` pinned to the encoders made in this run "
        f"({', '.join(sorted(row['encoders']['refs'].values()))}, {row['encoders']['fit']}, "
        f"{row['encoders']['seconds']:.0f}s); model `{row['model']}`; seeds {row['seeds']}; one run, in-process training. "
        f"Made by `muxrec bench encoders --dataset {dataset} --seeds {','.join(map(str, row['seeds']))}"
        + "".join(f" --set {o}" for o in row["overrides"]) + "`.",
        "",
        f"## Cold start: 10% of items held out of training ({cs['rows']['cold_rows']} cold test rows, "
        f"{cs['rows']['warm_rows']} warm)",
        "",
        "| test rows | ids only | + encoders | lift (per-seed difference) |",
        "|---|---|---|---|",
        *[f"| {part} | {fmt(cs[part]['ids'])} | {fmt(cs[part]['content'])} | {cs[part]['lift'][0]:+.4f} ± "
          f"{cs[part]['lift'][1]:.4f} |" for part in ("cold", "warm")],
        "",
        f"Target: cold lift {'>= 0.03' if dataset == 'synthetic' else '> 2 std'}, warm not lower: "
        f"**{'met' if row['targets']['met'] and row['targets']['warm_not_lower'] else 'not met'}**.",
    ]
    if "protocol" in row:
        p = row["protocol"]
        lines += ["", "## The fixed ML-100K protocol (configs/ml-100k.yaml), test AUC", "",
                  "| features | test AUC |", "|---|---|", f"| ids and attributes | {fmt(p['ids'])} |",
                  f"| + item text (title, genres) through MiniLM | {fmt(p['content'])} |"]
    lines += ["", "## Cost", "", "| feature | encoder | items / s / core |", "|---|---|---|",
              *[f"| {n} | {t['encoder']} | {t['items_per_second_per_core']:.0f} |" for n, t in row["throughput"].items()],
              "", f"Vectors of {row['cache_latency']['items']} items through Redis: warm (hits) "
              f"{row['cache_latency']['warm_ms_p50']} ms p50, cold (encode + write) {row['cache_latency']['cold_ms_p50']} "
              f"ms p50: {row['cache_latency']['cold_over_warm']}x (median of {LATENCY_REPEATS}, no Serve hop)."]
    (out_dir / f"encoders-{dataset}.md").write_text("\n".join(lines) + "\n")
    _plot(row, out_dir / f"encoders-{dataset}.png")


def _plot(row: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = row["cold_start"]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(2)
    for k, (name, label) in enumerate((("ids", "ids only"), ("content", "+ encoders"))):
        means = [cs[p][name][0] for p in ("cold", "warm")]
        stds = [cs[p][name][1] for p in ("cold", "warm")]
        ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=stds, label=label, capsize=3)
    ax.set_xticks(x, ["cold items", "warm items"])
    lo = min(cs[p][n][0] for p in ("cold", "warm") for n in ("ids", "content"))
    ax.set_ylim(lo - 0.03, None)
    ax.set_ylabel("test AUC")
    ax.set_title(f"{row['dataset']}: cold-start AUC with shared encoders ({row['model']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
