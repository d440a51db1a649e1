"""The `muxrec` command. The composition root: it alone reaches into every layer (lazily, so that
`muxrec --help` stays fast and the core stays importable without torch or Ray).

Every error a user can cause ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from muxrec.config import EMBEDDING_OPTIMIZERS, SHARDING_TYPES, TASK_WEIGHTINGS
from muxrec.errors import ConfigError, MuxrecError
from muxrec.selection import METHODS

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


def _default(env: str, fallback: str) -> Path:
    return Path(os.environ.get(env) or fallback)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=False, default=str), flush=True)


# ---- commands -------------------------------------------------------------------------------


def cmd_data_download(args: argparse.Namespace) -> int:
    from muxrec.data import download

    path = download(args.dataset, args.dest, url=args.url, checksum=args.checksum)
    print(f"{args.dataset} is in {path}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from muxrec.pipelines.prepare import prepare
    from muxrec.spec import load_spec

    prepared = prepare(load_spec(args.spec), args.out, reuse=not args.force, registry=args.registry)
    print(json.dumps({"prepared": str(prepared.root), **prepared.stats}, indent=1))
    return 0


def cmd_encoders_fit_text(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.models.encoders.text import TextTowerConfig
    from muxrec.pipelines.encoders import fit_text_encoder
    from muxrec.ray_env import ensure_ray
    from muxrec.spec import load_spec

    spec = load_spec(args.source_spec)
    ensure_ray()
    version = fit_text_encoder(spec.source, args.column, ArtifactRegistry(args.registry), args.name,
                               _config(TextTowerConfig, max_len=args.max_len))
    _print_json({"encoder": f"{version.name}@{version.version}", **version.metadata})
    return 0


def cmd_encoders_align(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.pipelines.align import AlignConfig, align
    from muxrec.spec import load_spec

    cfg = _config(AlignConfig, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  width_mult=args.width_mult, fine_tune_layers=args.fine_tune_layers, num_workers=args.num_workers)
    result = align(load_spec(args.source_spec), args.text_column, args.image_column, ArtifactRegistry(args.registry),
                   args.name, cfg)
    _print_json({k: v for k, v in result.items() if k != "history"})  # per-epoch figures were printed as it ran
    return 0


def cmd_encoders_catalog(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.pipelines.content import write_catalog
    from muxrec.spec import load_spec

    report = write_catalog(load_spec(args.spec), args.feature, ArtifactRegistry(args.registry), args.output)
    _print_json(report)
    return 0


def _config(cls: type, **given: Any) -> Any:
    """cls built from the given non-None values (its defaults for the rest); a bad value is one line."""

    try:
        return cls(**{k: v for k, v in given.items() if v is not None})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cls.__name__}: {err}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.config import load_model_file, model_file
    from muxrec.models import make_config
    from muxrec.pipelines.prepare import prepare_cached
    from muxrec.pipelines.train import TrainJob, train, with_overrides
    from muxrec.spec import load_spec

    # Validate everything the user typed before any work starts.
    spec = load_spec(args.spec)
    mf = load_model_file(args.config) if args.config else model_file(CONFIG_DIR, args.model)
    model_cfg = make_config(mf.architecture, mf.model)
    train_cfg = with_overrides(mf.train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               seed=args.seed, num_workers=args.num_workers, patience=args.patience,
                               sharding=args.sharding, embedding_optimizer=args.embedding_optimizer,
                               embedding_lr=args.embedding_lr, task_weighting=args.task_weighting)
    prepared = prepare_cached(spec, args.runs / "prepared", registry=args.registry)
    job = TrainJob(str(prepared.root), mf.architecture, model_cfg, train_cfg)
    name = args.name or f"{spec.name}-{args.model}"
    result = train(job, ArtifactRegistry(args.registry), name, args.runs / "ray", fresh=args.fresh)
    summary = {k: v for k, v in result.metrics.items() if k != "history"}
    _print_json({"version": result.version.ref, **summary})
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.log import say
    from muxrec.pipelines.feature_selection import check_method, chosen, select
    from muxrec.pipelines.prepare import prepare_cached
    from muxrec.selection import publish_ranking, subset_spec
    from muxrec.spec import load_spec

    spec = load_spec(args.spec)
    registry = ArtifactRegistry(args.registry)
    model = None
    if args.model is not None:
        name, _, ref = args.model.partition("@")
        model = registry.open(name, ref or "latest")  # hash-checked before any work
    check_method(args.method, model)
    if args.write_spec is not None and args.top_k is None and args.method != "optfs":
        raise ConfigError("--write-spec needs --top-k (only optfs keeps a set of its own)")
    prepared = prepare_cached(spec, args.runs / "prepared", registry=args.registry)
    say(f"ranking the features of {spec.name} with {args.method}"
        + (f" on {model.ref}" if model else "") + f" ({prepared.stats['splits']['train']['rows']} train rows)")
    ranking = select(args.method, prepared, model=model, task=args.task, seed=args.seed)
    say(f"{args.method} took {ranking.meta['seconds']:.1f}s")
    stored = publish_ranking(registry, ranking, prepared.spec, model=model.ref if model else None)
    out: dict[str, Any] = {"ranking": stored.ref, "method": ranking.method, "task": ranking.task,
                           "seconds": ranking.meta.get("seconds"),
                           "features": [{"name": f.name, "score": f.score} for f in ranking.features],
                           **{k: ranking.meta[k] for k in ("kept", "interactions") if k in ranking.meta}}
    if args.write_spec is not None or args.top_k is not None:
        keep = chosen(ranking, args.top_k)
        name = f"{spec.name}-{ranking.method}-top{len(keep)}"
        derived = subset_spec(prepared.spec, keep, name)
        path = args.write_spec or args.runs / "selected" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(derived.to_yaml())
        out["spec"] = {"name": name, "path": str(path), "features": list(keep)}
    if args.json:
        _print_json(out)
        return 0
    print(f"{ranking.method} ranking of {spec.name} ({ranking.task or 'unsupervised'}), stored as {stored.ref}")
    for i, f in enumerate(ranking.features, 1):
        print(f"  {i:3d}. {f.name:<24s} {f.score: .6f}")
    if "interactions" in out:
        print(f"kept pairs: {', '.join(f'{a} x {b}' for a, b, _ in out['interactions']) or 'none'}")
    if "spec" in out:
        print(f"spec with {len(out['spec']['features'])} features: {out['spec']['path']}\n"
              f"  retrain on it (the prepared rows are reused): muxrec train --spec {out['spec']['path']} --model deepfm")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.pipelines.evaluate import evaluate

    version = ArtifactRegistry(args.registry).open(args.name, args.version)
    report = evaluate(version, args.split)
    if args.json:
        _print_json(report)
        return 0
    print(f"{report['model']} on {report['split']} ({report['rows']} rows)")
    for task, m in report["tasks"].items():
        cal = m["calibration"]
        print(f"  {task}: AUC {m['auc']:.4f}  logloss {m['logloss']:.4f}  predicted rate {cal['predicted_rate']:.3f}"
              f"  observed {cal['observed_rate']:.3f}  ECE {cal['ece']:.4f}")
        for b in cal["bins"]:
            print(f"      p in [{b['lo']:.1f}, {b['hi']:.1f}): {b['count']:6d} rows  predicted {b['predicted']:.3f}"
                  f"  observed {b['observed']:.3f}")
        for key, given in m.items():
            if key.startswith("given_"):
                print(f"    on the {given['rows']} rows where {key.removeprefix('given_')} = 1: AUC {given['auc']:.4f}"
                      f"  logloss {given['logloss']:.4f}")
    if "blend" in report:
        weights = ", ".join(f"{t} {w:.2f}" for t, w in report["blend"]["weights"].items())
        print(f"  blend ({weights}): AUC {report['blend']['auc']:.4f}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.models import known_models

    registry = ArtifactRegistry(args.registry)
    out = {"architectures": known_models(),
           "registry": {n: {"versions": registry.versions(n), "aliases": registry.aliases(n)} for n in registry.names()}}
    if args.json:
        _print_json(out)
    else:
        print(json.dumps(out, indent=1))
    return 0


def cmd_bench_ctr(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.benchmarks.ctr import bench_ctr

    seeds = _seeds(args.seeds) if args.seeds else [args.seed]
    rows = bench_ctr(args.dataset, args.model, seeds, CONFIG_DIR, args.runs, ArtifactRegistry(args.registry),
                     None if args.no_save else args.out, overrides=args.set)
    for row in _summarised(rows, args.json, lambda r: (
            f"{r['model']} on {r['dataset']} ({len(seeds)} seed(s)): test AUC {r['test_auc']:.4f}"
            f" ± {r['test_auc_std']:.4f}, logloss {r['test_logloss']:.4f}, valid AUC "
            f"{r['valid_auc']:.4f}, {r['params']:,} params, {r['train_seconds']:.0f}s")):
        flat = {k: v for k, v in row.items() if k != "per_seed"}
        if row.get("per_seed") and len(row["per_seed"]) == 1:  # the single-seed form of the foundation issue
            only = row["per_seed"][0]
            flat.update(seed=only["seed"], best_epoch=only["best_epoch"], version=only["version"])
        _print_json(flat)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from muxrec.benchmarks.train import bench_train

    rows = bench_train(args.dataset, args.model, CONFIG_DIR, args.runs, None if args.no_save else args.out,
                       overrides=args.set, epochs=args.epochs, threads=args.threads)
    for row in _summarised(rows, args.json, lambda r: (
            f"{r['model']}: floor {r['floor_samples_per_s']:,}/s, loop {r['loop_samples_per_s']:,}/s "
            f"({r['loop_vs_floor']:.2f}x floor), muxrec train {r['command_samples_per_s']:,}/s "
            f"({r['command_vs_loop']:.2f}x the loop's epoch), start-up {r['startup_s']:.1f}s, "
            f"tear-down {r['teardown_s']:.1f}s")):
        _print_json(row)
    return 0


def _summarised(rows: Iterable[dict[str, Any]], quiet: bool,
                summary: Callable[[dict[str, Any]], str]) -> Iterator[dict[str, Any]]:
    """Benchmark rows, each summarised in one line on stderr first unless `quiet` (--json)."""
    for row in rows:
        if not quiet:
            skipped = f"{row['model']} on {row['dataset']}: skipped ({row['skipped']})" if "skipped" in row else None
            print(skipped or summary(row), file=sys.stderr)
        yield row


def cmd_bench_embedding(args: argparse.Namespace) -> int:
    from muxrec.benchmarks.embedding import bench_embedding

    progress = None if args.json else (lambda line: print(f"[muxrec] {line}", file=sys.stderr))
    rows = []
    for row in bench_embedding(args.dataset, [m.strip() for m in args.model.split(",") if m.strip()],
                               _seeds(args.seeds), CONFIG_DIR, None if args.no_save else args.out,
                               methods=[m.strip() for m in args.methods.split(",")], budgets=args.budgets,
                               progress=progress):
        rows.append({k: v for k, v in row.items() if k not in ("per_seed", "machine")})
        if not args.json:
            print(f"{row['model']} {row['method']} at {row['budget']:g}: test AUC {row['test_auc']:.4f} ± "
                  f"{row['test_auc_std']:.4f}, {row['serve_bytes']:,} bytes", file=sys.stderr)
    _print_json({"dataset": args.dataset, "rows": rows})
    return 0


def cmd_bench_mtl(args: argparse.Namespace) -> int:
    from muxrec.benchmarks.mtl import bench_mtl, summary

    progress = None if args.json else (lambda line: print(f"[muxrec] {line}", file=sys.stderr))
    rows = []
    for row in bench_mtl(args.dataset, [m.strip() for m in args.models.split(",") if m.strip()],
                         [m.strip() for m in args.single.split(",") if m.strip()],
                         _seeds(args.seeds), CONFIG_DIR, None if args.no_save else args.out, progress=progress,
                         overrides=args.set):
        rows.append({k: v for k, v in row.items() if k not in ("per_seed", "machine")})
        if not args.json:
            print(f"{row['model']}: " + ", ".join(f"{t} {m:.4f} ± {s:.4f}" for t, (m, s) in row["test_auc"].items()),
                  file=sys.stderr)
    _print_json({"dataset": args.dataset, "summary": summary(rows), "rows": rows})
    return 0


def cmd_bench_encoders(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.benchmarks.encoders import bench_encoders
    from muxrec.ray_env import ensure_ray

    progress = None if args.json else (lambda line: print(f"[muxrec] {line}", file=sys.stderr))
    ensure_ray()
    row = bench_encoders(args.dataset, _seeds(args.seeds), CONFIG_DIR, ArtifactRegistry(args.registry),
                         None if args.no_save else args.out, model=args.model, overrides=args.set,
                         redis_url=args.redis_url, progress=progress)
    _print_json({k: v for k, v in row.items() if k != "machine"})
    return 0


def cmd_bench_select(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.benchmarks.select import bench_select
    from muxrec.ray_env import ensure_ray

    progress = None if args.json else (lambda line: print(f"[muxrec] {line}", file=sys.stderr))
    methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    ensure_ray()
    row = bench_select(args.dataset, _seeds(args.seeds), CONFIG_DIR, args.runs, ArtifactRegistry(args.registry),
                       None if args.no_save else args.out, model=args.model, methods=methods,
                       ks=_seeds(args.ks) if args.ks else None, overrides=args.set, progress=progress)
    _print_json({k: v for k, v in row.items() if k != "machine"})
    return 0


def _budgets(text: str) -> list[float]:
    """`1,1/4,1/16` or `1,0.25`: memory budgets as fractions of the full tables."""
    try:
        out = [float(a) / float(b) if "/" in part else float(part)
               for part in text.split(",") for a, _, b in [part.partition("/")]]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected fractions like 1,1/4,1/16, got {text!r}") from None
    if not out or any(not 0 < b <= 1 for b in out):
        raise argparse.ArgumentTypeError(f"budgets must be in (0, 1], got {text!r}")
    return out


def cmd_bench_sharding(args: argparse.Namespace) -> int:
    from muxrec.benchmarks.sharding import bench_sharding

    progress = None if args.json else (lambda line: print(f"[muxrec] {line}", file=sys.stderr))
    result = bench_sharding(args.dataset, args.model, CONFIG_DIR, args.runs, None if args.no_save else args.out,
                            epochs=args.epochs, progress=progress)
    _print_json({k: v for k, v in result.items() if k != "machine"})
    return 0


def cmd_bench_hiformer(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.benchmarks.hiformer import bench_hiformer

    result = bench_hiformer(args.dataset, ArtifactRegistry(args.registry), args.out)
    if not args.json:
        for r in result["variants"]:
            print(f"{r['variant']:>14}: test AUC {r['test_auc']:.4f}, {r['latency_ms_b1000']:.2f} ms / 1000 rows "
                  f"({r['speedup_b1000']:.2f}x)", file=sys.stderr)
    _print_json(result)
    return 0


def _pool_size(text: str) -> int | tuple[int, int]:
    """`4` or `1,4` (min,max) actors."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN,MAX, got {text!r}") from None
    if len(sizes) not in (1, 2) or min(sizes) < 1 or sizes[0] > sizes[-1]:
        raise argparse.ArgumentTypeError(f"expected N >= 1 or MIN,MAX with 1 <= MIN <= MAX, got {text!r}")
    return sizes[0] if len(sizes) == 1 else sizes


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise MuxrecError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise MuxrecError("--seeds: give at least one seed")
    return seeds


