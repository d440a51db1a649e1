"""The CTR benchmark report: a graded dataset's table stands each model beside its binary-target run."""

from __future__ import annotations

import json

import pytest

from muxrec.errors import ConfigError
from muxrec.benchmarks.ctr import binary_counterpart, model_names, write_report


def _row(dataset, model, auc):
    return {"dataset": dataset, "model": model, "seeds": [1, 2], "test_auc": auc, "test_auc_std": 0.001,
            "test_logloss": 0.55, "test_logloss_std": 0.001, "valid_auc": auc + 0.002, "params": 1000,
            "train_seconds": 10.0, "latency_ms_b100": 0.5, "latency_ms_b1000": 4.0, "per_seed": [{}, {}],
            "commit": "abc1234"}


def test_graded_report_shows_the_binary_run_and_the_gain(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for dataset, model, auc in [("toy", "deepfm", 0.78), ("toy", "lr", 0.77), ("toy-graded", "deepfm", 0.79),
                                ("toy-graded", "fm", 0.775)]:
        (results / f"ctr-{dataset}-{model}.json").write_text(json.dumps(_row(dataset, model, auc)))
    assert binary_counterpart("toy-graded") == "toy" and binary_counterpart("toy") is None
    write_report("toy-graded", tmp_path)
    lines = (tmp_path / "toy-graded.md").read_text().splitlines()
    assert any("toy AUC | gain |" in line for line in lines)
    assert any(line.startswith("| deepfm | 0.7900") and "| 0.7800 | +0.0100 |" in line for line in lines)
    assert any(line.startswith("| fm | 0.7750") and "| - | - |" in line for line in lines)  # no binary run
    assert not any(line.startswith("| lr |") for line in lines)  # a binary-only model is not a graded row
    assert (tmp_path / "toy-graded.png").stat().st_size > 10_000
    write_report("toy", tmp_path)
    assert "| gain |" not in (tmp_path / "toy.md").read_text()


def test_model_names_all_a_list_or_a_clear_error(tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("lr", "fm", "deepfm"):
        (tmp_path / "models" / f"{name}.yaml").write_text("model: {}\n")
    assert model_names(tmp_path, "all") == ["deepfm", "fm", "lr"]
    assert model_names(tmp_path, "lr, deepfm") == ["lr", "deepfm"]
    with pytest.raises(ConfigError, match=r"no model config configs/models/dnn\.yaml; models with configs"):
        model_names(tmp_path, "lr,dnn")


def _serve_result():
    rank = {"p50_ms": 14.0, "p95_ms": 20.0, "p99_ms": 25.0, "qps": 70.0, "candidates_per_s": 7000,
            "candidates_per_s_per_core": 3500, "errors": 0}
    result = {
        "bench": "serve", "model_version": "m/v0001", "candidates": 100, "requests_per_level": 400,
        "ranker_replicas": 1, "load_average_start": [1.0, 1.0, 1.0], "load_average_end": [2.0, 1.5, 1.0],
        # Three rounds; the machine slowed down in the second one, and every route with it.
        "rounds": {"trivial_one_hop_p50_ms": [4.0, 8.0, 4.0], "trivial_two_hop_p50_ms": [8.0, 16.0, 10.0],
                   "trivial_one_hop_embed_body_p50_ms": [4.5, 9.0, 5.0],
                   "trivial_two_hop_rank_body_p50_ms": [8.5, 17.0, 10.0],
                   "rank_p50_ms": [14.0, 24.0, 16.0], "embed_hit_p50_ms": [5.0, 12.0, 6.0],
                   "healthz_p50_ms": [4.2, 8.0, 4.4], "importance_p50_ms": [8.8, 17.0, 9.0]},
        "hops": {"trivial_one_hop_p50_ms": 4.0, "trivial_two_hop_p50_ms": 10.0,
                 "trivial_one_hop_embed_body_p50_ms": 5.0, "trivial_two_hop_rank_body_p50_ms": 10.0,
                 "rank_p50_ms": 16.0, "embed_hit_p50_ms": 6.0, "healthz_p50_ms": 4.4, "importance_p50_ms": 9.0},
        "embed": {"ids": 100, "hit": {"p50_ms": 5.0, "p95_ms": 6.0, "p99_ms": 7.0},
                  "miss": {"p50_ms": 9.0, "p95_ms": 10.0, "p99_ms": 11.0}, "miss_over_hit_p50": 1.8},
        "rank": {"c1": rank, "c8": {**rank, "p50_ms": 60.0, "candidates_per_s": 12000, "requests_per_ranker_call": 2.5,
                                    "ranker_compute_mean_ms": 3.25,
                                    "cpu_ms_per_request": {"muxrec/Gateway": 7.1, "muxrec/Ranker": 4.9,
                                                           "Serve proxy": 4.4, "load generator": 0.05}}},
        "floor": {"encode_forward_p50_ms": 4.0, "forward_p50_ms": 1.5, "forward_reused_batch_p50_ms": 1.25},
        "overhead_p50_ms": 10.0, "p50_over_floor": 3.5, "redis": None, "commit": "abc1234",
        "machine": {"cpus": 2},
    }
    from muxrec.benchmarks.serve import _targets

    result["targets"] = _targets(result)
    return result


def test_serve_targets_are_ratios_against_the_trivial_routes_of_the_same_rounds():
    t = _serve_result()["targets"]
    # rank minus the 4 ms floor over the two-hop p50, round by round: 10/8, 20/16, 12/10; median 1.25.
    # (The medians of the routes instead would give (16 - 4) / 10 = 1.2: pairing is what the test is about.)
    assert t["rank_overhead_over_two_hop"] == {"value": 1.25, "limit": 1.2, "met": False, "range": [1.2, 1.25],
                                               "value_vs_body_twin": 1.18, "met_vs_body_twin": True,  # 10/8.5, 20/17
                                               "range_vs_body_twin": [1.18, 1.2]}
    # embed hits over the one-hop p50: 5/4, 12/8, 6/4 -> 1.5; over the POST twin: 5/4.5, 12/9, 6/5 -> 1.2
    assert t["embed_hit_over_one_hop"] == {"value": 1.5, "limit": 1.3, "met": False, "range": [1.25, 1.5],
                                           "value_vs_body_twin": 1.2, "met_vs_body_twin": True,
                                           "range_vs_body_twin": [1.11, 1.33]}
    assert t["floor_over_forward"] == {"value": 2.67, "limit": 2.0, "met": False}  # 4 ms / 1.5 ms
    share = t["c8_candidates_share_of_floor"]  # the floor allows 100 x 1 replica / 4 ms = 25,000 / s
    assert (share["floor_allows_per_s"], share["value"], share["met"]) == (25000, 0.48, False)


def test_serve_report_shows_the_trivial_routes_and_the_targets(tmp_path):
    from muxrec.benchmarks.serve import _write

    result = _serve_result()
    (tmp_path / "serve-notes.md").write_text("## Findings\n\nkept across runs\n")
    _write(result, {"c1": [0.014] * 50, "c8": [0.06] * 50}, tmp_path)
    text = (tmp_path / "serve.md").read_text()
    assert "| trivial GET, constant | proxy -> ingress | 4.0 |" in text
    assert "| trivial GET, constant | proxy -> ingress -> handle | 10.0 |" in text
    assert "| muxrec `/v1/rank`, 100 candidates | proxy -> gateway -> Ranker | 16.0 |" in text
    assert "over the trivial two-hop p50 | 1.25 (1.2-1.25) | **not met** | 1.18 (1.18-1.2) | met | <= 1.2 |" in text
    assert "over the trivial one-hop p50 | 1.5 (1.25-1.5) | **not met** | 1.2 (1.11-1.33) | met | <= 1.3 |" in text
    assert "3 rounds each timed every route" in text and "timed in 3 interleaved rounds" in text
    assert "forward alone 1.5 ms" in text and "(1.25 ms p50 here;" in text  # the forward on a batch seen before
    assert "| concurrency 8 | 60.0 |" in text and "| 12000 | 3500 | 0 | 2.5 | 3.25 |" in text
    assert "| concurrency 1 | 14.0 |" in text and "| 0 | - | - |" in text  # a result without the two figures
    # CPU per request: the roles over 0.1 ms as columns, a level without the figures as zeros
    assert "| /v1/rank | muxrec/Gateway | muxrec/Ranker | Serve proxy | total |" in text
    assert "| concurrency 8 | 7.1 | 4.9 | 4.4 | 16.4 |" in text and "| concurrency 1 | 0.0 | 0.0 | 0.0 | 0 |" in text
    assert "[1.0, 1.0, 1.0] at the start" in text and text.rstrip().endswith("kept across runs")
    saved = json.loads((tmp_path / "results" / "serve.json").read_text())
    assert saved["hops"]["trivial_two_hop_p50_ms"] == 10.0 and saved["rounds"]["rank_p50_ms"] == [14.0, 24.0, 16.0]
    assert (tmp_path / "serve-latency.png").stat().st_size > 10_000


def test_sharding_bench_trains_on_pooled_features_and_reports_every_layout(tmp_path):
    from muxrec.benchmarks.sharding import LAYOUTS, pooled_only
    from muxrec.benchmarks.sharding import write_report as write_sharding_report
    from tests.helpers import synthetic_spec

    spec = synthetic_spec(rows=100)
    pooled = pooled_only(spec)
    assert pooled.name == "synthetic-pooled" and pooled.fingerprint() != spec.fingerprint()
    assert [f.name for f in pooled.features] == [f.name for f in spec.features if f.kind != "sequence"] != \
        [f.name for f in spec.features]
    rows = [{"sharding": s, "workers": w, "table_optimizer": "adam", "tables": {s: 3} if s != "none" else None,
             "epoch_seconds": 1.0, "samples_per_s": 1000 * (i + 1), "valid_auc": 0.7, "peak_rss_mb": [500] * w,
             "wall_seconds": 9.0} for i, (s, w) in enumerate(LAYOUTS)]
    result = {"dataset": "toy", "model": "deepfm", "epochs": 1, "train_rows": 1000, "table_bytes": 2**20,
              "rows": rows, "machine": {"cpus": 2}, "commit": "abc1234", "date": "2026-12-01"}
    write_sharding_report(result, tmp_path)
    table = [line for line in (tmp_path / "sharding-toy.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(LAYOUTS)  # the header and one line per layout
    assert "| row_wise | 2 | 3 row_wise | adam | 4,000 | 500, 500 | 0.7000 |" in table
    assert (tmp_path / "sharding-toy.png").stat().st_size > 10_000


def test_processes_are_told_apart_by_the_titles_ray_gives_them():
    from muxrec.benchmarks.serve import process_role

    assert process_role("ray::ServeReplica:muxrec:Ranker") == "muxrec/Ranker"
    assert process_role("ray::ServeReplica:muxrec:Gateway.handle_request_streaming  ") == "muxrec/Gateway"
    assert process_role("ray::ServeReplica:bench-trivial:TrivialIngress") == "bench-trivial/TrivialIngress"
    assert process_role("ray::ProxyActor") == "Serve proxy" and process_role("ray::ServeController ") == "Serve controller"
    assert process_role("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --node=1") == \
        "Ray (raylet, GCS)"
    assert process_role("/usr/bin/redis-server 127.0.0.1:6379") is None and process_role("") is None


def test_bench_train_runs_the_command_on_one_worker_unless_told_none():
    from muxrec.benchmarks.train import _bench_train_config
    from muxrec.config import TrainConfig

    assert _bench_train_config(TrainConfig(num_workers=2)).num_workers == 1  # compared with one in-process loop
    assert _bench_train_config(TrainConfig(num_workers=0)).num_workers == 0  # --set train.num_workers=0
