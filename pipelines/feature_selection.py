"""The feature-selection stage: one call per method, each returning a `FeatureRanking`.

    muxrec select --spec S --method outrank            # no model: counts on Ray Data
    muxrec select --spec S --method permutation --model NAME[@REF]
    muxrec select --spec S --method optfs --top-k 6 --write-spec selected.yaml

Methods (see each module for its paper):

* permutation (pipelines.importance): AUC drop of a published model when one feature is shuffled.
* outrank (pipelines.selection): mutual information with the label minus that of same-frequency noise.
* optfs (pipelines.optfs): gates on fields and field pairs learnt by continuation; keeps gate > 0.
* quickselection (pipelines.quickselection): input-neuron strength of a sparse denoising autoencoder.

`select` runs one on prepared data; `muxrec select` then stores the ranking in the registry
(`muxrec.selection.publish_ranking`), where the FeatureSelector deployment serves it, and can write a
spec with the top-k features (`muxrec.selection.subset_spec`) that `muxrec train` retrains on
reading the same prepared rows (pipelines.prepare: a view).
"""

from __future__ import annotations

import time
from dataclasses import replace

from muxrec.artifacts import ModelVersion
from muxrec.errors import ConfigError
from muxrec.pipelines.prepare import PreparedData
from muxrec.selection import METHODS, FeatureRanking


def select(method: str, prepared: PreparedData, model: ModelVersion | None = None, task: str | None = None,
           seed: int = 0) -> FeatureRanking:
    """Rank the features of `prepared` with `method`.

    Args:
        method: one of METHODS.
        prepared: the output of `muxrec prepare` for the spec being ranked.
        model: a published model trained on `prepared` (permutation only: the others need none).
        task: the label to rank against (supervised methods); the spec's first task when None.
        seed: seeds every random draw of the method.

    The method's own run time (seconds, Ray start-up excluded when Ray was already up) lands in meta["seconds"].
    """
    check_method(method, model)
    start = time.perf_counter()
    ranking = _run(method, prepared, model, task, seed)
    return replace(ranking, meta={**ranking.meta, "seconds": round(time.perf_counter() - start, 2)})


def _run(method: str, prepared: PreparedData, model: ModelVersion | None, task: str | None,
         seed: int) -> FeatureRanking:
    if method == "permutation":
        from muxrec.pipelines.importance import permutation_on_ray

        if model.read_spec().fingerprint() != prepared.spec.fingerprint():
            raise ConfigError(f"{model.ref} was trained on another spec than {prepared.spec.name!r}; "
                              f"give the spec it was trained with")
        return permutation_on_ray(model, prepared.split_dir("valid"), seed=seed)
    if method == "outrank":
        from muxrec.pipelines.selection import outrank

        return outrank(prepared, task=task, seed=seed)
    if method == "optfs":
        from muxrec.pipelines.optfs import optfs

        return optfs(prepared, task=task, seed=seed)
    from muxrec.pipelines.quickselection import quickselection

    return quickselection(prepared, seed=seed)


def check_method(method: str, model: ModelVersion | None) -> None:
    """ConfigError unless `method` is known and has a model exactly when it measures one (before any work)."""
    if method not in METHODS:
        raise ConfigError(f"unknown selection method {method!r}; methods: {list(METHODS)}")
    if method == "permutation" and model is None:
        raise ConfigError("--method permutation measures a published model: give --model NAME[@VERSION]")
    if method != "permutation" and model is not None:
        raise ConfigError(f"--method {method} trains no model of ours and measures none: drop --model")


def chosen(ranking: FeatureRanking, top_k: int | None) -> tuple[str, ...]:
    """The features a derived spec keeps: the top k; without k, what the method itself kept (OptFS's open gates)."""
    if top_k is not None:
        if not 1 <= top_k <= len(ranking.features):
            raise ConfigError(f"--top-k must be in [1, {len(ranking.features)}] (the ranked features), got {top_k}")
        return ranking.top(top_k)
    kept = ranking.meta.get("kept")
    if not kept:
        raise ConfigError(f"--method {ranking.method} keeps no set of its own: give --top-k")
    return tuple(kept)