def cmd_ray(args: argparse.Namespace) -> int:
    from muxrec.log import say
    from muxrec.ray_env import kept_ray_address, ray_down, ray_up

    if args.ray_command == "up":
        running = kept_ray_address()
        address = ray_up(args.num_cpus)
        say(f"Ray {'is already running' if running else 'started'} at {address}; muxrec commands join it "
            "(`muxrec ray down` stops it)")
    elif args.ray_command == "down":
        say("Ray stopped" if ray_down() else "no Ray kept by `muxrec ray up` is running")
    else:
        address = kept_ray_address()
        print(address or "not running")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from muxrec.apps.demo import run_demo

    run_demo(CONFIG_DIR, REPO_ROOT / "deploy" / "serve.yaml", args.runs, args.registry)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from muxrec.apps.serving import serve_until_stopped

    overrides = {k: v for k, v in {"model": args.name, "version": args.model_version,
                                   "registry": str(args.registry) if args.registry else None}.items() if v}
    serve_until_stopped(args.config, overrides, host=args.host, port=args.port)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from muxrec.artifacts import ArtifactRegistry
    from muxrec.pipelines.score import score

    report = score(ArtifactRegistry(args.registry), args.name, args.model_version, args.input, args.output,
                   batch_size=args.batch_size, concurrency=args.concurrency)
    _print_json(report)
    return 0


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from muxrec.benchmarks.pipeline import bench_pipeline

    result = bench_pipeline(args.rows, args.users, args.items, args.score_rows, CONFIG_DIR, args.runs,
                            out_dir=None if args.no_save else args.out)
    _print_json(result)
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from muxrec.benchmarks.serve import bench_serve

    result = bench_serve(CONFIG_DIR, REPO_ROOT / "deploy" / "serve.yaml", args.runs, args.registry, args.name,
                         requests=args.requests, out_dir=None if args.no_save else args.out)
    _print_json(result)
    return 0


