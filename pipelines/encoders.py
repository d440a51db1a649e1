"""Train a text encoder for a catalog and publish it as a versioned registry artifact.

`fit_text_encoder` is for catalogs with text and no images (ML-100K titles and genres): the frozen MiniLM
encodes every distinct text of a source column, and the projection is fitted by PCA on those vectors, so the
first k outputs are the k directions of largest variance for every k. That is the nesting Matryoshka
training asks for, found in closed form: each prefix is the best k-dimensional linear summary of the
catalog's sentence vectors (for reconstruction). Catalogs with images train both towers with the ALIGN job
(pipelines/align.py), which optimises `matryoshka_loss` directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from muxrec.artifacts import ArtifactRegistry, ModelVersion
from muxrec.errors import ConfigError
from muxrec.log import say
from muxrec.models.encoders.content import publish_encoder
from muxrec.models.encoders.text import TextTower, TextTowerConfig, build_text_tower
from muxrec.pipelines.io import collect
from muxrec.pipelines.sources import source_dataset
from muxrec.spec import SourceSpec


def catalog_texts(source: SourceSpec, column: str) -> list[str]:
    """The distinct non-empty texts of a source column, sorted (so a fit does not depend on row order)."""
    ds = source_dataset(source)
    if column not in ds.schema().names:
        raise ConfigError(f"source has no column {column!r}; columns: {ds.schema().names}")
    values = collect(ds.select_columns([column]), pa.schema([(column, pa.string())]))[column].combine_chunks()
    values = pc.unique(pc.drop_null(values))
    return sorted(v for v in values.to_pylist() if v)


def pca_projection(vectors: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weight (width, D), bias (width,) mapping x to its first `width` principal coordinates, and the share
    of variance each of them explains (width,). vectors: (N, D), N > width."""
    if len(vectors) <= width:
        raise ConfigError(f"a {width}-wide projection needs more than {width} distinct texts, got {len(vectors)}")
    mean = vectors.mean(axis=0)  # (D,)
    _, s, vt = np.linalg.svd(vectors - mean, full_matrices=False)  # vt: (D', D) directions by variance
    weight = vt[:width]  # (width, D)
    # Scale so that each coordinate has unit variance over the catalog (every prefix is well conditioned).
    std = s[:width] / np.sqrt(len(vectors) - 1)  # (width,)
    weight = weight / std[:, None]
    return weight.astype(np.float32), (-weight @ mean).astype(np.float32), (s[:width] ** 2 / (s ** 2).sum())


def fit_text_projection(tower: TextTower, texts: list[str]) -> np.ndarray:
    """Set the tower's projection to the PCA of its frozen MiniLM vectors of `texts`; returns the share of
    variance each output explains (max(dims),)."""
    with torch.inference_mode():
        base = torch.cat([tower.encoder(*tower.tokenize(texts[i:i + 256])) for i in range(0, len(texts), 256)])
    weight, bias, explained = pca_projection(base.numpy().astype(np.float64), tower.cfg.width)
    with torch.no_grad():
        tower.projection.weight.copy_(torch.from_numpy(weight))
        tower.projection.bias.copy_(torch.from_numpy(bias))
    return explained


def fit_text_encoder(source: SourceSpec, column: str, registry: ArtifactRegistry, name: str,
                     cfg: TextTowerConfig = TextTowerConfig()) -> ModelVersion:
    """Fit the text tower's projection on a catalog's texts by PCA and publish it as `name`'s next version."""
    texts = catalog_texts(source, column)
    say(f"encoding {len(texts)} distinct texts of {column!r} with MiniLM")
    tower = build_text_tower(cfg)
    explained = fit_text_projection(tower, texts)
    version = publish_encoder(registry, name, tower, "text", {
        "fit": "pca", "column": column, "texts": len(texts),
        "explained_variance": {str(d): round(float(explained[:d].sum()), 4) for d in cfg.dims}})
    say(f"published text encoder {name}@{version.version}: PCA of {len(texts)} texts, "
        f"{float(explained.sum()):.0%} of the variance in {cfg.width} dims")
    return version
