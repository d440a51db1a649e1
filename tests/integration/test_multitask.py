"""Multi-task models through the Ray pipeline: prepare -> train (num_workers 0) -> publish -> evaluate -> score.

The synthetic spec has two tasks in a funnel (conversion only after a click); a blend declared in the
spec drives early stopping and the registry's headline AUC.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from muxrec.artifacts import ArtifactRegistry
from muxrec.config import TrainConfig
from muxrec.models import EncodedRows, make_config
from muxrec.models.serialization import load_model
from muxrec.pipelines.evaluate import evaluate, split_rows
from muxrec.pipelines.prepare import prepare
from muxrec.pipelines.train import TrainJob, train
from muxrec.spec import parse_spec

from tests.helpers import synthetic_spec

pytestmark = pytest.mark.integration

SMALL = TrainConfig(epochs=2, batch_size=256, lr=3e-3, patience=5, seed=11, num_workers=0)  # in this process


@pytest.fixture(scope="module")
def prepared(ray_cluster, tmp_path_factory):
    data = synthetic_spec(rows=8000, seed=5).model_dump(mode="json", exclude_defaults=True)
    data["blend"] = {"click": 0.5, "conversion": 0.5}
    return prepare(parse_spec(data), tmp_path_factory.mktemp("prepared-mtl"))


def test_mmoe_with_masked_funnel_and_uncertainty_weights_trains_publishes_and_evaluates(prepared, tmp_path):
    registry = ArtifactRegistry(tmp_path / "registry")
    cfg = make_config("mmoe", {"embedding_dim": 8, "funnel": "masked"})
    job = TrainJob(str(prepared.root), "mmoe", cfg, replace(SMALL, task_weighting="uncertainty"))
    result = train(job, registry, "synthetic-mmoe", tmp_path / "runs")
    metrics = result.metrics

    # Per task, on all rows and (conversion) on its parent's positive rows; the headline is the blend.
    valid = metrics["valid"]
    for key in ("click_auc", "conversion_auc", "conversion_given_click_auc"):
        assert 0.5 < valid[key] <= 1.0, (key, valid[key])
    assert valid["conversion_given_click_rows"] < valid["conversion_rows"]
    assert valid["auc"] == pytest.approx(0.5 * valid["click_auc"] + 0.5 * valid["conversion_auc"])
    assert result.version.metadata["valid_auc"] == valid["auc"] and metrics["blend"] == {"click": 0.5, "conversion": 0.5}
    assert max(h["valid_auc"] for h in metrics["history"]) == pytest.approx(valid["auc"], abs=1e-6)
    # The uncertainty weights were learned (moved off 1) and are reported each epoch.
    weights = metrics["history"][-1]["task_weights"]
    assert set(weights) == {"click", "conversion"} and all(w != 1.0 for w in weights.values())
    # Which experts each task uses, on validation rows.
    for task in ("click", "conversion"):
        assert sum(metrics["expert_utilisation"][task]) == pytest.approx(1.0, abs=1e-4)

    # The published version: P(conversion) <= P(click) on every row (the masked funnel is chained).
    loaded = load_model(result.version)
    probs = loaded.predict(EncodedRows(split_rows(loaded, "test"), loaded.inputs))  # (N, 2)
    assert probs.shape[1] == 2 and (probs[:, 1] <= probs[:, 0] + 1e-6).all()
    report = evaluate(result.version, "valid")
    assert report["tasks"]["conversion"]["given_click"]["auc"] == pytest.approx(valid["conversion_given_click_auc"])
    assert report["blend"]["auc"] == pytest.approx(valid["auc"], abs=1e-6)
    assert json.loads(result.version.read_text("metrics.json"))["valid"]["auc"] == valid["auc"]


@pytest.mark.parametrize("architecture", ["esmm", "ple"])
def test_each_multitask_model_trains_on_ray_with_an_interaction_model_bottom(prepared, tmp_path, architecture):
    """ESMM (entire space) and PLE with DeepFM as the shared bottom: trained, published."""
    registry = ArtifactRegistry(tmp_path / "registry")
    cfg = make_config(architecture, {"embedding_dim": 8, "bottom": "deepfm", "bottom_config": {"hidden_units": [32]}})
    result = train(TrainJob(str(prepared.root), architecture, cfg, SMALL), registry, f"s-{architecture}",
                   tmp_path / "runs")
    test = result.metrics["test"]
    assert test["click_auc"] > 0.56 and test["conversion_auc"] > 0.56, test  # 2 epochs of 6,400 rows: above chance
    loaded = load_model(result.version)
    assert loaded.config.bottom == "deepfm"
    probs = loaded.predict(EncodedRows(split_rows(loaded, "test"), loaded.inputs))
    assert np.isfinite(probs).all() and probs.shape[1] == 2
    if architecture == "esmm":
        assert (probs[:, 1] <= probs[:, 0] + 1e-6).all()
