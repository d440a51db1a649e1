"""`muxrec bench pipeline`: the streaming data plane at scale, and what it costs the driver.

    muxrec bench pipeline --rows 20000000 --json

On a synthetic set (configs/synthetic.yaml, with --users / --items distinct ids, a few million by
default) it times, one after the other on the same Ray instance:

    prepare   the whole preprocessing (Ray Data: generate, derive, fit on train, encode, write)
    rerun     prepare again with reuse: it must find the output and write nothing
    train     `muxrec train` of one DeepFM epoch (configs/models/deepfm.yaml): Ray Train, then evaluation
              of valid and test and publishing on the driver
    score     `muxrec score` of --score-rows raw rows by the actor pool, after the actors started

and samples the resident memory (RSS) of the driver and of every Ray worker process on this machine
twice a second (from /proc: Linux; the workers of the local Ray it starts, so run it without
RAY_ADDRESS). It also splits one block's scoring time into derive / encode / tensors / forward
in-process, to show where scoring time goes. Results go to docs/benchmarks/results/pipeline-<rows>.json;
docs/benchmarks/pipeline.md tabulates every result there side by side (2M next to 20M).
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from muxrec.artifacts import ArtifactRegistry
from muxrec.benchmarks.environment import commit, machine, processes
from muxrec.config import load_model_file
from muxrec.data import synthetic_config
from muxrec.data.synthetic import generate_chunk
from muxrec.encoding import derive
from muxrec.models import EncodedRows, make_config
from muxrec.models.serialization import load_model, predict_proba
from muxrec.pipelines.io import replacing, write_parquet
from muxrec.pipelines.prepare import prepare
from muxrec.pipelines.score import score
from muxrec.pipelines.sources import ROW_COLUMN, source_dataset
from muxrec.pipelines.train import TrainJob, train
from muxrec.ray_env import ensure_ray
from muxrec.spec import FeatureSpec, load_spec, parse_spec

MB = 1 << 20


class MemoryWatch:
    """Peak RSS of this process and of each Ray worker process (by pid), sampled in a thread."""

    def __init__(self, every_s: float = 0.5):
        self.every_s = every_s
        self.driver_peak = 0
        self.stage = "start"  # what the driver is doing: its peak is also kept per stage
        self.stage_peaks: dict[str, int] = {}
        self.workers: dict[int, tuple[int, str]] = {}  # pid -> (peak RSS, process title at the peak)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        """The driver and the Ray workers started by it (the local Ray's raylet is its child)."""
        procs = processes()
        me = os.getpid()
        rss = procs[me].rss_bytes if me in procs else 0
        self.driver_peak = max(self.driver_peak, rss)
        self.stage_peaks[self.stage] = max(self.stage_peaks.get(self.stage, 0), rss)
        for pid, proc in procs.items():
            ancestor, hops = proc.parent, 0
            while ancestor not in (me, 0, 1) and hops < 6:
                ancestor, hops = procs[ancestor].parent if ancestor in procs else 0, hops + 1
            if ancestor == me and proc.title.startswith("ray::") and proc.rss_bytes > self.workers.get(pid, (0, ""))[0]:
                self.workers[pid] = (proc.rss_bytes, proc.title[:60])

    def enter(self, stage: str) -> None:
        """From now on the driver's samples count towards `stage` (sampled once at the switch too)."""
        self._sample()
        self.stage = stage

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every_s)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, Any]:
        # The kernel's own high-water mark catches peaks between two samples.
        self.driver_peak = max(self.driver_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        workers = sorted(self.workers.values(), reverse=True)
        return {"driver_peak_rss_mb": round(self.driver_peak / MB),
                "driver_peak_rss_mb_by_stage": {k: round(v / MB) for k, v in self.stage_peaks.items()},
                "worker_peak_rss_mb": round(workers[0][0] / MB) if workers else None,
                "workers": [{"title": t, "peak_rss_mb": round(r / MB)} for r, t in workers[:12]]}


def bench_spec(config_dir: Path, rows: int, users: int, items: int, seed: int = 7) -> FeatureSpec:
    data = load_spec(config_dir / "synthetic.yaml").model_dump(mode="json")
    data["name"] = f"bench-pipeline-{rows}"
    data["source"]["options"] = {"rows": rows, "users": users, "items": items, "seed": seed}
    return parse_spec(data)


def _write_raw(spec: FeatureSpec, rows: int, folder: Path) -> None:
    """The first `rows` source rows as Parquet: the input of the scoring stage."""
    ds = source_dataset(spec.source).limit(rows).drop_columns([ROW_COLUMN])
    with replacing(folder) as staging:
        write_parquet(ds, staging, rows_per_file=250_000)


def score_profile(spec: FeatureSpec, version) -> dict[str, float]:
    """Seconds per million rows of each scoring stage, on one synthetic chunk, in this process, one thread."""
    loaded = load_model(version)
    raw = generate_chunk(synthetic_config(spec.source), 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        derived = derive(raw, loaded.spec, labels=False, split=False)
        t1 = time.perf_counter()
        encoded = loaded.encode(raw)
        t2 = time.perf_counter() - (t1 - t0)  # encode() derives again; count only the encoding
        rows = EncodedRows(encoded, loaded.inputs, with_labels=False)
        t3 = time.perf_counter()
        predict_proba(loaded.model, rows, 8192)
        t4 = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    per = 1e6 / raw.num_rows
    del derived
    return {"derive_s": round((t1 - t0) * per, 2), "encode_s": round((t2 - t1) * per, 2),
            "tensors_s": round((t3 - t2) * per, 2), "forward_s": round((t4 - t3) * per, 2)}


def bench_pipeline(rows: int, users: int, items: int, score_rows: int, config_dir: Path, work: Path,
                   out_dir: Path | None) -> dict[str, Any]:
    """Prepare, rerun, train one epoch, score; return figures and peak memory."""
    spec = bench_spec(config_dir, rows, users, items)
    work = Path(work) / spec.name
    ensure_ray()
    result: dict[str, Any] = {"benchmark": "pipeline", "rows": rows, "users": users, "items": items}
    with MemoryWatch() as watch:
        watch.enter("prepare")
        t0 = time.perf_counter()
        prepared = prepare(spec, work / "prepared")
        prepare_s = time.perf_counter() - t0
        files = {p: p.stat().st_mtime_ns for p in prepared.root.rglob("*.parquet")}
        t0 = time.perf_counter()
        prepare(spec, work / "prepared", reuse=True)
        rerun_s = time.perf_counter() - t0
        rewritten = sum(p.stat().st_mtime_ns != m for p, m in files.items())

        watch.enter("train")  # what `muxrec train` does: fit on Ray Train, evaluate valid and test, publish
        model_file = load_model_file(config_dir / "models" / "deepfm.yaml")
        job = TrainJob(str(prepared.root), "deepfm", make_config("deepfm", model_file.model),
                       replace(model_file.train, epochs=1))
        registry = ArtifactRegistry(work / "registry")
        t0 = time.perf_counter()
        trained = train(job, registry, "bench-deepfm", work / "ray", run_name="deepfm", fresh=True)
        train_s = time.perf_counter() - t0
        epoch_s, wall = trained.metrics["history"][0]["epoch_seconds"], trained.metrics["wall_seconds"]
        version = trained.version

        watch.enter("score")
        n_score = min(score_rows, rows)
        _write_raw(spec, n_score, work / "score-input")
        score(registry, "bench-deepfm", version.version, work / "score-input", work / "scored")  # actors warm up
        t0 = time.perf_counter()
        report = score(registry, "bench-deepfm", version.version, work / "score-input", work / "scored")
        score_s = time.perf_counter() - t0
    train_rows = prepared.stats["splits"]["train"]["rows"]
    result.update({
        "prepare_s": round(prepare_s, 1), "prepare_rows_per_s": round(rows / prepare_s),
        "rerun_prepare_s": round(rerun_s, 2), "rerun_files_rewritten": rewritten,
        "train_rows": train_rows, "train_epoch_s": round(epoch_s, 1), "train_wall_s": round(wall, 1),
        "train_evaluate_publish_s": round(train_s - wall, 1),
        "train_rows_per_s": round(train_rows / epoch_s), "train_rows_per_s_wall": round(train_rows / wall),
        "score_rows": report["rows"], "score_s": round(score_s, 1),
        "score_rows_per_min": round(report["rows"] / score_s * 60),
        "vocabulary_ids": sum(len(t.values) for t in prepared.vocab.tables.values() if t.values is not None),
        **watch.report(),
        "score_profile_s_per_1m_rows": score_profile(spec, version),
        "commit": commit(), "machine": machine(),
    })
    if out_dir is not None:
        save(result, Path(out_dir))
    return result


def save(result: dict[str, Any], out_dir: Path) -> None:
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"pipeline-{result['rows']}.json").write_text(json.dumps(result, indent=1) + "\n")
    runs = sorted((json.loads(p.read_text()) for p in results.glob("pipeline-*.json")), key=lambda r: r["rows"])
    columns = [("rows", "rows"), ("distinct ids in the vocabularies", "vocabulary_ids"),
               ("prepare rows/s", "prepare_rows_per_s"), ("prepare rerun s (reused)", "rerun_prepare_s"),
               ("files rewritten by the rerun", "rerun_files_rewritten"),
               ("train rows/s (epoch)", "train_rows_per_s"), ("train rows/s (with start-up)", "train_rows_per_s_wall"),
               ("score rows/min", "score_rows_per_min"), ("driver peak RSS MB", "driver_peak_rss_mb"),
               ("largest worker peak RSS MB", "worker_peak_rss_mb"), ("commit", "commit")]
    lines = ["# Streaming pipeline at scale", "",
             "`muxrec bench pipeline --rows N --json` (benchmarks/pipeline.py): synthetic rows with millions of",
             "distinct ids; prepare, one DeepFM epoch, batch scoring. One column per run; each run's JSON,",
             "with every worker's peak RSS and the scoring profile, is in results/pipeline-<rows>.json.", "",
             "| | " + " | ".join(f"{r['rows']:,} rows" for r in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    for title, key in columns[1:]:
        lines.append(f"| {title} | " + " | ".join(f"{r.get(key)}" for r in runs) + " |")
    for stage in ("prepare", "train", "score"):
        lines.append(f"| driver peak RSS MB while {stage} | "
                     + " | ".join(f"{r.get('driver_peak_rss_mb_by_stage', {}).get(stage)}" for r in runs) + " |")
    lines += ["", "Scoring time per million rows, one thread, by stage (derive / encode / tensors / forward):", ""]
    for r in runs:
        p = r["score_profile_s_per_1m_rows"]
        lines.append(f"- {r['rows']:,} rows: " + ", ".join(f"{k[:-2]} {v} s" for k, v in p.items()))
    lines += ["", f"Machine: {runs[-1]['machine']}; each column's commit in its last row. The machine is shared",
              "with other jobs, so rates are noisy; the memory figures are what this benchmark is for.", ""]
    (out_dir / "pipeline.md").write_text("\n".join(lines))
