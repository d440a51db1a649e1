"""`muxrec bench mtl`: per-task test AUC of every multi-task model beside single-task training, one run.

    muxrec bench mtl --dataset ml-100k-mtl --seeds 2026,2027,2028 --json
    muxrec bench mtl --dataset synthetic --seeds 2026,2027,2028 --json

Per seed, each multi-task model (configs/models/<name>.yaml) trains on the dataset's spec as written
(every label a task, early stopping on the spec's blend of validation AUCs; every task weighed
equally where the spec declares no blend, as configs/synthetic.yaml does), and the single-task model
(`--single`, default DeepFM and Shared-Bottom: the latter is the multi-task models' own
shared part, so a gain over it is the tasks', not the architecture's) trains once per task on a spec holding that label alone (its parent
dropped: it is then an ordinary label over all rows), with early stopping on that task. Everything
is trained in-process with the loop a Ray Train worker runs (muxrec.pipelines.loop), on the data
encoded once (muxrec.encoding, as `bench embedding` does). Test AUC of the best epoch, per task, on
all rows and, for a task with a parent, on the parent's positive rows; mean ± std over seeds.

Also recorded: whether a chained model's P(child) <= P(parent) on every test row (ESMM's promise),
and the mean gate weight per expert per task on test rows (do experts specialise?).

Targets (issue 12): on ML-100K the best multi-task model beats the best single-task model on `love` by
>= 0.005 AUC without losing more than 0.002 on `like`; on synthetic, conversion AUC above the
single-task model's. A table and a plot under docs/benchmarks/mtl-<dataset>.md / .png.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from muxrec.benchmarks.embedding import encoded_splits
from muxrec.benchmarks.environment import commit, machine, write_result
from muxrec.config import TrainConfig, load_model_file, with_overrides
from muxrec.data import load_source
from muxrec.errors import ConfigError
from muxrec.models import EncodedRows, build_model, make_config
from muxrec.models.multitask import expert_utilisation
from muxrec.pipelines.loop import evaluate_rows, fit_in_process
from muxrec.spec import FeatureSpec, ModelInputs, load_spec, parse_spec

MTL_MODELS = ("shared_bottom", "mmoe", "ple", "esmm", "apem", "task_expert")


def single_task_spec(spec: FeatureSpec, task: str) -> FeatureSpec:
    """`spec` with the label `task` alone (no parent, no blend): single-task training on it."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    data["labels"] = [{k: v for k, v in label.items() if k != "parent"} for label in data["labels"]
                      if label["name"] == task]
    data.pop("blend", None)
    return parse_spec(data)


def with_blend(spec: FeatureSpec) -> FeatureSpec:
    """`spec`, weighing every task equally when it declares no blend (whose default, the first task
    alone, would early-stop a multi-task model on one task)."""
    if spec.blend or len(spec.labels) < 2:
        return spec
    data = spec.model_dump(mode="json", exclude_defaults=True)
    data["blend"] = {t: 1.0 for t in spec.label_names}
    return parse_spec(data)


def fit(architecture: str, cfg: Any, train_cfg: TrainConfig, inputs: ModelInputs, rows: dict[str, EncodedRows],
        rates: dict[str, float]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train with early stopping on the blended validation AUC; the best epoch's model and figures."""
    torch.manual_seed(train_cfg.seed)
    model = build_model(architecture, cfg, inputs)
    fitted = fit_in_process(model, rows["train"], rows["valid"], inputs, train_cfg, rates)
    weights = fitted.objective.task_weights()
    return model, {"valid_auc": fitted.valid_auc, "best_epoch": fitted.best_epoch, "train_seconds": fitted.seconds,
                   "task_weights": {inputs.tasks[t]: round(w, 4) for t, w in weights.items()}}


def funnel_violations(model: torch.nn.Module, rows: EncodedRows, inputs: ModelInputs, batch_size: int) -> dict:
    """Per task with a parent: on how many rows P(task) > P(parent) (+1e-6), and the largest excess."""
    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(model(b)) for b in rows.batches(batch_size)]).numpy()  # (N, T)
    out = {}
    for t, task in enumerate(inputs.tasks[:probs.shape[1]]):
        p = inputs.parent_index(task)
        if p is not None and p < probs.shape[1]:
            excess = probs[:, t] - probs[:, p]
            out[task] = {"rows_over_parent": int((excess > 1e-6).sum()), "max_excess": float(max(excess.max(), 0.0))}
    return out


