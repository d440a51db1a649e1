"""`muxrec bench embedding`: test AUC against embedding bytes, per compression method and memory budget.

    muxrec bench embedding --dataset ml-100k --model deepfm,autoint --seeds 2026,2027,2028 --json

The budget is a fraction of the rows of full per-feature tables (the spec as written, its vocabularies
fitted on train rows). Per budget b every id table (a feature's own, or a shared one; not text or
bucketized tables) is shrunk to about b of its rows by:

    hash      the hashing trick: each table of max(2, b * rows) rows, values hashed in
    unified   Unified Embedding: one multiplexed table of b * (the own tables' rows), every feature with
              its own table hashed in by its own seed (TableSpec.multiplex); a shared table read by
              a history cannot be multiplexed and is hashed to b of its rows
    qr        quotient-remainder per table, m chosen so ceil(rows / m) + m is the largest fit under
              b * rows; a table too small to gain (2 * sqrt(rows) > b * rows) takes the smallest QR
              it has, so its bytes overshoot and are reported as they are
    mixed     mixed dims by frequency per table: the most frequent fraction h of rows at the model's
              width D, the rest at D / 8, h chosen so the rows weigh b of the full table; below
              b = 2 / D every row at max(1, b * D) dims
    matryoshka  every table trained at nested widths (powers of two from k to D) and published cut
              to its first k = max(1, b * D) values
    prune     magnitude pruning per table, keeping the fraction of values whose sparse rows (4 bytes a
              value, 1 a column index, 4 a row offset) weigh b of the dense rows; none fits when the
              offsets alone do (b <= 1 / D), so the method has no run there

    int8, int4  every row kept, stored row-wise quantized when published (trained as float32);
              `hash+int4`, `unified+int4`: the row-shrinking method, then quantized

Budget 1 is the full tables (one row, `full`). Data is fitted and encoded in-process (the same
muxrec.encoding functions the Ray pipeline maps over its blocks); each (method, budget, model, seed)
trains with the in-process loop (`muxrec.pipelines.loop`, the code a Ray Train worker runs), keeps the
epoch with the best validation AUC (early stopping by the model YAML's patience) and is scored on the
test split (quantized methods: as served, after quantization). Bytes are those of the embedding tables by
each method's formula (`EmbeddingTable.num_bytes`, first-order tables included): serving bytes as
published (quantized where asked), training bytes the float32 tables and Adam's two moments, so 3x. A table under docs/benchmarks/embedding-<dataset>.md and a plot (test AUC
against bytes, one line per method, one panel per model) beside it.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pyarrow.compute as pc
import torch

from muxrec.benchmarks.ctr import forward_latency
from muxrec.benchmarks.environment import commit, machine, write_result
from muxrec.config import load_model_file
from muxrec.data import load_source
from muxrec.encoding import (SPLIT_COLUMN, Vocabulary, count_values, derive, encode, moments, quantile_sketch)
from muxrec.errors import ConfigError
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.models.encoders.content import ContentVectors
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.serialization import serving_copy
from muxrec.pipelines.loop import evaluate_rows, fit_in_process
from muxrec.spec import FeatureKind, FeatureSpec, ModelInputs, load_spec, parse_spec

METHODS = ("hash", "unified", "qr", "mixed", "matryoshka", "prune", "int8", "int4", "hash+int4", "unified+int4")
QUANTIZED = ("int8", "int4")  # serving storage: alone at full rows, or after a `+` on a row-shrinking method
BUDGETS = (1.0, 1 / 4, 1 / 16, 1 / 64)
ADAM_COPIES = 3  # the weight and Adam's two moments
ID_KINDS = (FeatureKind.CATEGORICAL, FeatureKind.MULTI_CATEGORICAL)


def qr_buckets(rows: int, target: int) -> int | None:
    """m for a QR table of `rows` within `target` rows (ceil(rows / m) + m <= target, the largest such
    total); the m of the smallest QR table when none fits; None when QR cannot shrink the table at all."""
    if rows <= 4:
        return None
    fits = [(math.ceil(rows / m) + m, m) for m in range(2, rows) if math.ceil(rows / m) + m <= target]
    if fits:
        return max(fits)[1]
    return min((math.ceil(rows / m) + m, m) for m in range(2, rows))[1]


def mixed_blocks(budget: float, dim: int) -> list[list[float]]:
    """mixed_dim blocks weighing about `budget` of a dense table `dim` wide (projections aside)."""
    tail = max(1, dim // 8)
    if budget * dim < 2 * tail:
        return [[1.0, max(1, round(budget * dim))]]
    head = (budget - tail / dim) / (1 - tail / dim)
    return [[round(head, 4), dim], [1.0, tail]]


def prune_keep(budget: float, dim: int) -> float | None:
    """The fraction of values a pruned table keeps so that its sparse rows weigh `budget` of the dense
    ones (4 * dim bytes a row; sparse: keep * dim * (4 + 1) + 4), or None when none fits."""
    keep = (budget * 4 * dim - 4) / (5 * dim)
    return round(min(keep, 0.99), 4) if keep > 0 else None


def _shrink(settings: dict[str, Any], rows: int, method: str, budget: float, dim: int, hashed: bool) -> None:
    """Set one table's options (a feature's inline ones, or a shared table's) for `method` at `budget`."""
    target = max(2, round(rows * budget))
    if method in ("hash", "unified"):  # unified: a shared table read by a history is hashed instead
        settings.pop("min_count", None)
        settings["hash_buckets"] = target - 1  # + the missing-value row
    elif method == "qr":
        m = qr_buckets(rows, target)
        if m is not None:
            settings["compression"] = {"method": "qr", "buckets": m}
    elif method == "mixed" and not hashed:
        settings["compression"] = {"method": "mixed_dim", "blocks": mixed_blocks(budget, dim)}
    elif method == "prune":
        keep = prune_keep(budget, dim)
        if keep is not None:
            settings["compression"] = {"method": "prune", "keep": keep}
    elif method == "matryoshka":
        keep = max(1, round(budget * dim))
        nested = sorted({keep} | {2 ** p for p in range(8) if keep <= 2 ** p < dim})
        settings["compression"] = {"method": "matryoshka", "dims": nested, "serve_dim": keep}


