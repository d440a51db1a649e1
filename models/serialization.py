"""Model versions <-> files: safetensors weights plus JSON / YAML, never pickle.

`model_files` is what the training pipeline publishes to the ArtifactRegistry; `load_model` rebuilds
the model from a hash-verified ModelVersion. Ranking, embedding and batch-scoring all load through
here, so they run the same weights with the same vocabulary.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from muxrec.artifacts import ModelVersion
from muxrec.config import to_dict
from muxrec.encoding import Vocabulary, attach_content, derive, encode, encode_arrays
from muxrec.errors import ArtifactError
from muxrec.models.batch import Batch, EncodedRows, array_batches
from muxrec.models.encoders.content import ContentVectors, check_digests, registry_of
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.models.registry import build_model, make_config
from muxrec.spec import FeatureSpec, ModelInputs, spec_from_yaml

WEIGHTS = "weights.safetensors"
SPEC = "spec.yaml"
VOCABULARY = "vocabulary.json"
MODEL = "model.json"


def state_bytes(model: nn.Module) -> bytes:
    return save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()})


def load_state(model: nn.Module, data: bytes) -> None:
    state = load_safetensors(data)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def serving_copy(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """`model` with its tables stored as a published version holds them (a copy; `model` itself is kept
    for training): row-wise quantized where the spec says `quantize`, Matryoshka tables cut to their
    `serve_dim`; and table -> how ("int8", "int4", "prefix:8"). `model` and {} when no table changes."""
    if not any(t.changes_for_serving for m in model.modules() if isinstance(m, FeatureEmbedding)
               for t in m.inputs.tables):
        return model, {}
    served = copy.deepcopy(model)
    done: dict[str, str] = {}
    for m in served.modules():
        if isinstance(m, FeatureEmbedding):
            done.update(m.for_serving())
    return served.eval(), done


def model_files(model: nn.Module, name: str, cfg: Any, spec: FeatureSpec, vocab: Vocabulary,
                encoders: dict[str, str] | None = None) -> dict[str, bytes | str]:
    """A version's files. Tables are stored as served (`serving_copy`; model.json lists those changed);
    pass the model through `serving_copy` first to evaluate what will be served. `encoders`: the pinned
    content encoders' weight hashes (ref -> sha256) the model was trained with, checked when it loads."""
    if spec.content and set(encoders or {}) != {f.encoder for f in spec.content}:
        raise ArtifactError(f"the spec's content encoders {sorted({f.encoder for f in spec.content})} need their "
                            f"weight hashes, got {sorted(encoders or {})}")
    served, quantized = serving_copy(model)
    meta = {"name": name, "config": to_dict(cfg), **({"served_as": quantized} if quantized else {}),
            **({"encoders": encoders} if spec.content else {})}
    return {
        WEIGHTS: state_bytes(served),
        SPEC: spec.to_yaml(),
        VOCABULARY: vocab.to_json(),
        MODEL: json.dumps(meta, indent=1),
    }


@dataclass
class LoadedModel:
    """A model ready for inference, with everything needed to encode raw rows for it."""

    model: nn.Module
    name: str
    config: Any
    spec: FeatureSpec
    vocab: Vocabulary
    inputs: ModelInputs
    version: ModelVersion
    content: ContentVectors | None = None  # the pinned encoders of content features (hash-checked)

    def derive(self, raw: pa.Table, labels: bool = False, vectors: dict[str, np.ndarray] | None = None) -> pa.Table:
        """Raw source columns -> derived columns, content features as vectors: `vectors` (feature ->
        (N, dim), computed elsewhere, e.g. the gateway's cache) or from the pinned encoders."""
        derived = derive(raw, self.spec, labels=labels, split=False)
        if self.content is None:
            return derived
        if vectors is None:
            vectors = self.content.vectors(derived)
        return attach_content(derived, self.spec, vectors)

    def encode(self, raw: pa.Table, labels: bool = False) -> pa.Table:
        """Raw source columns -> encoded columns, with this model's vocabulary."""
        return encode(self.derive(raw, labels), self.spec, self.vocab)

    def predict(self, rows: EncodedRows, batch_size: int = 8192) -> np.ndarray:
        return predict_proba(self.model, rows, batch_size)

    def embeddings(self, feature: str, rows: np.ndarray) -> np.ndarray:
        """Feature `feature`'s vectors (N, d) at table rows `rows`: (N,), or (N, k) for k slots, summed."""
        with torch.no_grad():
            return self.model.embedding.lookup(feature, torch.from_numpy(rows)).numpy()

    def predict_raw(self, raw: pa.Table, batch_size: int = 8192, vectors: dict[str, np.ndarray] | None = None
                    ) -> np.ndarray:
        """(N, T) probabilities for raw rows (content vectors given, or computed by the pinned encoders)."""
        arrays = encode_arrays(self.derive(raw, vectors=vectors), self.spec, self.vocab)
        return _probabilities(self.model, array_batches(arrays, self.inputs, batch_size))


def predict_proba(model: nn.Module, rows: EncodedRows, batch_size: int = 8192) -> np.ndarray:
    """(N, T) probabilities, in row order."""
    return _probabilities(model, rows.batches(batch_size))


@torch.inference_mode()
def _probabilities(model: nn.Module, batches: Iterable[Batch]) -> np.ndarray:
    if model.training:  # eval() walks every module: not on each serving call
        model.eval()
    out = [torch.sigmoid(model(batch)) for batch in batches]
    return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)


def shape_as_served(model: nn.Module) -> None:
    """Give every table the shape its published weights have (quantized, cut, pruned), zero-filled, so that
    weights stored as served (`model_files`) load into it."""
    for m in model.modules():
        if isinstance(m, FeatureEmbedding):
            m.for_serving(empty=True)


def load_model(version: ModelVersion) -> LoadedModel:
    """Rebuild a model from a verified version; nothing is unpickled."""
    spec = spec_from_yaml(version.read_text(SPEC), origin=f"{version.ref}/{SPEC}")
    vocab = Vocabulary.from_json(version.read_text(VOCABULARY))
    meta = version.read_json(MODEL)
    cfg = make_config(meta["name"], meta["config"])
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    model = build_model(meta["name"], cfg, inputs)
    if meta.get("served_as"):  # shaped as stored: quantized or cut tables
        shape_as_served(model)
    load_state(model, version.file(WEIGHTS).read_bytes())
    model.eval()
    content = None
    if spec.content:
        registry = registry_of(version)
        pinned = {f.encoder for f in spec.content}
        if set(meta.get("encoders", {})) != pinned:
            raise ArtifactError(f"{version.ref}: model.json records encoders {sorted(meta.get('encoders', {}))}, "
                                f"its spec pins {sorted(pinned)}")
        content = ContentVectors(spec, registry)  # opens and hash-checks each pinned encoder once
        check_digests(meta["encoders"], content.digests, version.ref)
    return LoadedModel(model, meta["name"], cfg, spec, vocab, inputs, version, content)