def bench_mtl(dataset: str, models: list[str], singles: list[str], seeds: list[int], config_dir: Path,
              out_dir: Path | None, progress: Callable[[str], None] | None = None,
              overrides: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """One result row per model (each multi-task model, then each single-task model per task).

    `overrides` (`train.lr=5e-3`) apply to every model's YAML, e.g. the synthetic protocol's training."""
    spec_path = config_dir / f"{dataset}.yaml"
    if not spec_path.is_file():
        raise ConfigError(f"no dataset spec {spec_path}; datasets: {sorted(p.stem for p in config_dir.glob('*.yaml'))}")
    spec = with_blend(load_spec(spec_path))
    if len(spec.labels) < 2:
        raise ConfigError(f"{spec_path}: a multi-task benchmark needs a spec with several labels, it has "
                          f"{spec.label_names}")
    files = {name: with_overrides(load_model_file(config_dir / "models" / f"{name}.yaml"), overrides)
             for name in [*models, *singles]}
    configs = {name: make_config(mf.architecture, mf.model) for name, mf in files.items()}
    raw = load_source(spec.source)
    say = progress or (lambda line: None)

    def runs(name: str, variant: FeatureSpec, tasks: list[str]) -> dict[str, Any]:
        inputs, rows, rates = encoded_splits(variant, raw)
        mf, per_seed = files[name], []
        for seed in seeds:
            train_cfg = replace(mf.train, seed=seed)
            model, run = fit(mf.architecture, configs[name], train_cfg, inputs, rows, rates)
            test = evaluate_rows(model, rows["test"], inputs, train_cfg.eval_batch_size)
            run["test"] = {k: v for k, v in test.items() if k.endswith("_auc")}
            run["funnel"] = funnel_violations(model, rows["test"], inputs, train_cfg.eval_batch_size)
            if hasattr(model, "gates"):
                run["experts"] = expert_utilisation(model, rows["test"].batches(train_cfg.eval_batch_size))
            per_seed.append(run)
            say(f"{name} seed {seed}: " + ", ".join(f"{t} {test[f'{t}_auc']:.4f}" for t in tasks)
                + f" ({run['train_seconds']:.0f}s)")
        keys = sorted({k for r in per_seed for k in r["test"]})
        return {"per_seed": per_seed, "test_auc": {k.removesuffix("_auc"): _mean_std([r["test"][k] for r in per_seed])
                                                   for k in keys if all(k in r["test"] for r in per_seed)}}

    for name in models:
        result = runs(name, spec, spec.label_names)
        row = {"dataset": dataset, "model": name, "kind": "multi-task", "tasks": spec.label_names, "seeds": seeds,
               "blend": spec.task_blend, "overrides": list(overrides), **result, "commit": commit(),
               "machine": machine()}
        _save(row, out_dir)
        yield row
    for single in singles:
        for task in spec.label_names:
            result = runs(single, single_task_spec(spec, task), [task])
            row = {"dataset": dataset, "model": f"{single} ({task} alone)", "kind": "single-task", "tasks": [task],
                   "seeds": seeds, "overrides": list(overrides), **result, "commit": commit(), "machine": machine()}
            _save(row, out_dir)
            yield row


def _mean_std(values: list[float]) -> list[float]:
    return [round(statistics.fmean(values), 5), round(statistics.stdev(values), 5) if len(values) > 1 else 0.0]


def _save(row: dict[str, Any], out_dir: Path | None) -> None:
    if out_dir is None:
        return
    slug = row["model"].replace(" (", "-").replace(" alone)", "")
    write_result(out_dir, f"mtl-{row['dataset']}-{slug}", row)
    write_report(row["dataset"], out_dir)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each task's best single-task AUC (over the single-task models), the best multi-task model on each
    task, and its gain over that."""
    single: dict[str, float] = {}
    for r in rows:
        if r["kind"] == "single-task":
            task = r["tasks"][0]
            single[task] = max(single.get(task, -1.0), r["test_auc"][task][0])
    multi = [r for r in rows if r["kind"] == "multi-task"]
    out: dict[str, Any] = {"single_task": single, "best": {}}
    for task in single:
        scored = [(r["test_auc"][task][0], r["model"]) for r in multi if task in r["test_auc"]]
        if scored:
            auc, model = max(scored)
            out["best"][task] = {"model": model, "test_auc": auc, "vs_single": round(auc - single[task], 5)}
    # Per model: its gain on every task over the single-task models (the ML-100K target reads this).
    out["gains"] = {r["model"]: {t: round(r["test_auc"][t][0] - single[t], 5) for t in single if t in r["test_auc"]}
                    for r in multi}
    return out


def _saved(dataset: str, out_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(p.read_text()) for p in sorted((out_dir / "results").glob(f"mtl-{dataset}-*.json"))]
    return sorted([r for r in rows if r["dataset"] == dataset], key=lambda r: (r["kind"] != "multi-task", r["model"]))


def write_report(dataset: str, out_dir: Path) -> None:
    rows = _saved(dataset, out_dir)
    if not rows:
        return
    tasks = rows[0]["tasks"] if rows[0]["kind"] == "multi-task" else sorted({t for r in rows for t in r["tasks"]})
    given = sorted({k for r in rows for k in r["test_auc"] if "_given_" in k})
    s = summary(rows)
    lines = [
        f"# Multi-task learning: {dataset}",
        "",
        f"Test AUC per task, mean ± std over seeds {rows[0]['seeds']}, every multi-task model beside the single-task "
        f"model trained on each task alone, in one run. Spec: `configs/{dataset}.yaml`; models: `configs/models/`; "
        "in-process training, early stopping on validation AUC (multi-task: the spec's blend of tasks, "
        f"here {rows[0].get('blend') or 'equal weights'}). "
        "`x_given_y`: AUC of task x on the rows where its parent y happened. Funnel: test rows where "
        "P(child) > P(parent).",
        "",
        f"Made by `muxrec bench mtl --dataset {dataset} --seeds {','.join(str(x) for x in rows[0]['seeds'])}"
        + "".join(f" --set {o}" for o in rows[0].get("overrides", [])) + " --json`.",
        "",
        "| model | " + " | ".join(tasks + given) + " | funnel rows over parent | s / run |",
        "|---|" + "---|" * (len(tasks) + len(given)) + "---|---|",
    ]
    for r in rows:
        cells = []
        for t in tasks + given:
            if t in r["test_auc"]:
                mean, std = r["test_auc"][t]
                base = s["single_task"].get(t)
                delta = f" ({mean - base:+.4f})" if base is not None and r["kind"] == "multi-task" else ""
                cells.append(f"{mean:.4f} ± {std:.4f}{delta}")
            else:
                cells.append("-")
        over = sum(v["rows_over_parent"] for run in r["per_seed"] for v in run["funnel"].values())
        funnel = str(over) if any(run["funnel"] for run in r["per_seed"]) else "-"
        seconds = statistics.fmean(run["train_seconds"] for run in r["per_seed"])
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {funnel} | {seconds:.0f} |")
    lines += ["", "Differences in brackets: against the best single-task model on that task.", "", "## Best per task",
              ""]
    for task, b in s["best"].items():
        lines.append(f"- {task}: {b['model']} {b['test_auc']:.4f} ({b['vs_single']:+.4f} vs single-task "
                     f"{s['single_task'][task]:.4f})")
    experts = [(r["model"], r["per_seed"][0]["experts"]) for r in rows if r["per_seed"][0].get("experts")]
    if experts:
        lines += ["", "## Expert utilisation (first seed, test rows)", "",
                  "Mean gate weight per expert, per task (and level): experts that specialise get a high weight from "
                  "one task and a low one from the others.", ""]
        for model, gates in experts:
            for key, weights in gates.items():
                lines.append(f"- {model} `{key}`: " + " ".join(f"{w:.2f}" for w in weights))
    lines += ["", f"![per-task test AUC](mtl-{dataset}.png)", ""]
    (out_dir / f"mtl-{dataset}.md").write_text("\n".join(lines))
    _plot(dataset, rows, tasks, out_dir / f"mtl-{dataset}.png")


def _plot(dataset: str, rows: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    multi = [r for r in rows if r["kind"] == "multi-task"]
    single = {t: [auc] for t, auc in summary(rows)["single_task"].items()}  # the best single-task model's
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        names = [r["model"] for r in multi if task in r["test_auc"]]
        means = [r["test_auc"][task][0] for r in multi if task in r["test_auc"]]
        stds = [r["test_auc"][task][1] for r in multi if task in r["test_auc"]]
        ax.bar(np.arange(len(names)), means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
        if task in single:
            ax.axhline(single[task][0], color="tab:red", lw=1.2, label=f"best single-task {single[task][0]:.4f}")
            ax.legend(fontsize=8)
        low = min(means + [single.get(task, [1.0])[0]]) - 0.01
        ax.set_ylim(low, max(means + [single.get(task, [0.0])[0]]) + 0.005)
        ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test AUC")
        ax.set_title(f"{task} on {dataset}")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