def budget_spec(spec: FeatureSpec, rows: dict[str, int], method: str, budget: float, dim: int = 16) -> FeatureSpec:
    """`spec` with its id tables shrunk to about `budget` of `rows` (table -> fitted rows) by `method`
    (`dim`: the model's width, for mixed dims). Features with their own table and shared tables are
    shrunk; tables of text or bucketized numbers are left as they are."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    data["name"] = f"{spec.name}-{method.replace('+', '-')}-{budget:g}"
    method, _, bits = method.partition("+")
    if method in QUANTIZED:
        method, bits = "full", method
    if method not in METHODS + ("full",) or (bits and bits not in QUANTIZED):
        raise ConfigError(f"unknown method {'+'.join(filter(None, (method, bits)))!r}; methods: {list(METHODS)}")
    quantize = {"quantize": bits} if bits else {}
    own = [f.name for f in spec.features if f.kind in ID_KINDS and f.table is None and f.bucketize is None]
    shared = [t.name for t in spec.tables_list() if t.name in spec.tables and not t.multiplex
              and all(spec.feature(n).kind != FeatureKind.TEXT for n in t.features)]
    if method == "unified":
        total = sum(rows[name] for name in own)
        data["tables"] = {**data.get("tables", {}), "unified": {"hash_buckets": max(1, round(total * budget) - 1),
                                                                "multiplex": True, **quantize}}
    for name in shared:
        table = data["tables"][name]
        table.update(quantize)
        if method != "full":
            _shrink(table, rows[name], method, budget, dim, spec.tables[name].hash_buckets is not None)
    for item in data["features"]:
        if item["name"] not in own:
            continue
        if method == "unified":
            item["table"] = "unified"
            continue
        item.update(quantize)
        if method != "full":
            _shrink(item, rows[item["name"]], method, budget, dim, spec.feature(item["name"]).hash_buckets is not None)
    return parse_spec(data)


def encoded_splits(spec: FeatureSpec, raw, content: ContentVectors | None = None
                   ) -> tuple[ModelInputs, dict[str, EncodedRows], dict[str, float]]:
    """Fit on train rows and encode every split, in-process; (inputs, rows per split, positive rates).
    A spec with content features needs their encoders (`content`)."""
    derived = derive(raw, spec)
    if spec.content:
        derived = content.attach(derived)
    parts = {s: derived.filter(pc.equal(derived[SPLIT_COLUMN], s)) for s in ("train", "valid", "test")}
    train = parts["train"]
    vocab = Vocabulary.fit(spec, count_values(train, spec), moments(train, spec), quantile_sketch(train, spec))
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    rows = {s: EncodedRows(encode(t, spec, vocab), inputs) for s, t in parts.items()}
    rates = {c: float(pc.mean(train[c]).as_py()) for c in inputs.label_columns}
    return inputs, rows, rates


def table_bytes(model: torch.nn.Module) -> int:
    """Bytes of every embedding table in `model` (field and first-order ones), by each method's formula."""
    return sum(m.num_bytes() for m in model.modules() if isinstance(m, FeatureEmbedding))


