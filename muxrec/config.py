"""Typed configs. Dicts (from YAML, CLI flags or JSON) stop at `from_dict`; past it, frozen dataclasses.

`from_dict` is strict: unknown keys and wrong types raise ConfigError naming the field, and every
config validates its own ranges in __post_init__ (ValueError, turned into ConfigError here).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import yaml

from muxrec.errors import ConfigError

T = TypeVar("T")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, origin: str | None = None) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and mistyped values."""
    origin = origin or cls.__name__
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{origin}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ConfigError(f"{origin}: {err}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-able values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


@dataclass(frozen=True)
class TrainConfig:
    """How a model is fitted. Defaults suit the small benchmark datasets on CPU.

    Args:
        epochs: upper bound; early stopping usually ends sooner.
        patience: epochs without a better validation AUC before stopping.
        embedding_l2: L2 penalty on embedding tables (coupled into Adam's gradient).
        weight_decay: L2 penalty on all other parameters.
        num_workers: Ray Train workers (DDP over gloo when > 1).
    """

    epochs: int = 30
    batch_size: int = 1024
    eval_batch_size: int = 8192
    lr: float = 1e-3
    embedding_l2: float = 0.0
    weight_decay: float = 0.0
    patience: int = 2
    seed: int = 2026
    num_workers: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "patience", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("embedding_l2", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def load_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


@dataclass(frozen=True)
class ModelFile:
    """configs/models/<name>.yaml: an architecture, its hyper-parameters and how to train it.

    The file's stem is the name benchmarks and the CLI use; `architecture` (default: the same name)
    is the registry entry, so variants of one model can live side by side (hiformer.yaml and
    hiformer-fast.yaml, both `architecture: hiformer`).
    """

    name: str
    architecture: str
    model: dict[str, Any]
    train: TrainConfig


def load_model_file(path: str | Path) -> ModelFile:
    """Read and check a per-model YAML: top-level `architecture`, `model` and `train` only."""
    path = Path(path)
    data = load_yaml_mapping(path, "model config")
    unknown = sorted(set(data) - {"architecture", "model", "train"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; expected `architecture`, `model`, `train`")
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"{path}: `model` must be a mapping")
    architecture = data.get("architecture", path.stem)
    if not isinstance(architecture, str):
        raise ConfigError(f"{path}: `architecture` must be a model name")
    return ModelFile(path.stem, architecture, model, from_dict(TrainConfig, data.get("train"), origin=f"{path}: train"))


def with_overrides(mf: ModelFile, assignments: typing.Sequence[str]) -> ModelFile:
    """`mf` with `model.<field>=<value>` / `train.<field>=<value>` assignments applied (values read as YAML).

        >>> with_overrides(mf, ["train.lr=3e-3", "model.hidden_units=[64, 32]"])
    """
    model, train = dict(mf.model), to_dict(mf.train)
    for assignment in assignments:
        key, eq, raw = assignment.partition("=")
        section, _, name = key.partition(".")
        target = {"model": model, "train": train}.get(section)
        if target is None or not name or not eq:
            raise ConfigError(f"--set {assignment!r}: use model.<field>=<value> or train.<field>=<value>")
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string; a number is meant
            try:
                value = float(value)
            except ValueError:
                pass
        target[name] = value
    return dataclasses.replace(mf, model=model, train=from_dict(TrainConfig, train, origin=f"{mf.name}: train"))


def model_file(config_dir: str | Path, name: str) -> ModelFile:
    """configs/models/<name>.yaml when it exists, else architecture `name` with default settings."""
    path = Path(config_dir) / "models" / f"{name}.yaml"
    return load_model_file(path) if path.is_file() else ModelFile(name, name, {}, TrainConfig())
