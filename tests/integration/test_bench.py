"""`muxrec bench ctr` end to end on a tiny synthetic dataset: seeds aggregate, incompatible models are
skipped with a reason, and the report (table + plot) is written."""

from __future__ import annotations

import json

import pytest
import yaml

from muxrec.artifacts import ArtifactRegistry
from muxrec.benchmarks.ctr import bench_ctr

from tests.helpers import synthetic_spec

pytestmark = pytest.mark.integration


def test_bench_two_seeds_and_a_skip(ray_cluster, tmp_path):
    configs = tmp_path / "configs"
    (configs / "models").mkdir(parents=True)
    spec = synthetic_spec(rows=3000, seed=4).model_dump(mode="json")
    spec["name"] = "tiny"
    spec["features"] = [f for f in spec["features"] if f["kind"] != "sequence"]  # no history: DIN cannot run
    (configs / "tiny.yaml").write_text(yaml.safe_dump(spec))
    (configs / "models" / "lr.yaml").write_text("model: {}\ntrain: {epochs: 2, batch_size: 512, lr: 0.01}\n")
    (configs / "models" / "din.yaml").write_text("model: {embedding_dim: 4}\ntrain: {epochs: 1}\n")
    out = tmp_path / "docs"

    rows = list(bench_ctr("tiny", "all", [1, 2], configs, tmp_path / "runs", ArtifactRegistry(tmp_path / "reg"), out,
                          overrides=["train.epochs=1"]))
    skipped, (lr,) = [r for r in rows if "skipped" in r], [r for r in rows if "skipped" not in r]
    assert [r["model"] for r in skipped] == ["din"] and "needs the sequence feature" in skipped[0]["skipped"]
    assert lr["model"] == "lr" and lr["seeds"] == [1, 2] and len(lr["per_seed"]) == 2
    assert lr["overrides"] == ["train.epochs=1"] and all(s["epochs"] == 1 for s in lr["per_seed"])
    assert list((tmp_path / "runs" / "ray" / "bench-tiny-lr-seed1").glob("checkpoint_in_process_*"))  # no worker
    aucs = [s["test_auc"] for s in lr["per_seed"]]
    assert lr["test_auc"] == pytest.approx(sum(aucs) / 2, abs=1e-5) and lr["test_auc_std"] >= 0
    assert 0.5 < lr["test_auc"] < 1 and lr["params"] > 0
    assert 0 < lr["latency_ms_b100"] and 0 < lr["latency_ms_b1000"]
    saved = json.loads((out / "results" / "ctr-tiny-lr.json").read_text())
    assert saved["test_auc"] == lr["test_auc"]
    report = (out / "tiny.md").read_text()
    assert "| lr |" in report and "![test AUC against latency](tiny.png)" in report
    assert "--seeds 1,2 --set train.epochs=1 --json" in report
    assert (out / "tiny.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def tiny_bench(ray_cluster, tmp_path_factory):
    """A configs folder with the whole synthetic spec as dataset `tiny` (3,000 rows, history included)
    and a runs folder where it is prepared once, shared by the hiformer and train benchmark tests
    (each adds its own model files; `bench` reuses prepared data made from the same spec)."""
    from muxrec.pipelines.prepare import prepare_cached
    from muxrec.spec import load_spec

    root = tmp_path_factory.mktemp("tiny-bench")
    configs = root / "configs"
    (configs / "models").mkdir(parents=True)
    spec = synthetic_spec(rows=3000, seed=4).model_dump(mode="json")
    spec["name"] = "tiny"
    (configs / "tiny.yaml").write_text(yaml.safe_dump(spec))
    prepare_cached(load_spec(configs / "tiny.yaml"), root / "runs" / "prepared")
    return configs, root / "runs"


def test_bench_hiformer_times_the_serving_tricks(tiny_bench, tmp_path):
    from muxrec.benchmarks.hiformer import bench_hiformer

    configs, runs = tiny_bench
    small = "embedding_dim: 4, num_layers: 2, head_dim: 4, ffn_dim: 8, hidden_units: [16]"
    (configs / "models" / "hiformer.yaml").write_text(f"model: {{{small}}}\ntrain: {{epochs: 1}}\n")
    (configs / "models" / "hiformer-fast.yaml").write_text(
        f"architecture: hiformer\nmodel: {{{small}, low_rank: 8, prune_last_layer: true}}\ntrain: {{epochs: 1}}\n")
    out, registry = tmp_path / "docs", ArtifactRegistry(tmp_path / "reg")
    for name in ("hiformer", "hiformer-fast"):
        list(bench_ctr("tiny", name, [1], configs, runs, registry, out))

    result = bench_hiformer("tiny", registry, out, reps=5)
    variants = {v["variant"]: v for v in result["variants"]}
    assert list(variants) == ["full", "full+prune", "lowrank", "lowrank+prune"]
    assert variants["full"]["speedup_b100"] == 1.0 and variants["full+prune"]["latency_ms_b1000"] > 0
    assert variants["lowrank"]["params"] < variants["full"]["params"]
    assert result["prune_max_abs_logit_change"] < 1e-4  # pruning is exact up to float rounding
    assert "| lowrank+prune |" in (out / "hiformer-tiny.md").read_text()


def test_bench_train_times_floor_loop_and_command(ray_cluster, tiny_bench, tmp_path, monkeypatch):
    """`muxrec bench train` on tiny data: the floor, our loop and a real `muxrec train` process, one row.
    The process joins the session's Ray, as it would a kept one (a cold Ray would add ~15 s to the suite and
    test nothing of muxrec's: `ray_running` is what the bench reads from the environment)."""
    from muxrec.benchmarks.train import bench_train

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.get_runtime_context().gcs_address)

    configs, runs = tiny_bench
    (configs / "models" / "deepfm.yaml").write_text(
        "model: {embedding_dim: 4, hidden_units: [16]}\ntrain: {batch_size: 256, lr: 0.01}\n")
    out = tmp_path / "docs"

    (row,) = bench_train("tiny", "deepfm", configs, runs, out, epochs=2, threads=1)
    assert row["model"] == "deepfm" and row["train_rows"] > 2000 and row["epochs"] == 2
    assert row["floor_samples_per_s"] > 0 and row["loop_samples_per_s"] > 0 and row["command_samples_per_s"] > 0
    assert row["loop_vs_floor"] == pytest.approx(row["loop_samples_per_s"] / row["floor_samples_per_s"], rel=0.01)
    assert row["startup_s"] > 0 and row["teardown_s"] > 0 and row["ray_running"] is True and row["num_workers"] == 1
    assert len(list((out / "results").glob("train-tiny-deepfm-*-warm.json"))) == 1
    report = (out / "train.md").read_text()
    assert "| tiny | deepfm |" in report and (out / "train.png").stat().st_size > 5_000


