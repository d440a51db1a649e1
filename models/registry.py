"""Model registry: a name -> (config class, model class), filled by @register in each model file.

    >>> cfg = make_config("deepfm", {"embedding_dim": 16})
    >>> model = build_model("deepfm", cfg, inputs)     # inputs: ModelInputs from the spec
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from torch import nn

from muxrec.config import from_dict
from muxrec.errors import ConfigError
from muxrec.models.layers.embedding import FeatureEmbedding
from muxrec.spec import ModelInputs


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config_cls: type
    model_cls: type[nn.Module]


_MODELS: dict[str, ModelEntry] = {}


def register(name: str, config_cls: type) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make `model_cls` buildable by `name` with a `config_cls` config.

    Every config class has an `embedding_dim`: the registry builds the shared FeatureEmbedding with
    it (tables with their own dim in the spec are projected to it) and hands it to the model, so
    ranking and embedding services read the same tables.
    """

    def decorate(model_cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        if "embedding_dim" not in getattr(config_cls, "__dataclass_fields__", {}):
            raise TypeError(f"{config_cls.__name__} must be a dataclass with an embedding_dim field")
        _MODELS[name] = ModelEntry(name, config_cls, model_cls)
        return model_cls

    return decorate


def known_models() -> list[str]:
    return sorted(_MODELS)


def entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(known_models())}")
    return _MODELS[name]


def make_config(name: str, data: Mapping[str, Any] | None = None) -> Any:
    """A model's typed config from a mapping (YAML / JSON), strictly validated."""
    return from_dict(entry(name).config_cls, data, origin=f"{name} config")


def build_model(name: str, cfg: Any, inputs: ModelInputs, embedding: FeatureEmbedding | None = None,
                num_outputs: int | None = None) -> nn.Module:
    """Build model `name` for these inputs from its typed config (validated once, by `make_config`).

    Args:
        embedding: a FeatureEmbedding to share (a multi-task model hands its own to the zoo model it uses
            as a shared bottom); default: a new one of `cfg.embedding_dim`.
        num_outputs: how many outputs the model's head has; default one logit per task of the spec. A
            multi-task model builds its bottom with `num_outputs=W` and reads those W values as features.
    """
    e = entry(name)
    if not isinstance(cfg, e.config_cls):
        raise TypeError(f"build_model({name!r}) takes a {e.config_cls.__name__}, got {type(cfg).__name__}: "
                        f"read a mapping with make_config({name!r}, data) at the loading boundary")
    if num_outputs is not None:
        # A model's head is one output per task of its inputs: W outputs are W (unnamed) tasks.
        inputs = replace(inputs, tasks=tuple(f"_output{i}" for i in range(num_outputs)), grades={}, parents={})
    embedding = FeatureEmbedding(inputs, cfg.embedding_dim) if embedding is None else embedding
    return e.model_cls(cfg, inputs, embedding)
