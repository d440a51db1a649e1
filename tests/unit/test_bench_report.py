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
