"""`muxrec demo` / `make demo`: the main job end to end on this machine.

Train DeepFM on MovieLens-100K (when it is on disk, else downloaded, else, offline, the synthetic
dataset, with a one-line notice), evaluate it, serve it with Ray Serve, send a few rank and embed
requests over HTTP, print the answers, and stop the service.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from muxrec.apps.serving import free_port, serving
from muxrec.artifacts import ArtifactRegistry
from muxrec.config import model_file
from muxrec.data import download, find_dataset, load_source
from muxrec.errors import DataError, DataNotFoundError
from muxrec.models import make_config
from muxrec.pipelines.evaluate import evaluate
from muxrec.pipelines.prepare import prepare_cached
from muxrec.pipelines.train import TrainJob, train
from muxrec.ray_env import ensure_ray, shutdown_started_ray
from muxrec.spec import FeatureSpec, load_spec

MODEL = "deepfm"


def pick_dataset(config_dir: Path) -> FeatureSpec:
    try:
        find_dataset("ml-100k")
        print("[demo] dataset: MovieLens-100K")
    except DataNotFoundError:
        try:
            download("ml-100k")
            print("[demo] dataset: MovieLens-100K (downloaded)")
        except DataError as err:
            print(f"[demo] MovieLens-100K is not available ({err}); using the synthetic dataset instead")
            return load_spec(config_dir / "synthetic.yaml")
    return load_spec(config_dir / "ml-100k.yaml")


def example_request(spec: FeatureSpec, raw: pa.Table, candidates: int = 8) -> tuple[str, dict]:
    """A rank request for one real user and items they have not rated: user columns go in `context`
    (the columns that never vary within one user's rows), the rest in each candidate."""
    user_key, item_key = spec.keys["user"], spec.keys["item"]
    columns = [c.name for c in spec.request_columns()]
    user = raw[user_key][0].as_py()
    mine = raw.filter(pc.equal(raw[user_key], user))
    per_user = [c for c in columns if c != item_key and not pa.types.is_list(mine[c].type)
                and len(pc.unique(mine[c])) == 1]
    context = {c: mine[c][0].as_py() for c in per_user}
    seen = set(mine[item_key].to_pylist())
    rows, picked = [], set()
    for row in raw.select(columns).slice(0, 20_000).to_pylist():
        if row[item_key] in seen or row[item_key] in picked:
            continue
        picked.add(row[item_key])
        rows.append({c: v for c, v in row.items() if c not in per_user})
        if len(rows) == candidates:
            break
    return str(user), {"context": context, "candidates": rows, "top_k": 5}


def run_demo(config_dir: Path, serve_config: Path, runs: Path, registry_root: Path) -> None:
    started = ensure_ray()  # the demo's Ray, unless one is kept or given: stopped with all its processes at the end
    try:
        _demo(config_dir, serve_config, runs, registry_root, started)
    finally:
        if started:
            shutdown_started_ray()


def _demo(config_dir: Path, serve_config: Path, runs: Path, registry_root: Path, ray_started: bool) -> None:
    spec = pick_dataset(config_dir)
    prepared = prepare_cached(spec, runs / "prepared")
    print(f"[demo] prepared {prepared.root}: " + ", ".join(
        f"{s} {v['rows']:,} rows" for s, v in prepared.stats["splits"].items()))
    mf = model_file(config_dir, MODEL)
    name = f"demo-{spec.name}-{MODEL}"
    job = TrainJob(str(prepared.root), mf.architecture, make_config(mf.architecture, mf.model), mf.train)
    result = train(job, ArtifactRegistry(registry_root), name, runs / "ray", fresh=True)
    report = evaluate(result.version, "test")
    click = report["tasks"][spec.label_names[0]]
    print(f"[demo] {result.version.ref}: test AUC {click['auc']:.4f}, logloss {click['logloss']:.4f}, "
          f"predicted rate {click['calibration']['predicted_rate']:.3f} vs observed "
          f"{click['calibration']['observed_rate']:.3f} ({result.metrics['epochs']} epochs, "
          f"{result.metrics['train_seconds']:.0f}s of training)")

    user, body = example_request(spec, load_source(spec.source))
    # An alias of its own, never set: the demo serves the version it just trained, whatever `serving` names.
    overrides = {"registry": str(Path(registry_root).resolve()), "model": name, "version": result.version.version,
                 "serving_alias": "demo"}
    with serving(serve_config, overrides, port=free_port(), remove_app=not ray_started) as url:
        print(f"[demo] serving {result.version.ref} at {url}")
        ranked = httpx.post(f"{url}/v1/rank", json=body, timeout=30).raise_for_status().json()
        print(f"[demo] POST /v1/rank for user {user}, {len(body['candidates'])} candidates -> top "
              f"{len(ranked['items'])}:")
        for item in ranked["items"]:
            print(f"         item {item['id']:>6}  score {item['score']:.4f}")
        for attempt in ("first", "second"):
            emb = httpx.post(f"{url}/v1/embed", json={"entity": "user", "ids": [user]}, timeout=30).raise_for_status()
            emb = emb.json()
            print(f"[demo] POST /v1/embed user {user} ({attempt} call): dim {emb['dim']}, cache hit "
                  f"{emb['cache_hits'][0]}, vector[:4] {[round(x, 4) for x in emb['vectors'][0][:4]]}")
        top = httpx.get(f"{url}/v1/features/importance", params={"top_k": 3}, timeout=30).raise_for_status().json()
        print("[demo] GET /v1/features/importance?top_k=3: " + json.dumps(
            [(f["name"], round(f["importance"], 4)) for f in top["features"]]))
    print("[demo] service stopped")
