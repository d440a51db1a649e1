"""`muxrec bench select`: what each feature-selection method's top-k features keep, and what they save.

    muxrec bench select --dataset ml-100k --seeds 2026,2027 --json
    muxrec bench select --dataset synthetic --seeds 2026,2027 --json

1. Prepare configs/<dataset>.yaml once; train the model (configs/models/<model>.yaml, default DeepFM) on
   all features per seed.
2. Rank the features with every method (`muxrec select`'s code path; permutation on the first seed's
   full model, on the valid split) and time each method's own run.
3. For each method and k, the top-k spec (`muxrec.selection.subset_spec`) reads the same prepared rows
   (a view: nothing re-prepared) and is retrained per seed; a feature set two methods agree on is trained
   once. Test AUC mean ± std over seeds.
4. Serving cost of each feature set, measured on the first seed's model published to a scratch registry
   and loaded as the Ranker loads it: bytes of its embedding tables, bytes of a 100-candidate JSON rank
   request carrying only the fields it reads, and the p50 of scoring that request in-process (derive,
   encode, forward; one thread; the Serve hops, equal for every model, are not in it).
5. Targets (issue 14). Synthetic: precision at k = number of planted informative features (1.0 for
   OptFS and OutRank) and the pure-noise fields ranked last, by every method. ML-100K: the smallest
   feature set whose **validation** AUC is within 0.002 of all features' (chosen on validation, never on
   test), its test AUC and what it saves.

Models train in-process with the loop a Ray Train worker runs (muxrec.pipelines.loop).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import torch

from muxrec.artifacts import ArtifactRegistry
from muxrec.benchmarks.embedding import table_bytes
from muxrec.benchmarks.environment import commit, machine, write_result
from muxrec.config import load_model_file, with_overrides
from muxrec.data import load_source
from muxrec.data.synthetic import SyntheticConfig, SyntheticTruth, generate
from muxrec.encoding import split_of
from muxrec.errors import ConfigError
from muxrec.history import add_histories
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.models.serialization import load_model, model_files
from muxrec.pipelines.feature_selection import select
from muxrec.pipelines.importance import permutation_importance
from muxrec.pipelines.loop import evaluate_rows, fit_in_process
from muxrec.pipelines.prepare import PreparedData, prepare_cached
from muxrec.selection import METHODS, FeatureRanking, permutation_ranking, subset_spec
from muxrec.spec import load_spec

KS = {"ml-100k": (2, 3, 4, 5, 6), "synthetic": (4, 8, 12)}
CANDIDATES = 100  # rows in the rank request whose size and latency are measured
LATENCY_REPEATS = 50
WITHIN = 0.002  # ML-100K target: the smallest set within this validation AUC of all features


def _mean_std(values: list[float]) -> list[float]:
    return [round(statistics.fmean(values), 5), round(statistics.stdev(values), 5) if len(values) > 1 else 0.0]


def _fit(mf: Any, prepared: PreparedData, seed: int) -> tuple[torch.nn.Module, dict[str, float]]:
    """The model trained on `prepared` with `seed`: (model, {"valid": AUC, "test": AUC})."""
    inputs = prepared.inputs
    rows = {s: EncodedRows(prepared.read(s), inputs) for s in ("train", "valid", "test")}
    torch.manual_seed(seed)
    model = build_model(mf.architecture, make_config(mf.architecture, mf.model), inputs)
    fit_in_process(model, rows["train"], rows["valid"], inputs, replace(mf.train, seed=seed),
                   prepared.positive_rates("train"))
    return model, {s: evaluate_rows(model, rows[s], inputs, mf.train.eval_batch_size)["auc"] for s in ("valid", "test")}


def request_rows(prepared: PreparedData) -> pa.Table:
    """CANDIDATES raw test rows as a rank request carries them (histories as lists of item ids)."""
    spec = prepared.spec
    raw = add_histories(load_source(spec.source), spec)
    test = raw.filter(pc.equal(split_of(raw, spec), "test"))
    return test.slice(0, CANDIDATES)


def serving_cost(model: torch.nn.Module, mf: Any, prepared: PreparedData, raw: pa.Table,
                 registry: ArtifactRegistry) -> dict[str, Any]:
    """Table bytes, request bytes and in-process rank p50 of `model`, published and loaded as the Ranker does."""
    spec = prepared.spec
    version = registry.publish(f"bench-{spec.name}", model_files(model, mf.architecture,
                                                                 make_config(mf.architecture, mf.model), spec,
                                                                 prepared.vocab))
    loaded = load_model(version)
    columns = [c.name for c in spec.request_columns()]
    request = raw.select(columns)
    body = json.dumps({"candidates": [{k: v for k, v in r.items() if v is not None} for r in request.to_pylist()]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(5):
            loaded.predict_raw(request)
        samples = []
        for _ in range(LATENCY_REPEATS):
            t0 = time.perf_counter()
            loaded.predict_raw(request)
            samples.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return {"table_bytes": table_bytes(loaded.model), "request_bytes": len(body.encode()),
            "request_fields": len(columns), "rank_ms_p50": round(statistics.median(samples) * 1000, 3)}


def rankings(methods: Sequence[str], prepared: PreparedData, full_model: torch.nn.Module, seed: int,
             say: Callable[[str], None]) -> dict[str, FeatureRanking]:
    out = {}
    for method in methods:
        t0 = time.perf_counter()
        if method == "permutation":  # the first seed's full model, in-process (`muxrec select` runs it on Ray tasks)
            ranking = permutation_ranking(permutation_importance(full_model, prepared.read("valid"), prepared.inputs,
                                                                 seed=seed))
            ranking = replace(ranking, meta={**ranking.meta, "seconds": round(time.perf_counter() - t0, 2)})
        else:
            ranking = select(method, prepared, seed=seed)
        out[method] = ranking
        say(f"{method}: {', '.join(ranking.names)} ({ranking.meta['seconds']:.1f}s)")
    return out


def planted(ranking: FeatureRanking, truth: SyntheticTruth) -> dict[str, Any]:
    """Precision at k = planted informative features ranked, and whether the noise fields come last."""
    informative = [n for n in ranking.names if n in truth.informative]
    noise = [n for n in ranking.names if n in truth.noise]
    k = len(informative)
    return {"k": k, "precision_at_k": round(len(set(ranking.top(k)) & set(informative)) / k, 4) if k else None,
            "noise_last": set(ranking.names[len(ranking.names) - len(noise):]) == set(noise),
            "noise_ranks": [ranking.names.index(n) + 1 for n in noise]}


def bench_select(dataset: str, seeds: list[int], config_dir: Path, runs: Path, registry: ArtifactRegistry,
                 out_dir: Path | None, model: str = "deepfm", methods: Sequence[str] = METHODS,
                 ks: Sequence[int] | None = None, overrides: Sequence[str] = (),
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    if dataset not in KS:
        raise ConfigError(f"bench select runs on {sorted(KS)}, not {dataset!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown selection methods {unknown}; methods: {list(METHODS)}")
    say = progress or (lambda line: None)
    prepared = prepare_cached(load_spec(config_dir / f"{dataset}.yaml"), runs / "prepared")
    mf = with_overrides(load_model_file(config_dir / "models" / f"{model}.yaml"), overrides)
    ks = sorted(k for k in (ks or KS[dataset]) if k < len(prepared.spec.features))
    raw = request_rows(prepared)
    truth = generate(SyntheticConfig(**prepared.spec.source.options))[1] if dataset == "synthetic" else None

    # Every distinct feature set, trained once per seed; all features first.
    trained: dict[frozenset[str], dict[str, Any]] = {}

    def train_set(features: tuple[str, ...]) -> dict[str, Any]:
        key = frozenset(features)
        if key in trained:
            return trained[key]
        every = len(features) == len(prepared.spec.features)
        data = prepared if every else prepare_cached(
            subset_spec(prepared.spec, features, f"{prepared.spec.name}-bench-{len(trained)}"), runs / "prepared")
        per_seed, first = [], None
        for seed in seeds:
            m, aucs = _fit(mf, data, seed)
            first = first or m
            per_seed.append(aucs)
        trained[key] = {"features": sorted(features), "k": len(features),
                        "valid_auc": _mean_std([a["valid"] for a in per_seed]),
                        "test_auc": _mean_std([a["test"] for a in per_seed]),
                        "model": first, **serving_cost(first, mf, data, raw, registry)}
        say(f"{len(features)} features: valid {trained[key]['valid_auc'][0]:.4f}, "
            f"test {trained[key]['test_auc'][0]:.4f}, rank p50 {trained[key]['rank_ms_p50']:.2f} ms")
        return trained[key]

    full = train_set(tuple(f.name for f in prepared.spec.features))
    ranked = rankings(methods, prepared, full["model"], seeds[0], say)
    row: dict[str, Any] = {"dataset": dataset, "model": model, "seeds": seeds, "ks": ks, "overrides": list(overrides),
                           "rows": prepared.stats["splits"], "methods": {}}
    for method, ranking in ranked.items():
        entry: dict[str, Any] = {"ranking": [[f.name, round(f.score, 6)] for f in ranking.features],
                                 "seconds": ranking.meta["seconds"], "subsets": {}}
        for k in ks:
            entry["subsets"][str(k)] = _summary(train_set(ranking.top(k)))
        if ranking.meta.get("kept"):  # OptFS: the set it chose itself
            entry["kept"] = _summary(train_set(tuple(ranking.meta["kept"])))
        if dataset == "synthetic":
            entry["planted"] = planted(ranking, truth)
        row["methods"][method] = entry
    row["all"] = _summary(full)
    row["targets"] = targets(row, dataset)
    row.update(commit=commit(), machine=machine())
    if out_dir is not None:
        write_result(out_dir, f"select-{dataset}", row)
        write_report(row, out_dir)
    return row


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "model"}


def targets(row: dict[str, Any], dataset: str) -> dict[str, Any]:
    if dataset == "synthetic":
        per = {m: e["planted"] for m, e in row["methods"].items()}
        return {"per_method": per,
                "met": all(per[m]["precision_at_k"] == 1.0 for m in ("optfs", "outrank") if m in per)
                and all(p["noise_last"] for p in per.values())}
    full = row["all"]
    sets = [s for e in row["methods"].values() for s in [*e["subsets"].values(), *([e["kept"]] if "kept" in e else [])]]
    close = [s for s in sets if s["valid_auc"][0] >= full["valid_auc"][0] - WITHIN]
    best = min(close, key=lambda s: (s["k"], -s["valid_auc"][0]), default=None)
    if best is None:
        return {"met": False, "why": f"no feature set within {WITHIN} validation AUC of all features"}
    return {"met": True, "chosen_on": "valid", "features": best["features"], "k": best["k"],
            "valid_auc": best["valid_auc"], "test_auc": best["test_auc"], "all_test_auc": full["test_auc"],
            "rank_ms_ratio": round(best["rank_ms_p50"] / full["rank_ms_p50"], 3),
            "table_bytes_ratio": round(best["table_bytes"] / full["table_bytes"], 4),
            "request_bytes_ratio": round(best["request_bytes"] / full["request_bytes"], 3)}


def write_report(row: dict[str, Any], out_dir: Path) -> None:
    dataset, full = row["dataset"], row["all"]
    fmt = lambda ms: f"{ms[0]:.4f} ± {ms[1]:.4f}"  # noqa: E731
    lines = [
        f"# Feature selection: {dataset}",
        "",
        f"Model `{row['model']}`, seeds {row['seeds']}, one run, in-process training on the prepared rows "
        f"(top-k specs read them as views). Made by `muxrec bench select --dataset {dataset} --seeds "
        f"{','.join(map(str, row['seeds']))}" + "".join(f" --set {o}" for o in row["overrides"]) + "`.",
        "",
        f"All {len(full['features'])} features: valid AUC {fmt(full['valid_auc'])}, test AUC {fmt(full['test_auc'])}, "
        f"tables {full['table_bytes'] / 1e6:.2f} MB, request {full['request_bytes']} B, "
        f"rank p50 {full['rank_ms_p50']:.2f} ms ({CANDIDATES} candidates, in-process, one thread).",
        "",
        "## Test AUC of the model retrained on each method's top k",
        "",
        "| method | run time (s) | " + " | ".join(f"k={k}" for k in row["ks"]) + " | own set |",
        "|---|---|" + "---|" * len(row["ks"]) + "---|",
    ]
    for method, e in row["methods"].items():
        own = f"{fmt(e['kept']['test_auc'])} (k={e['kept']['k']})" if "kept" in e else ""
        lines.append(f"| {method} | {e['seconds']:.1f} | "
                     + " | ".join(fmt(e["subsets"][str(k)]["test_auc"]) for k in row["ks"]) + f" | {own} |")
    lines += ["", "## Rankings", "", "| method | best first |", "|---|---|",
              *[f"| {m} | {', '.join(n for n, _ in e['ranking'])} |" for m, e in row["methods"].items()]]
    t = row["targets"]
    if dataset == "synthetic":
        lines += ["", "## Planted features", "", "| method | k planted | precision at k | noise ranks | noise last |",
                  "|---|---|---|---|---|",
                  *[f"| {m} | {p['k']} | {p['precision_at_k']} | {p['noise_ranks']} | {p['noise_last']} |"
                    for m, p in t["per_method"].items()],
                  "", f"Target (precision 1.0 for OptFS and OutRank, noise last for every method): "
                      f"**{'met' if t['met'] else 'not met'}**."]
    elif t["met"]:
        lines += ["", f"## Smallest set within {WITHIN} validation AUC of all features", "",
                  f"{t['k']} features ({', '.join(t['features'])}): valid AUC {fmt(t['valid_auc'])}, "
                  f"test AUC {fmt(t['test_auc'])} (all: {fmt(t['all_test_auc'])}). Serving it: rank p50 "
                  f"x{t['rank_ms_ratio']}, embedding bytes x{t['table_bytes_ratio']}, request bytes "
                  f"x{t['request_bytes_ratio']} of all features'."]
    else:
        lines += ["", f"Target: {t['why']}."]
    (out_dir / f"select-{dataset}.md").write_text("\n".join(lines) + "\n")
    _plot(row, out_dir / f"select-{dataset}.png")


def _plot(row: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    full = row["all"]
    for method, e in row["methods"].items():
        ks = row["ks"]
        means = [e["subsets"][str(k)]["test_auc"][0] for k in ks]
        stds = [e["subsets"][str(k)]["test_auc"][1] for k in ks]
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=method)
        bx.plot([e["subsets"][str(k)]["rank_ms_p50"] for k in ks], means, marker="o", label=method)
    for a in (ax, bx):
        a.axhline(full["test_auc"][0], color="grey", ls="--", label=f"all {len(full['features'])} features")
        a.set_ylabel("test AUC")
    ax.set_xlabel("top k features")
    bx.set_xlabel(f"rank p50 (ms, {CANDIDATES} candidates, in-process)")
    ax.set_title(f"{row['dataset']}: retrained on each method's top k")
    bx.set_title("AUC against serving latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
