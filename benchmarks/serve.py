"""`muxrec bench serve`: what the serving stack costs on top of the model itself.

In one run, against one model version:
  * /v1/rank with 100 candidates over loopback HTTP at concurrency 1 and 8: p50 / p95 / p99, QPS;
  * the floor: the same 100 rows through the model in this process (encode + forward, and forward
    alone), and the ratio of the HTTP p50 to it;
  * /v1/embed for 100 ids answered from the Redis cache (hits) vs computed (misses);
  * Redis: one MGET of 100 keys vs a loop of 100 GETs;
  * where the overhead goes: /healthz (proxy -> gateway) and a trivial one-hop route.
Figures go to docs/benchmarks/serve.md and serve-latency.png; the last line printed is JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from muxrec.apps.demo import example_request
from muxrec.apps.serving import free_port, serving
from muxrec.artifacts import ArtifactRegistry
from muxrec.config import model_file
from muxrec.data import load_source
from muxrec.benchmarks.environment import commit, machine
from muxrec.services.cache import cache_key, version_tag

CANDIDATES = 100


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def _ensure_model(config_dir: Path, runs: Path, registry: ArtifactRegistry, name: str) -> None:
    if registry.versions(name):
        return
    from muxrec.models import make_config
    from muxrec.pipelines.prepare import prepare_cached
    from muxrec.pipelines.train import TrainJob, train
    from muxrec.spec import load_spec

    print(f"[bench] no model {name!r} in {registry.root}: training DeepFM on ML-100K first (2 epochs)", flush=True)
    prepared = prepare_cached(load_spec(config_dir / "ml-100k.yaml"), runs / "prepared")
    mf = model_file(config_dir, "deepfm")
    job = TrainJob(str(prepared.root), mf.architecture, make_config(mf.architecture, mf.model),
                   replace(mf.train, epochs=2))
    train(job, registry, name, runs / "ray", fresh=True)


async def _load(url: str, body: dict, total: int, concurrency: int) -> tuple[list[float], float, int]:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in queue:
            t0 = time.perf_counter()
            r = await client.post(f"{url}/v1/rank", json=body)
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, wall, errors


def _route_p50(url: str, path: str, reps: int = 200) -> float:
    import httpx

    samples = []
    with httpx.Client(timeout=30) as http:
        for _ in range(reps):
            t0 = time.perf_counter()
            http.get(f"{url}{path}").raise_for_status()
            samples.append(time.perf_counter() - t0)
    return _percentiles(samples)["p50_ms"]


def _floor(loaded, raw_rows: pa.Table, reps: int = 200) -> dict[str, float]:
    import torch

    from muxrec.models import EncodedRows

    encode_forward, forward = [], []
    rows = EncodedRows(loaded.encode(raw_rows), loaded.inputs, with_labels=False)
    batch = rows.take(torch.arange(len(rows)))
    with torch.inference_mode():
        for _ in range(reps):
            t0 = time.perf_counter()
            loaded.predict_raw(raw_rows)
            encode_forward.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loaded.model(batch)
            forward.append(time.perf_counter() - t0)
    return {"encode_forward_p50_ms": _percentiles(encode_forward)["p50_ms"],
            "forward_p50_ms": _percentiles(forward)["p50_ms"]}


def _redis_mget_vs_get(url: str, n: int = 100, reps: int = 200) -> dict[str, float] | None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        return None
    keys = [f"muxrec:bench:{i}" for i in range(n)]
    client.mset({k: np.zeros(16, np.float32).tobytes() for k in keys})
    mget, loop = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        client.mget(keys)
        mget.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for k in keys:
            client.get(k)
        loop.append(time.perf_counter() - t0)
    client.delete(*keys)
    m, g = _percentiles(mget)["p50_ms"], _percentiles(loop)["p50_ms"]
    return {"keys": n, "mget_p50_ms": m, "get_loop_p50_ms": g, "loop_over_mget": round(g / m, 1)}


def _embed(url: str, redis_url: str, tag: str, ids: list[str], reps: int = 100) -> dict[str, Any]:
    import httpx
    import redis

    client = redis.Redis.from_url(redis_url) if redis_url else None
    hits, misses = [], []
    with httpx.Client(timeout=30) as http:
        body = {"entity": "user", "ids": ids}
        for _ in range(reps):
            if client is not None:
                client.delete(*[cache_key(tag, "user", i) for i in ids])  # untimed
            t0 = time.perf_counter()
            r = http.post(f"{url}/v1/embed", json=body).json()
            misses.append(time.perf_counter() - t0)
            assert not any(r["cache_hits"])
            t0 = time.perf_counter()
            r = http.post(f"{url}/v1/embed", json=body).json()
            hits.append(time.perf_counter() - t0)
            assert all(r["cache_hits"]) or client is None
    h, m = _percentiles(hits), _percentiles(misses)
    return {"ids": len(ids), "hit": h, "miss": m, "miss_over_hit_p50": round(m["p50_ms"] / h["p50_ms"], 2)}


def bench_serve(config_dir: Path, serve_config: Path, runs: Path, registry_root: Path, name: str,
                requests: int = 400, out_dir: Path | None = None) -> dict[str, Any]:
    from muxrec.models.serialization import load_model

    registry = ArtifactRegistry(registry_root)
    _ensure_model(config_dir, runs, registry, name)
    version = registry.open(name, "latest")
    spec = version.read_spec()
    raw = load_source(spec.source)
    _, body = example_request(spec, raw, candidates=CANDIDATES)
    body["top_k"] = 10
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

    loaded = load_model(version)
    rows = pa.Table.from_pylist([{**body["context"], **c} for c in body["candidates"]])
    floor = _floor(loaded, rows)

    result: dict[str, Any] = {"bench": "serve", "model_version": version.ref, "candidates": CANDIDATES,
                              "requests_per_level": requests}
    # An alias of its own, never set: the benchmark serves exactly `version`, whatever `serving` names.
    overrides = {"registry": str(Path(registry_root).resolve()), "model": name, "version": version.version,
                 "serving_alias": "bench-serve"}
    with serving(serve_config, overrides, port=free_port()) as url:
        asyncio.run(_load(url, body, 30, 1))  # warm-up
        levels = {}
        for concurrency in (1, 8):
            latencies, wall, errors = asyncio.run(_load(url, body, requests, concurrency))
            levels[f"c{concurrency}"] = {**_percentiles(latencies), "qps": round(len(latencies) / wall, 1),
                                         "errors": errors}
            levels[f"c{concurrency}"]["_samples"] = latencies
        # Where the overhead goes: the proxy -> gateway ingress alone, and one trivial handle hop.
        result["hops"] = {"ingress_p50_ms": _route_p50(url, "/healthz"),
                          "ingress_plus_one_hop_p50_ms": _route_p50(url, "/v1/features/importance?top_k=1")}
        users = [str(u) for u in dict.fromkeys(raw[spec.keys["user"]].to_pylist())][:100]
        tag = version_tag(version.ref, version.weights_sha256)
        result["embed"] = _embed(url, redis_url, tag, users)
    result["rank"] = {k: {kk: vv for kk, vv in v.items() if kk != "_samples"} for k, v in levels.items()}
    result["floor"] = floor
    p50 = result["rank"]["c1"]["p50_ms"]
    result["overhead_p50_ms"] = round(p50 - floor["encode_forward_p50_ms"], 3)
    result["p50_over_floor"] = round(p50 / floor["encode_forward_p50_ms"], 2)
    result["redis"] = _redis_mget_vs_get(redis_url)
    result["commit"], result["machine"] = commit(), machine()
    if out_dir is not None:
        _write(result, {k: v["_samples"] for k, v in levels.items()}, out_dir)
    return result


def _write(result: dict[str, Any], samples: dict[str, list[float]], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for level, values in samples.items():
        ms = np.sort(np.asarray(values) * 1000)
        ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=f"/v1/rank, concurrency {level[1:]}")
    ax.axvline(result["floor"]["encode_forward_p50_ms"], color="grey", linestyle="--",
               label="floor: encode + forward in-process (p50)")
    ax.set_xlabel("latency (ms), 100 candidates, loopback HTTP")
    ax.set_ylabel("fraction of requests")
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"muxrec serving latency ({result['model_version']})")
    fig.tight_layout()
    fig.savefig(out_dir / "serve-latency.png", dpi=120)
    plt.close(fig)
    r, f, e = result["rank"], result["floor"], result["embed"]
    lines = [
        "# Serving benchmark",
        "",
        "Made by `muxrec bench serve --json` (Ray Serve on this machine, loopback HTTP, Redis on 127.0.0.1).",
        f"Model `{result['model_version']}`, {result['candidates']} candidates per rank request, "
        f"{result['requests_per_level']} requests per level, commit {result['commit']}.",
        "",
        "| /v1/rank | p50 ms | p95 ms | p99 ms | QPS | errors |",
        "|---|---|---|---|---|---|",
        *[f"| concurrency {k[1:]} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} | {v['qps']} | {v['errors']} |"
          for k, v in r.items()],
        "",
        f"Floor, same 100 rows in-process: encode + forward {f['encode_forward_p50_ms']} ms p50, forward alone "
        f"{f['forward_p50_ms']} ms. Gateway overhead (p50 - floor): **{result['overhead_p50_ms']} ms**; "
        f"p50 / floor = {result['p50_over_floor']}.",
        "",
        f"Where it goes (same run): a trivial route through the Serve proxy to the gateway (`/healthz`) takes "
        f"{result['hops']['ingress_p50_ms']} ms p50; one more deployment-handle hop "
        f"(`/v1/features/importance`) {result['hops']['ingress_plus_one_hop_p50_ms']} ms. /v1/rank makes exactly "
        "those two hops (proxy -> Gateway -> Ranker), plus request validation, the Ranker's batching wait "
        "(2 ms) and the encode + forward pass inside a Ranker that holds half a CPU.",
        "",
        "| /v1/embed, 100 ids | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|",
        f"| cache hits | {e['hit']['p50_ms']} | {e['hit']['p95_ms']} | {e['hit']['p99_ms']} |",
        f"| cache misses (Embedder call) | {e['miss']['p50_ms']} | {e['miss']['p95_ms']} | {e['miss']['p99_ms']} |",
        "",
    ]
    if result["redis"]:
        red = result["redis"]
        lines += [f"Redis, {red['keys']} keys: one MGET {red['mget_p50_ms']} ms p50 vs a loop of GETs "
                  f"{red['get_loop_p50_ms']} ms ({red['loop_over_mget']}x).", ""]
    lines += ["![latency CDF](serve-latency.png)", ""]
    (out_dir / "serve.md").write_text("\n".join(lines))
    (out_dir / "results").mkdir(exist_ok=True)
    (out_dir / "results" / "serve.json").write_text(json.dumps(result, indent=1))