def _fit(architecture: str, cfg: Any, train_cfg: Any, inputs: ModelInputs, rows: dict[str, EncodedRows],
         rates: dict[str, float]) -> dict[str, Any]:
    """Train with early stopping on validation AUC; the best epoch's test metrics."""
    torch.manual_seed(train_cfg.seed)
    model = build_model(architecture, cfg, inputs)
    fitted = fit_in_process(model, rows["train"], rows["valid"], inputs, train_cfg, rates)
    best, best_epoch, seconds = fitted.valid_auc, fitted.best_epoch, fitted.seconds
    served, _ = serving_copy(model)  # what a published version holds and scores with
    test = evaluate_rows(served, rows["test"], inputs, train_cfg.eval_batch_size)
    latency = forward_latency(served, rows["test"], reps=20)
    return {"latency_ms_b1000": latency["latency_ms_b1000"],"valid_auc": best, "test_auc": test["auc"], "test_logloss": test["logloss"], "best_epoch": best_epoch,
            "train_seconds": round(seconds, 1), "train_bytes": ADAM_COPIES * table_bytes(model),
            "serve_bytes": table_bytes(served), "stored_rows": _stored_rows(model),
            "resident_bytes": resident_bytes(served)}


def resident_bytes(model: torch.nn.Module) -> int:
    """What the served model holds in memory: every parameter and buffer (tables, MLPs, masks), once."""
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    return sum(seen.values())