# ---- parser ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit code 2 with the usage line, as argparse does
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="muxrec", description="Train and serve CTR / recommendation models.")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (host:port, or ray://host:10001 for a remote client) instead of "
                        "starting a local Ray; default $RAY_ADDRESS")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also print Ray's own logs and full tracebacks (env MUXREC_LOG_LEVEL=debug)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def paths(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--registry", type=Path, default=_default("MUXREC_REGISTRY", "artifacts"),
                        help="model registry folder (env MUXREC_REGISTRY; default ./artifacts)")
        sp.add_argument("--runs", type=Path, default=_default("MUXREC_RUNS", "runs"),
                        help="prepared data and Ray Train runs (env MUXREC_RUNS; default ./runs)")

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    dl = data_sub.add_parser("download", help="download a dataset and verify its checksum")
    dl.add_argument("dataset", choices=["ml-100k"])
    dl.add_argument("--dest", type=Path, default=None, help="parent folder (default: the user cache dir)")
    dl.add_argument("--url", default=None, help="override the download URL (mirrors, tests)")
    dl.add_argument("--checksum", default=None, help="expected ALGORITHM:HEX of the archive")
    dl.set_defaults(func=cmd_data_download)

    pr = sub.add_parser("prepare", help="preprocess a dataset with Ray Data into Parquet + vocabularies")
    pr.add_argument("--spec", type=Path, required=True, help="feature spec YAML, e.g. configs/ml-100k.yaml")
    pr.add_argument("--out", type=Path, default=_default("MUXREC_RUNS", "runs") / "prepared",
                    help="output root (default ./runs/prepared)")
    pr.add_argument("--force", action="store_true",
                    help="prepare again even if the output was made from the same spec and source files")
    pr.add_argument("--registry", type=Path, default=_default("MUXREC_REGISTRY", "artifacts"),
                    help="registry holding the encoders of content features (env MUXREC_REGISTRY; default ./artifacts)")
    pr.set_defaults(func=cmd_prepare)

    en = sub.add_parser("encoders", help="content encoders (text / image towers) as versioned registry artifacts")
    en_sub = en.add_subparsers(dest="encoders_command", required=True, parser_class=_Parser)
    ft = en_sub.add_parser("fit-text", help="fit the text tower's projection on a catalog's texts (PCA) and publish it")
    ft.add_argument("--source-spec", type=Path, required=True, help="a spec whose source holds the texts")
    ft.add_argument("--column", required=True, help="the source column of item texts, e.g. item_text")
    ft.add_argument("--name", required=True, help="registry name of the encoder, e.g. ml-100k-text")
    ft.add_argument("--max-len", type=int, default=None, help="tokens per text (default 64)")
    paths(ft)
    ft.set_defaults(func=cmd_encoders_fit_text)
    al = en_sub.add_parser("align", help="train image + text towers by ALIGN (Ray Train) and publish both")
    al.add_argument("--source-spec", type=Path, required=True, help="a spec whose source holds item images and titles")
    al.add_argument("--text-column", default="title")
    al.add_argument("--image-column", default="image")
    al.add_argument("--name", required=True, help="registry name prefix: publishes <name>-text and <name>-image")
    al.add_argument("--epochs", type=int, default=None)
    al.add_argument("--batch-size", type=int, default=None)
    al.add_argument("--lr", type=float, default=None)
    al.add_argument("--seed", type=int, default=None)
    al.add_argument("--width-mult", type=float, default=None, help="MobileNetV2 width multiplier")
    al.add_argument("--fine-tune-layers", type=int, default=None, help="MiniLM layers trained (default 0: frozen)")
    al.add_argument("--num-workers", type=int, default=None,
                    help="Ray Train workers (default 1); 0: in this process (no worker to start)")
    paths(al)
    al.set_defaults(func=cmd_encoders_align)
    ca = en_sub.add_parser("catalog", help="item vectors of a content feature for every distinct value (Ray Data)")
    ca.add_argument("--spec", type=Path, required=True, help="feature spec YAML with the content feature")
    ca.add_argument("--feature", required=True, help="the content feature, e.g. item_text")
    ca.add_argument("--output", type=Path, required=True, help="Parquet file: value, vector")
    paths(ca)
    ca.set_defaults(func=cmd_encoders_catalog)

    tr = sub.add_parser("train", help="train a model with Ray Train and publish it to the registry")
    tr.add_argument("--spec", type=Path, required=True, help="feature spec YAML")
    tr.add_argument("--model", required=True,
                    help="a configs/models/<model>.yaml name or an architecture (see `muxrec models`)")
    tr.add_argument("--config", type=Path, default=None,
                    help="model YAML with `architecture:`, `model:` and `train:` (default configs/models/<model>.yaml)")
    tr.add_argument("--name", default=None, help="registry name (default <spec>-<model>)")
    tr.add_argument("--epochs", type=int, default=None)
    tr.add_argument("--batch-size", type=int, default=None)
    tr.add_argument("--lr", type=float, default=None)
    tr.add_argument("--patience", type=int, default=None)
    tr.add_argument("--seed", type=int, default=None)
    tr.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (DDP over gloo when > 1); 0: in this process (no worker to start)")
    tr.add_argument("--sharding", default=None, choices=SHARDING_TYPES,
                    help="split the embedding tables over the workers with TorchRec's DistributedModelParallel "
                         "(default none: every worker holds every table)")
    tr.add_argument("--embedding-optimizer", default=None, choices=("auto", *EMBEDDING_OPTIMIZERS),
                    help="how tables learn (default auto: adam; rowwise_adagrad when tables are model-parallel)")
    tr.add_argument("--embedding-lr", type=float, default=None,
                    help="the tables' learning rate (default: --lr; 0.01 under Adagrad)")
    tr.add_argument("--task-weighting", default=None, choices=TASK_WEIGHTINGS,
                    help="multi-task losses: fixed (the spec's label weights, default) or uncertainty (learned)")
    tr.add_argument("--fresh", action="store_true", help="start over instead of resuming an unfinished run")
    paths(tr)
    tr.set_defaults(func=cmd_train)

    sl = sub.add_parser("select", help="rank features (permutation, optfs, outrank, quickselection), store the "
                                       "ranking in the registry, optionally write a spec with the top k")
    sl.add_argument("--spec", type=Path, required=True, help="feature spec YAML of the data to rank")
    sl.add_argument("--method", required=True, choices=METHODS)
    sl.add_argument("--model", default=None, help="NAME[@VERSION] of a model trained on --spec (permutation only)")
    sl.add_argument("--task", default=None, help="label to rank against (default: the spec's first)")
    sl.add_argument("--seed", type=int, default=0)
    sl.add_argument("--top-k", type=_positive, default=None, help="write a spec with the k best features")
    sl.add_argument("--write-spec", type=Path, default=None,
                    help="where the derived spec goes (default <runs>/selected/<spec>-<method>-top<k>.yaml)")
    sl.add_argument("--json", action="store_true", help="print one JSON object")
    paths(sl)
    sl.set_defaults(func=cmd_select)

    ev = sub.add_parser("evaluate", help="AUC, logloss and calibration of a model version on a split")
    ev.add_argument("--name", required=True, help="registry name")
    ev.add_argument("--version", default="latest", help="version (v0003) or alias (default latest)")
    ev.add_argument("--split", default="test", choices=["train", "valid", "test"])
    ev.add_argument("--json", action="store_true")
    paths(ev)
    ev.set_defaults(func=cmd_evaluate)

    mo = sub.add_parser("models", help="list architectures and registry contents")
    mo.add_argument("--json", action="store_true")
    paths(mo)
    mo.set_defaults(func=cmd_models)

    def bench_output(sp: argparse.ArgumentParser, json_help: str = "print only the JSON line on stdout") -> None:
        """--json, --out, --no-save and the paths: a benchmark that writes its table under docs/benchmarks."""
        sp.add_argument("--json", action="store_true", help=json_help)
        sp.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks")
        sp.add_argument("--no-save", action="store_true", help="do not write under docs/benchmarks")
        paths(sp)

    be = sub.add_parser("bench", help="benchmarks (print one JSON object as the last line)")
    be_sub = be.add_subparsers(dest="bench_command", required=True, parser_class=_Parser)
    ctr = be_sub.add_parser("ctr", help="fixed CTR protocol: prepare + train + evaluate")
    ctr.add_argument("--dataset", required=True,
                     help="a spec under configs/, e.g. ml-100k, ml-100k-graded, ml-100k-history, synthetic")
    ctr.add_argument("--model", required=True, help="configs/models/<model>.yaml names, comma-separated, or `all`")
    ctr.add_argument("--seed", type=int, default=2026, help="one seed (see --seeds)")
    ctr.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 2026,2027,2028 (overrides --seed)")
    ctr.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                     help="override every model's YAML, e.g. --set train.lr=3e-3 (repeatable; recorded in the results)")
    bench_output(ctr, "print only the JSON lines (one per model) on stdout")
    ctr.set_defaults(func=cmd_bench_ctr)

    bt = be_sub.add_parser("train", help="training speed: plain PyTorch floor, muxrec's loop, `muxrec train`")
    bt.add_argument("--dataset", default="ml-100k", help="a spec under configs/, e.g. ml-100k, ml-100k-history")
    bt.add_argument("--model", required=True, help="configs/models/<model>.yaml names, comma-separated, or `all`")
    bt.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override every model's YAML, e.g. --set model.hidden_units=[256,128] (repeatable)")
    bt.add_argument("--epochs", type=int, default=3, help="epochs per measurement (at least 2)")
    bt.add_argument("--threads", type=int, default=None,
                    help="torch threads in-process (default: all CPUs, what one Ray Train worker gets on a local Ray)")
    bench_output(bt, "print only the JSON lines (one per model) on stdout")
    bt.set_defaults(func=cmd_bench_train)

    hf = be_sub.add_parser("hiformer", help="Hiformer's low-rank and pruning tricks: speed-up and AUC cost")
    hf.add_argument("--dataset", default="ml-100k", help="the dataset `bench ctr` ran hiformer and hiformer-fast on")
    hf.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    hf.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks",
                    help="where bench ctr saved its results; the report is written here too")
    paths(hf)
    hf.set_defaults(func=cmd_bench_hiformer)

    em = be_sub.add_parser("embedding", help="test AUC against embedding bytes per compression method and budget")
    em.add_argument("--dataset", default="ml-100k", help="a spec under configs/ (its id features' own tables shrink)")
    em.add_argument("--model", default="deepfm", help="configs/models/<model>.yaml names, comma-separated")
    em.add_argument("--methods", default="hash,unified,qr", help="comma-separated: hash, unified, qr")
    em.add_argument("--budgets", type=_budgets, default="1,1/4,1/16,1/64",
                    help="fractions of the full tables' rows (1 = full tables)")
    em.add_argument("--seeds", default="2026,2027,2028", help="comma-separated seeds")
    bench_output(em, "print only the JSON line on stdout")
    em.set_defaults(func=cmd_bench_embedding)

    mt = be_sub.add_parser("mtl", help="per-task test AUC of every multi-task model beside single-task training")
    mt.add_argument("--dataset", default="ml-100k-mtl", help="a spec under configs/ with several labels")
    mt.add_argument("--models", default="shared_bottom,mmoe,ple,esmm,apem,task_expert",
                    help="multi-task configs/models/<model>.yaml names, comma-separated")
    mt.add_argument("--single", default="deepfm,shared_bottom",
                    help="single-task models trained on each task alone, comma-separated")
    mt.add_argument("--seeds", default="2026,2027,2028", help="comma-separated seeds")
    mt.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override every model's YAML, e.g. --set train.lr=5e-3 (repeatable; recorded in the results)")
    bench_output(mt, "print only the JSON line on stdout")
    mt.set_defaults(func=cmd_bench_mtl)

    ec = be_sub.add_parser("encoders", help="cold-start AUC with and without shared text / image encoders, and their cost")
    ec.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "synthetic"])
    ec.add_argument("--model", default="deepfm", help="a configs/models/<model>.yaml name")
    ec.add_argument("--seeds", default="2026,2027,2028", help="comma-separated seeds")
    ec.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override the model's YAML, e.g. --set train.lr=5e-3 (repeatable; recorded in the results)")
    ec.add_argument("--redis-url", default=os.environ.get("MUXREC_REDIS_URL", "redis://127.0.0.1:6379/0"),
                    help="the Redis the cache latency is measured on")
    bench_output(ec, "print only the JSON line on stdout")
    ec.set_defaults(func=cmd_bench_encoders)

    bs = be_sub.add_parser("select", help="test AUC of each selection method's top-k features retrained, and the "
                                          "serving cost they save")
    bs.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "synthetic"])
    bs.add_argument("--model", default="deepfm", help="a configs/models/<model>.yaml name")
    bs.add_argument("--methods", default="all", help=f"comma-separated, of {', '.join(METHODS)} (default all)")
    bs.add_argument("--ks", default=None, help="comma-separated k (default ml-100k 2..6, synthetic 4,8,12)")
    bs.add_argument("--seeds", default="2026,2027", help="comma-separated seeds")
    bs.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override the model's YAML, e.g. --set train.lr=5e-3 (repeatable; recorded in the results)")
    bench_output(bs, "print only the JSON line on stdout")
    bs.set_defaults(func=cmd_bench_select)

    sh = be_sub.add_parser("sharding", help="samples/s and peak memory per worker, TorchRec-sharded vs not")
    sh.add_argument("--dataset", default="synthetic-large", help="a spec under configs/")
    sh.add_argument("--model", default="deepfm", help="a configs/models/<model>.yaml name")
    sh.add_argument("--epochs", type=_positive, default=1, help="epochs per layout (default 1)")
    bench_output(sh, "print only the JSON line on stdout")
    sh.set_defaults(func=cmd_bench_sharding)

    pl = be_sub.add_parser("pipeline", help="streaming prepare + one DeepFM epoch + scoring at scale; peak RSS")
    pl.add_argument("--rows", type=_positive, default=2_000_000, help="synthetic rows (default 2,000,000)")
    pl.add_argument("--users", type=_positive, default=2_000_000, help="distinct user ids to draw from")
    pl.add_argument("--items", type=_positive, default=1_000_000, help="distinct item ids to draw from")
    pl.add_argument("--score-rows", type=_positive, default=2_000_000, help="rows to score (at most --rows)")
    bench_output(pl)
    pl.set_defaults(func=cmd_bench_pipeline)

    sv = be_sub.add_parser("serve", help="latency / QPS of the running stack against the model-forward floor")
    sv.add_argument("--name", default=os.environ.get("MUXREC_MODEL", "ml-100k-deepfm"),
                    help="registry name to serve (trained on ML-100K first if missing)")
    sv.add_argument("--requests", type=int, default=400, help="rank requests per concurrency level")
    bench_output(sv)
    sv.set_defaults(func=cmd_bench_serve)

    se = sub.add_parser("serve", help="start the Ray Serve app locally and print its URL (Ctrl-C stops it)")
    se.add_argument("--config", type=Path, default=REPO_ROOT / "deploy" / "serve.yaml", help="Serve config YAML")
    se.add_argument("--name", default=None, help="registry name to serve (overrides the config's `model`)")
    se.add_argument("--model-version", default=None, help="version or alias to serve first (overrides `version`)")
    se.add_argument("--host", default=None, help="listen address (overrides http_options.host)")
    se.add_argument("--port", type=int, default=None, help="port (overrides http_options.port)")
    se.add_argument("--registry", type=Path, default=None, help="model registry folder (overrides `registry`)")
    se.set_defaults(func=cmd_serve)

    sc = sub.add_parser("score", help="batch offline scoring of Parquet rows with Ray Data")
    sc.add_argument("--input", type=Path, required=True, help="Parquet file or folder of raw rows")
    sc.add_argument("--output", type=Path, required=True, help="output folder (replaced when the run succeeds)")
    sc.add_argument("--name", default=os.environ.get("MUXREC_MODEL", "ml-100k-deepfm"), help="registry name")
    sc.add_argument("--model-version", default="latest", help="version (v0003) or alias (default latest)")
    sc.add_argument("--batch-size", type=int, default=8192)
    sc.add_argument("--concurrency", type=_pool_size, default=None,
                    help="scoring actors: N, or MIN,MAX to let Ray Data scale the pool (default: one per CPU)")
    paths(sc)
    sc.set_defaults(func=cmd_score)

    ry = sub.add_parser("ray", help="keep a local Ray (127.0.0.1) running so commands skip its start-up")
    ry_sub = ry.add_subparsers(dest="ray_command", required=True, parser_class=_Parser)
    up = ry_sub.add_parser("up", help="start it (no-op when running); RAY_ADDRESS still takes precedence")
    up.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (default: all)")
    up.set_defaults(func=cmd_ray)
    ry_sub.add_parser("down", help="stop the Ray `muxrec ray up` started").set_defaults(func=cmd_ray)
    ry_sub.add_parser("status", help="print its address, or `not running`").set_defaults(func=cmd_ray)

    de = sub.add_parser("demo", help="train DeepFM on ML-100K (or synthetic data), serve it, query it, stop")
    paths(de)
    de.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from muxrec import log
    from muxrec.ray_env import use_kept_ray

    args = build_parser().parse_args(argv)
    log.set_verbose(args.verbose)
    log.quiet_libraries()
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address  # muxrec.ray_env.ensure_ray joins it
    use_kept_ray()  # before any command imports Ray (it sets the kept Ray's auth mode)
    try:
        return args.func(args)
    except MuxrecError as err:
        if log.verbose():
            traceback.print_exc()
        print(f"muxrec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("muxrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
