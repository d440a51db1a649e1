"""Model versions <-> files: safetensors weights plus JSON / YAML, never pickle.

`model_files` is what the training pipeline publishes to the ArtifactRegistry; `load_model` rebuilds
the model from a hash-verified ModelVersion. Ranking, embedding and batch-scoring all load through
here, so they run the same weights with the same vocabulary.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from muxrec.artifacts import ModelVersion
from muxrec.config import to_dict
from muxrec.encoding import Vocabulary, derive, encode, encode_arrays
from muxrec.errors import ArtifactError
from muxrec.models.batch import EncodedRows
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


def model_files(model: nn.Module, name: str, cfg: Any, spec: FeatureSpec, vocab: Vocabulary) -> dict[str, bytes | str]:
    """A version's files. Tables are stored as served (`serving_copy`; model.json lists those changed);
    pass the model through `serving_copy` first to evaluate what will be served."""
    served, quantized = serving_copy(model)
    return {
        WEIGHTS: state_bytes(served),
        SPEC: spec.to_yaml(),
        VOCABULARY: vocab.to_json(),
        MODEL: json.dumps({"name": name, "config": to_dict(cfg), **({"served_as": quantized} if quantized else {})},
                          indent=1),
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

    def encode(self, raw: pa.Table, labels: bool = False) -> pa.Table:
        """Raw source columns -> encoded columns, with this model's vocabulary."""
        return encode(derive(raw, self.spec, labels=labels, split=False), self.spec, self.vocab)

    def predict(self, rows: EncodedRows, batch_size: int = 8192) -> np.ndarray:
        return predict_proba(self.model, rows, batch_size)

    def predict_raw(self, raw: pa.Table, batch_size: int = 8192) -> np.ndarray:
        """(N, T) probabilities for raw rows."""
        arrays = encode_arrays(derive(raw, self.spec, labels=False, split=False), self.spec, self.vocab)
        return self.predict(EncodedRows(arrays, self.inputs, with_labels=False), batch_size)


@torch.inference_mode()
def predict_proba(model: nn.Module, rows: EncodedRows, batch_size: int = 8192) -> np.ndarray:
    """(N, T) probabilities, in row order."""
    if model.training:  # eval() walks every module: not on each serving call
        model.eval()
    out = [torch.sigmoid(model(batch)) for batch in rows.batches(batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)


def load_model(version: ModelVersion) -> LoadedModel:
    """Rebuild a model from a verified version; nothing is unpickled."""
    spec = spec_from_yaml(version.read_text(SPEC), origin=f"{version.ref}/{SPEC}")
    vocab = Vocabulary.from_json(version.read_text(VOCABULARY))
    meta = version.read_json(MODEL)
    cfg = make_config(meta["name"], meta["config"])
    inputs = ModelInputs.from_spec(spec, vocab.num_embeddings())
    model = build_model(meta["name"], cfg, inputs)
    if meta.get("served_as"):  # shaped as stored: quantized or cut tables
        for m in model.modules():
            if isinstance(m, FeatureEmbedding):
                m.for_serving(empty=True)
    load_state(model, version.file(WEIGHTS).read_bytes())
    model.eval()
    return LoadedModel(model, meta["name"], cfg, spec, vocab, inputs, version)
