"""`muxrec demo` / `make demo`: the main job end to end on this machine.

MovieLens-100K when it is on disk, else downloaded, else (offline) the synthetic dataset, with a
one-line notice saying which.
"""

from __future__ import annotations

from pathlib import Path

from muxrec.artifacts import ArtifactRegistry
from muxrec.config import load_model_file
from muxrec.data import download, find_dataset
from muxrec.errors import DataError, DataNotFoundError
from muxrec.pipelines.evaluate import evaluate
from muxrec.pipelines.prepare import prepare_cached
from muxrec.pipelines.train import TrainJob, train
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


def run_demo(config_dir: Path, runs: Path, registry_root: Path) -> None:
    spec = pick_dataset(config_dir)
    prepared = prepare_cached(spec, runs / "prepared")
    print(f"[demo] prepared {prepared.root}: " + ", ".join(
        f"{s} {v['rows']:,} rows" for s, v in prepared.stats["splits"].items()))
    model_cfg, train_cfg = load_model_file(config_dir / "models" / f"{MODEL}.yaml")
    registry = ArtifactRegistry(registry_root)
    result = train(TrainJob(str(prepared.root), MODEL, model_cfg, train_cfg), registry,
                   f"demo-{spec.name}-{MODEL}", runs / "ray", fresh=True)
    report = evaluate(result.version, "test")
    click = report["tasks"][spec.label_names[0]]
    print(f"[demo] {result.version.ref}: test AUC {click['auc']:.4f}, logloss {click['logloss']:.4f}, "
          f"predicted rate {click['calibration']['predicted_rate']:.3f} vs observed "
          f"{click['calibration']['observed_rate']:.3f} ({result.metrics['epochs']} epochs, "
          f"{result.metrics['train_seconds']:.0f}s of training)")
