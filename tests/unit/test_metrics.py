"""numpy metrics against scikit-learn's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from muxrec.metrics import binary_metrics, calibration, log_loss, roc_auc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_logloss_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=5000)
    p = np.clip(rng.beta(2, 5, size=5000) + 0.2 * y, 0, 1)
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), abs=1e-9)


def test_auc_counts_ties_as_half():
    y = np.array([0, 1, 0, 1, 1, 0])
    p = np.array([0.5, 0.5, 0.2, 0.9, 0.5, 0.5])  # heavy ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))


def test_auc_needs_both_classes_and_finite_scores():
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.ones(4), np.linspace(0, 1, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="differ in length"):
        log_loss(np.array([0, 1]), np.array([0.1]))


def test_calibration_of_a_calibrated_predictor():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, size=200_000)
    y = (rng.uniform(0, 1, size=p.size) < p).astype(float)
    cal = calibration(y, p, bins=10)
    assert cal["ratio"] == pytest.approx(1.0, abs=0.01)
    assert cal["ece"] < 0.01
    assert sum(b["count"] for b in cal["bins"]) == p.size
    for b in cal["bins"]:
        assert b["observed"] == pytest.approx(b["predicted"], abs=0.02)
    # An over-confident predictor is not.
    assert calibration(y, np.clip(p * 1.5, 0, 1))["ratio"] > 1.2


def test_binary_metrics_bundle():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.1, 0.8, 0.6, 0.3, 0.4])
    m = binary_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p)) and m["rows"] == 5
