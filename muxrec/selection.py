"""The result every feature-selection method returns: a ranking of features with scores.

Permutation importance, OutRank, OptFS and QuickSelection all write a `FeatureRanking`: the method's
name, the label it was measured against (None for an unsupervised method), one `FeatureScore` per
feature sorted best first, and `meta` for what the method alone knows (repeats, seed, split, rows).
It lives in the core package so that both the pipelines that compute rankings and the
services that serve them read the same type; it travels as plain JSON, never pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from muxrec.artifacts import ArtifactRegistry, ModelVersion
from muxrec.spec import FeatureSpec, parse_spec


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


# ---- rankings as registry artifacts ----------------------------------------------------------------

RANKING_FILE = "ranking.json"
IMPORTANCE_FILE = "importance.json"  # the permutation importance every published model version stores
METHODS = ("permutation", "optfs", "outrank", "quickselection")


def selection_name(spec_name: str) -> str:
    """The registry name under which the rankings of one spec's data and models are versioned."""
    return f"{spec_name}-selection"


def publish_ranking(registry: ArtifactRegistry, ranking: FeatureRanking, spec: FeatureSpec,
                    model: str | None = None) -> ModelVersion:
    """Store `ranking` as a new version of `selection_name(spec.name)`; returns it (hash-checked like any version).

    Args:
        registry: where models live.
        ranking: what a method returned.
        spec: the spec of the prepared data the ranking was computed on.
        model: the model version ("name/vNNNN") it was computed with; None for a method that trains none of ours.
    """
    return registry.publish(selection_name(spec.name), {RANKING_FILE: ranking.to_json()}, metadata={
        "kind": "feature-ranking", "method": ranking.method, "task": ranking.task, "spec": spec.name,
        "spec_fingerprint": spec.fingerprint(), "model": model, "features": len(ranking.features)})


def permutation_ranking(importance: dict[str, Any]) -> FeatureRanking:
    """The FeatureRanking of a model version's importance.json (pipelines.importance)."""
    features = tuple(FeatureScore(f["name"], float(f["importance"]), {"std": f["std"]}) for f in importance["features"])
    meta = {k: v for k, v in importance.items() if k not in ("method", "task", "features")}
    return FeatureRanking("permutation", importance.get("task"), features, meta)


def stored_rankings(registry: ArtifactRegistry, model: ModelVersion) -> dict[str, tuple[str, FeatureRanking]]:
    """Every ranking that describes `model`, by method: (the artifact it came from, the ranking).

    A ranking applies when it was computed on data prepared with the model's exact spec (same
    fingerprint) and either with this model version or with no model at all (OutRank, QuickSelection,
    OptFS train their own). The newest version wins per method; the permutation importance stored
    with the model itself is "permutation" unless a newer `muxrec select --method permutation` run
    on this model replaced it.
    """
    spec = model.read_spec()
    found: dict[str, tuple[str, FeatureRanking]] = {}
    if IMPORTANCE_FILE in model.manifest["files"]:
        found["permutation"] = (model.ref, permutation_ranking(model.read_json(IMPORTANCE_FILE)))
    name = selection_name(spec.name)
    if name not in registry.names():
        return found
    for version in registry.versions(name):  # oldest first: newer ones overwrite
        meta = registry.manifest(name, version).get("metadata", {})
        if meta.get("spec_fingerprint") != spec.fingerprint() or meta.get("model") not in (None, model.ref):
            continue
        stored = registry.open(name, version)
        found[meta["method"]] = (stored.ref, FeatureRanking.from_json(stored.read_text(RANKING_FILE)))
    return found


# ---- a spec with fewer features ----------------------------------------------------------------------

def subset_spec(spec: FeatureSpec, keep: Iterable[str], name: str) -> FeatureSpec:
    """`spec` with only the features in `keep` (spec order kept), named `name`; unused shared tables dropped.

    Source, keys, labels and split are unchanged, so `muxrec prepare` of the result reuses the
    prepared data of `spec` (pipelines.prepare: a spec that only drops features is a view).
    """
    keep = list(dict.fromkeys(keep))
    known = [f.name for f in spec.features]
    unknown = [k for k in keep if k not in known]
    if unknown:
        raise ValueError(f"features {unknown} are not in spec {spec.name!r}; features: {known}")
    if not keep:
        raise ValueError("a subset spec needs at least one feature")
    data = spec.model_dump(mode="json", exclude_defaults=True)
    data["name"] = name
    data["features"] = [f for f in data["features"] if f["name"] in keep]
    used = {f.get("table") for f in data["features"]}
    if "tables" in data:
        data["tables"] = {t: v for t, v in data["tables"].items() if t in used}
    return parse_spec(data, origin=f"{spec.name} without {sorted(set(known) - set(keep))}")
