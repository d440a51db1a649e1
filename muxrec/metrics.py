"""Binary classification metrics in numpy: AUC, logloss, calibration."""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        raise ValueError("no rows to evaluate")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(p).all():
        raise ValueError("scores contain NaN or inf")
    return y, p


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as scipy.stats.rankdata does)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties counted as half."""
    y, p = _check(labels, scores)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    ranks = _average_ranks(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    y, p = _check(labels, probs)
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict:
    """Predicted vs observed positive rate, overall and per equal-width probability bin.

    `ratio` = mean prediction / observed rate (1.0 is calibrated); `ece` is the expected calibration
    error, the row-weighted mean |predicted - observed| over bins.
    """
    y, p = _check(labels, probs)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        if count == 0:
            continue
        predicted, observed = float(p[mask].mean()), float(y[mask].mean())
        ece += count / y.size * abs(predicted - observed)
        table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                      "predicted": predicted, "observed": observed})
    observed = float(y.mean())
    return {"predicted_rate": float(p.mean()), "observed_rate": observed,
            "ratio": float(p.mean() / observed) if observed > 0 else float("inf"), "ece": float(ece),
            "bins": table}


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """AUC, logloss and calibration summary for one task."""
    cal = calibration(labels, probs)
    return {"auc": roc_auc(labels, probs), "logloss": log_loss(labels, probs),
            "calibration_ratio": cal["ratio"], "ece": cal["ece"], "rows": int(np.size(labels))}
