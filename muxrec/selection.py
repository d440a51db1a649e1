"""The result every feature-selection method returns: a ranking of features with scores.

Permutation importance, OutRank, OptFS and QuickSelection all write a `FeatureRanking`: the method's
name, the label it was measured against (None for an unsupervised method), one `FeatureScore` per
feature sorted best first, and `meta` for what the method alone knows (repeats, seed, split, rows).
It lives in the core package (stdlib only) so that both the pipelines that compute rankings and the
services that serve them read the same type; it travels as plain JSON, never pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FeatureScore:
    """One feature's score (higher is more useful) and the method's facts behind it (JSON values)."""

    name: str
    score: float
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a feature score needs a feature name")
        if not isinstance(self.score, (int, float)) or math.isnan(self.score):
            raise ValueError(f"feature {self.name!r}: score must be a number, got {self.score!r}")


@dataclass(frozen=True)
class FeatureRanking:
    """Features of one method's run, best first.

    Args:
        method: the selection method ("outrank", "permutation", "optfs", "quickselection").
        task: the label the scores refer to; None for an unsupervised method.
        features: one score per feature, sorted by score, highest first; names unique.
        meta: method-specific facts about the run (seed, repeats, rows counted, ...), JSON values.
    """

    method: str
    task: str | None
    features: tuple[FeatureScore, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.method:
            raise ValueError("a feature ranking needs the method that made it")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"feature ranking lists a feature twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
        scores = [f.score for f in self.features]
        if any(a < b for a, b in zip(scores, scores[1:])):
            raise ValueError("feature ranking must be sorted by score, best first")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def top(self, k: int) -> tuple[str, ...]:
        """The names of the k best features."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return self.names[:k]

    def score_of(self, name: str) -> FeatureScore:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"feature {name!r} is not in the {self.method} ranking; features: {list(self.names)}")

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "task": self.task, "meta": self.meta,
                           "features": [{"name": f.name, "score": f.score, "detail": f.detail} for f in self.features]},
                          indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> FeatureRanking:
        data = json.loads(text)
        if not isinstance(data, dict) or "method" not in data or not isinstance(data.get("features"), list):
            raise ValueError("not a feature ranking: expected an object with 'method' and a 'features' list")
        return cls(data["method"], data.get("task"),
                   tuple(FeatureScore(f["name"], float(f["score"]), dict(f.get("detail", {}))) for f in data["features"]),
                   dict(data.get("meta", {})))
