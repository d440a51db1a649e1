"""Dataset lookup and loading. Every loader returns one Arrow table of raw source columns."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
from pyarrow import csv

from muxrec.data.download import download_zip
from muxrec.data.movielens import ML100K_CHECKSUM, ML100K_FILES, ML100K_URL, load_ml100k
from muxrec.data.synthetic import SyntheticConfig, generate
from muxrec.errors import DataError, DataNotFoundError
from muxrec.spec import SourceSpec

DATA_DIR_ENV = "MUXREC_DATA_DIR"
KNOWN_DOWNLOADS = {
    "ml-100k": (ML100K_URL, ML100K_CHECKSUM, (*ML100K_FILES, "u.occupation")),
}


def cache_dir() -> Path:
    """The per-user data cache: $XDG_CACHE_HOME/muxrec/data, else ~/.cache/muxrec/data."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "muxrec" / "data"


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]))
    dirs.append(cache_dir())
    return dirs


def find_dataset(name: str, required: tuple[str, ...] = ML100K_FILES) -> Path:
    """The first search dir holding `name/` with every required file, else a message naming both options."""
    for d in search_dirs():
        candidate = d / name
        if all((candidate / f).is_file() for f in required):
            return candidate
    looked = ", ".join(str(d / name) for d in search_dirs())
    raise DataNotFoundError(
        f"dataset {name!r} not found (looked in: {looked}). Either set {DATA_DIR_ENV} to a folder "
        f"containing {name}/, or run `muxrec data download {name}` to fetch it into {cache_dir()}."
    )


def download(name: str, dest_root: Path | None = None, url: str | None = None, checksum: str | None = None) -> Path:
    if name not in KNOWN_DOWNLOADS:
        raise DataError(f"unknown dataset {name!r}; downloadable: {sorted(KNOWN_DOWNLOADS)}")
    default_url, default_checksum, members = KNOWN_DOWNLOADS[name]
    dest = Path(dest_root or cache_dir()) / name
    return download_zip(url or default_url, checksum or default_checksum, dest, members)


def _read_files(path: str, fmt: str) -> pa.Table:
    p = Path(path)
    if not p.exists():
        raise DataNotFoundError(f"source path {p} does not exist")
    if fmt == "csv" and p.is_file():
        return csv.read_csv(p)
    return pads.dataset(p, format=fmt).to_table()


def synthetic_config(source: SourceSpec) -> SyntheticConfig:
    """The generator's config from a spec's `source.options`, e.g. {rows: 50000, seed: 7, style_effect: 1.0,
    image_dir: items/}: a relative image_dir is resolved against the current folder (Ray workers run
    elsewhere), and YAML lists become the config's tuples."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in source.options.items()}
    if isinstance(options.get("image_dir"), str):
        options["image_dir"] = os.path.abspath(os.path.expanduser(options["image_dir"]))
    try:
        return SyntheticConfig(**options)
    except (TypeError, ValueError) as err:
        raise DataError(f"synthetic source options: {err}") from None


def load_source(source: SourceSpec) -> pa.Table:
    """Raw rows for a spec's `source` block."""
    if source.loader == "movielens-100k":
        root = Path(source.path) if source.path else find_dataset("ml-100k")
        return load_ml100k(root)
    if source.loader == "synthetic":
        return generate(synthetic_config(source))[0]
    return _read_files(source.path, source.loader)