def test_bench_select_retrains_each_top_k_as_a_view_and_reports_what_it_saves(ray_cluster, tmp_path):
    from muxrec.benchmarks.select import bench_select
    from muxrec.data.synthetic import SyntheticConfig, generate

    configs = tmp_path / "configs"
    (configs / "models").mkdir(parents=True)
    (configs / "synthetic.yaml").write_text(synthetic_spec(rows=3000, seed=5).to_yaml())
    (configs / "models" / "deepfm.yaml").write_text(
        "model: {embedding_dim: 4, hidden_units: [16]}\ntrain: {epochs: 2, batch_size: 512, lr: 0.01}\n")
    out = tmp_path / "docs"
    row = bench_select("synthetic", [1], configs, tmp_path / "runs", ArtifactRegistry(tmp_path / "reg"), out,
                       methods=["permutation", "outrank"], ks=[3, 6])

    assert set(row["methods"]) == {"permutation", "outrank"} and row["ks"] == [3, 6]
    full = row["all"]
    for method, entry in row["methods"].items():
        ranked = [name for name, _ in entry["ranking"]]
        for k in (3, 6):
            subset = entry["subsets"][str(k)]
            assert subset["features"] == sorted(ranked[:k]) and subset["request_fields"] <= k
            assert subset["request_bytes"] < full["request_bytes"] and subset["table_bytes"] < full["table_bytes"]
            assert 0.4 < subset["test_auc"][0] < 1.0
        truth = generate(SyntheticConfig(rows=3000, seed=5))[1]
        assert entry["planted"]["k"] == len([n for n in ranked if n in truth.informative])
        assert sorted(entry["planted"]["noise_ranks"]) == sorted(ranked.index(n) + 1 for n in truth.noise)
    # every top-k spec read the prepared rows: one prepared data set with Parquet, the rest views
    prepared = tmp_path / "runs" / "prepared"
    assert [p.name for p in prepared.iterdir() if (p / "train").is_dir()] == ["synthetic"]
    assert "## Planted features" in (out / "select-synthetic.md").read_text()
    assert (out / "select-synthetic.png").stat().st_size > 0
    assert json.loads((out / "results" / "select-synthetic.json").read_text())["targets"] == row["targets"]