def _stored_rows(model: torch.nn.Module) -> int:
    """Rows the model's field tables store (a QR table: both parts)."""
    return sum(t.num_bytes() // (4 * t.dim) for t in model.embedding.tables().values())


def _variants(methods: list[str], budgets: list[float]) -> list[tuple[str, float]]:
    """(method, budget) pairs to run: full tables at budget 1, a quantization alone at budget 1 only
    (it keeps every row), the others at every budget below 1."""
    out = [("full", 1.0)] if 1.0 in budgets else []
    out += [(m, 1.0) for m in methods if m in QUANTIZED]
    return out + [(m, b) for m in methods if m not in QUANTIZED for b in budgets if b != 1.0]


def bench_embedding(dataset: str, models: list[str], seeds: list[int], config_dir: Path, out_dir: Path | None,
                    methods: list[str] = list(METHODS), budgets: list[float] = list(BUDGETS),
                    progress=None) -> Iterator[dict[str, Any]]:
    """One result row per (model, method, budget): mean test AUC over seeds and the tables' bytes."""
    unknown = [m for m in methods if m not in METHODS and m.partition("+")[0] not in ("hash", "unified", "qr", "mixed",
                                                                                      "matryoshka", "prune")]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; methods: {list(METHODS)}")
    if any(not 0 < b <= 1 for b in budgets):
        raise ConfigError(f"budgets are fractions in (0, 1], got {budgets}")
    spec_path = config_dir / f"{dataset}.yaml"
    if not spec_path.is_file():
        raise ConfigError(f"no dataset spec {spec_path}; datasets: {sorted(p.stem for p in config_dir.glob('*.yaml'))}")
    spec = load_spec(spec_path)
    raw = load_source(spec.source)
    full_inputs, _, _ = encoded_splits(spec, raw)
    rows_of = {t.name: t.num_embeddings for t in full_inputs.tables}
    full_rows = sum(rows_of.values())
    files = {name: load_model_file(config_dir / "models" / f"{name}.yaml") for name in models}
    configs = {name: make_config(mf.architecture, mf.model) for name, mf in files.items()}
    dim = configs[models[0]].embedding_dim
    for method, budget in _variants(methods, budgets):
        if method.partition("+")[0] == "prune" and prune_keep(budget, dim) is None:
            if progress is not None:
                progress(f"prune {budget:g}: no run (a sparse row's offset alone weighs {budget:g} of a dense row)")
            continue
        variant = spec if method == "full" else budget_spec(spec, rows_of, method, budget, dim)
        inputs, rows, rates = encoded_splits(variant, raw)
        for name in models:
            mf, cfg = files[name], configs[name]
            runs = []
            for seed in seeds:
                runs.append(_fit(mf.architecture, cfg, replace(mf.train, seed=seed), inputs, rows, rates))
                if progress is not None:
                    progress(f"{name} {method} {budget:g} seed {seed}: test AUC {runs[-1]['test_auc']:.4f}, "
                             f"{runs[-1]['serve_bytes']:,} bytes")
            aucs = [r["test_auc"] for r in runs]
            row = {
                "dataset": dataset, "model": name, "method": method, "budget": budget, "seeds": seeds,
                "stored_rows": runs[0]["stored_rows"], "full_rows": full_rows,
                "test_auc": round(statistics.fmean(aucs), 5),
                "test_auc_std": round(statistics.stdev(aucs), 5) if len(aucs) > 1 else 0.0,
                "valid_auc": round(statistics.fmean(r["valid_auc"] for r in runs), 5),
                "serve_bytes": runs[0]["serve_bytes"], "train_bytes": runs[0]["train_bytes"],
                "resident_bytes": runs[0]["resident_bytes"],
                "train_seconds": round(statistics.fmean(r["train_seconds"] for r in runs), 1),
                "latency_ms_b1000": round(statistics.median(r["latency_ms_b1000"] for r in runs), 3),
                "per_seed": runs, "commit": commit(), "machine": machine(),
            }
            if out_dir is not None:
                save_result(row, out_dir)
            yield row


def save_result(row: dict[str, Any], out_dir: Path) -> None:
    write_result(out_dir, f"embedding-{row['dataset']}-{row['model']}-{row['method']}-{row['budget']:g}", row)
    write_report(row["dataset"], out_dir)


def _saved(dataset: str, out_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(p.read_text()) for p in sorted((out_dir / "results").glob(f"embedding-{dataset}-*.json"))]
    return [r for r in rows if r["dataset"] == dataset]


BUDGET_SLACK = 1.15  # a row counts at a budget while its serving bytes are within 15% over it


def winners(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """(model, budget) -> the row with the best test AUC among those whose serving bytes fit the budget
    (budget x the full tables' bytes, BUDGET_SLACK over allowed): a QR table that could not shrink
    enough, or int8 at full rows, competes at the budget its bytes reach, not the one it was asked for."""
    full = {r["model"]: r["serve_bytes"] for r in rows if r["method"] == "full"}
    best: dict[tuple[str, float], dict[str, Any]] = {}
    for level in sorted({r["budget"] for r in rows}):
        for r in rows:
            if r["model"] not in full or r["serve_bytes"] > level * full[r["model"]] * BUDGET_SLACK:
                continue
            key = (r["model"], level)
            if key not in best or r["test_auc"] > best[key]["test_auc"]:
                best[key] = r
    return best


def write_report(dataset: str, out_dir: Path) -> None:
    rows = sorted(_saved(dataset, out_dir), key=lambda r: (r["model"], -r["budget"], r["method"]))
    if not rows:
        return
    full = {r["model"]: r for r in rows if r["method"] == "full"}
    best = winners(rows)
    lines = [
        f"# Embedding compression: {dataset}",
        "",
        "Test AUC against the bytes of the embedding tables, per method and memory budget (a fraction of the "
        f"full per-feature tables' rows). Protocol and features: `configs/{dataset}.yaml`; models from "
        "`configs/models/`; in-process training with early stopping on validation AUC, test AUC of the best "
        "epoch, mean ± std over seeds; latency: median CPU forward pass of 1000 test rows, one thread, as "
        "served. Serving bytes: the tables as published (float32, or quantized where the method says); "
        "training bytes: the float32 tables and Adam's two moments (3x); served model in memory: every parameter "
        "and buffer of the model as served, tables and MLPs (runs before this column existed show -). How each "
        "method meets a budget: "
        "`benchmarks/embedding.py`.",
        "",
        f"Made by `muxrec bench embedding --dataset {dataset} --model {','.join(sorted(full) or ['deepfm'])} "
        f"--seeds {','.join(str(s) for s in rows[0]['seeds'])} --json`.",
        "",
        "## Best method at each budget",
        "",
        f"Among the rows whose serving bytes fit the budget (x the full tables' bytes, {BUDGET_SLACK - 1:.0%} "
        "slack).",
        "",
        "| model | budget | best method | its bytes / full | test AUC | vs full |",
        "|---|---|---|---|---|---|",
    ]
    for (model, level), r in sorted(best.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        base = full[model]
        lines.append(f"| {model} | {level:g} | {r['method']} (asked {r['budget']:g}) | "
                     f"{r['serve_bytes'] / base['serve_bytes']:.3f} | {r['test_auc']:.4f} | "
                     f"{r['test_auc'] - base['test_auc']:+.4f} |")
    lines += [
        "",
        "## Every run",
        "",
        "Dense-row equivalent: the field tables' float32 bytes in training / (4 x their width), the rows of a "
        "dense table that would weigh the same.",
        "",
        "| model | method | budget | dense-row equivalent | serving bytes | bytes / full | training bytes | served model "
        "in memory | test AUC | vs full | valid AUC | ms / 1000 rows | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = full.get(r["model"])
        delta = f"{r['test_auc'] - base['test_auc']:+.4f}" if base else "-"
        ratio = f"{r['serve_bytes'] / base['serve_bytes']:.3f}" if base else "-"
        lines.append(f"| {r['model']} | {r['method']} | {r['budget']:g} | {r['stored_rows']:,} | {r['serve_bytes']:,} | "
                     f"{ratio} | {r['train_bytes']:,} | " + (f"{r['resident_bytes']:,}" if "resident_bytes" in r else "-")
                     + f" | {r['test_auc']:.4f} ± {r['test_auc_std']:.4f} | {delta} | "
                     f"{r['valid_auc']:.4f} | "
                     + (f"{r['latency_ms_b1000']:.2f}" if "latency_ms_b1000" in r else "-") + f" | {r['commit'] or '-'} |")
    lines += ["", f"![test AUC against table bytes](embedding-{dataset}.png)", ""]
    (out_dir / f"embedding-{dataset}.md").write_text("\n".join(lines))
    _plot(dataset, rows, out_dir / f"embedding-{dataset}.png")


def _plot(dataset: str, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        full = [r for r in mine if r["method"] == "full"]
        for method in sorted({r["method"] for r in mine} - {"full"}):
            line = sorted([r for r in mine if r["method"] == method] + full, key=lambda r: r["serve_bytes"])
            if len(line) > len(full):
                ax.errorbar([r["serve_bytes"] for r in line], [r["test_auc"] for r in line],
                            yerr=[r["test_auc_std"] for r in line], marker="o", capsize=3, label=method)
        if full:
            ax.axhline(full[0]["test_auc"] - 0.002, color="grey", lw=0.8, ls="--", label="full - 0.002")
        ax.set_xscale("log")
        ax.set_xlabel("embedding table bytes, serving (log scale)")
        ax.set_ylabel("test AUC")
        ax.set_title(f"{model} on {dataset}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
