"""Typed configs. Dicts (from YAML, CLI flags or JSON) stop at `from_dict`; past it, frozen dataclasses.

`from_dict` validates with pydantic, strictly: unknown keys are refused, "3" is not an integer, true
is not a number, and every config validates its own ranges in __post_init__ (ValueError). Each
failure becomes one ConfigError line naming the field, e.g. `deepfm config.hidden_units[1]: expected
an integer, got 'x'`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

from muxrec.errors import ConfigError

T = TypeVar("T")

# Validation runs in pydantic's JSON mode: strict types (no "3" -> 3, no true -> 1) while a YAML list
# still fills a tuple field and an integer a float one; NaN and infinity are refused.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
             "string_type": "a string", "tuple_type": "a list", "list_type": "a list",
             "dataclass_type": "a mapping", "finite_number": "a finite number"}


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    if "__pydantic_config__" not in vars(cls):
        with_config(_STRICT)(cls)  # stdlib dataclasses carry their pydantic config as a class attribute
    return TypeAdapter(cls)


def _where(origin: str, loc: tuple[str | int, ...]) -> str:
    return origin + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def _choices(cls: type, loc: tuple[str | int, ...]) -> list[Any] | None:
    """The allowed values of the Literal field at `loc` (a field, or an item of a tuple field)."""
    hint = typing.get_type_hints(cls).get(str(loc[0])) if loc else None
    for part in loc[1:]:
        args = typing.get_args(hint)
        hint = args[0] if isinstance(part, int) and args else None
    return list(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else None


def _message(cls: type, err: ValidationError, origin: str) -> str:
    """pydantic's errors as one line: `<origin>.<field>[i]: <problem>`, unknown keys grouped."""
    unknown = sorted(str(e["loc"][-1]) for e in err.errors() if e["type"] == "unexpected_keyword_argument")
    parts = []
    if unknown:
        known = sorted(f.name for f in dataclasses.fields(cls) if f.init)
        parts.append(f"{origin}: unknown key(s) {unknown}; known: {known}")
    for e in err.errors():
        kind, where = e["type"], _where(origin, e["loc"])
        if kind == "unexpected_keyword_argument":
            continue
        if kind in _EXPECTED:
            problem = f"expected {_EXPECTED[kind]}, got {e['input']!r}"
        elif kind == "literal_error":
            problem = f"must be one of {_choices(cls, e['loc']) or e['ctx']['expected']}, got {e['input']!r}"
        else:  # a ValueError from __post_init__ names its own field
            problem = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {problem}")
    return "; ".join(parts)


def from_dict(cls: type[T], data: Mapping[str, Any] | None, origin: str | None = None) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and mistyped values."""
    origin = origin or cls.__name__
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: expected a mapping, got {type(data).__name__}")
    try:
        text = json.dumps(dict(data or {}), default=str)  # YAML dates and the like arrive as strings
    except ValueError as err:  # a circular structure: nothing a user can write in YAML
        raise ConfigError(f"{origin}: {err}") from None
    try:
        return _adapter(cls).validate_json(text)
    except ValidationError as err:
        raise ConfigError(_message(cls, err, origin)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON-able values (tuples become lists): what `from_dict` reads back."""
    return _adapter(type(cfg)).dump_python(cfg, mode="json")


SHARDING_TYPES = ("none", "table_wise", "row_wise", "column_wise", "data_parallel")
EMBEDDING_OPTIMIZERS = ("adam", "adagrad", "rowwise_adagrad", "sgd")
TASK_WEIGHTINGS = ("fixed", "uncertainty")
ADAGRAD_LR = 0.01  # the tables' default learning rate under (row-wise) Adagrad
# Tables with more rows than this learn from sparse gradients with lazy Adam (pipelines/sparse.py):
# measured on 2M synthetic rows (1.7M ids), DeepFM trained ~3x faster per row than with a dense
# Adam step over every row; ML-100K's and the synthetic benchmarks' tables stay far below it.
SPARSE_TABLE_ROWS = 100_000


@dataclass(frozen=True)
class TrainConfig:
    """How a model is fitted. Defaults suit the small benchmark datasets on CPU.

    Args:
        epochs: upper bound; early stopping usually ends sooner.
        patience: epochs without a better validation AUC before stopping.
        embedding_l2: L2 penalty on embedding tables (coupled into Adam's gradient).
        weight_decay: L2 penalty on all other parameters.
        num_workers: Ray Train workers (DDP over gloo when > 1). 0: the loop runs in the calling
            process, as Ray Train's local mode does (no worker to start: ~15 s less per run on 2 cores,
            checkpoints and resumption as with a worker); unsharded only.
        sharding: "none" (every worker holds every table, DDP), or how TorchRec's
            DistributedModelParallel splits the embedding tables over the workers: "table_wise",
            "row_wise", "column_wise" (model-parallel) or "data_parallel" (replicated by TorchRec).
        embedding_optimizer: how tables learn: "adam" (with the rest of the model), "adagrad",
            "rowwise_adagrad" (one accumulator per row) or "sgd". "auto": adam, except
            rowwise_adagrad for model-parallel sharding, whose CPU kernels (fbgemm) have no Adam.
        embedding_lr: the tables' learning rate. Default: lr, except 0.01 for (row-wise) Adagrad, whose
            steps shrink as squared gradients add up (ML-100K DeepFM, valid AUC, table-wise on 2 workers:
            0.7779 at 1e-3, 0.7884 at 0.01, 0.7851 at 0.05; unsharded Adam at 1e-3: 0.7847).
        task_weighting: how several tasks' losses add up: "fixed" (the spec's label weights) or
            "uncertainty" (learned per task, Kendall et al. 2018; see pipelines/loop.py Objective).
        sparse_table_rows: under Adam (the default), a table with more rows than this learns from sparse
            gradients with lazy Adam: only the rows a batch looks up move, and only their moments decay
            ("Adam: A Method for Stochastic Optimization", Kingma & Ba, restricted to the rows seen, as
            TensorFlow's LazyAdam and torch's SparseAdam do). A dense Adam step reads and writes every row
            of every table each batch, which dominates training once tables hold millions of rows.
            0 keeps every table dense. Unsharded runs only (sharded tables use fbgemm's fused kernels).
        id_dropout: the share of training rows whose item id is replaced by the out-of-vocabulary id, so
            that the model learns to score an item from its content and attributes alone, as it must a new
            item ("DropoutNet: Addressing Cold Start in Recommender Systems", Volkovs et al. 2017); 0 = off.
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
    sharding: str = "none"
    embedding_optimizer: str = "auto"
    embedding_lr: float | None = None
    task_weighting: str = "fixed"
    id_dropout: float = 0.0
    sparse_table_rows: int = SPARSE_TABLE_ROWS

    def __post_init__(self) -> None:
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        if self.task_weighting not in TASK_WEIGHTINGS:
            raise ValueError(f"task_weighting must be one of {', '.join(TASK_WEIGHTINGS)}, got {self.task_weighting!r}")
        if self.sharding not in SHARDING_TYPES:
            raise ValueError(f"sharding must be one of {', '.join(SHARDING_TYPES)}, got {self.sharding!r}")
        if self.embedding_optimizer not in ("auto", *EMBEDDING_OPTIMIZERS):
            raise ValueError(f"embedding_optimizer must be auto or one of {', '.join(EMBEDDING_OPTIMIZERS)}, "
                             f"got {self.embedding_optimizer!r}")
        if self.model_parallel and self.table_optimizer == "adam":
            raise ValueError(f"sharding {self.sharding} trains tables with fbgemm's fused CPU kernels, which have no "
                             f"Adam: set embedding_optimizer to rowwise_adagrad, adagrad or sgd (or auto)")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0: in this process), got {self.num_workers}")
        if self.num_workers == 0 and self.sharding != "none":
            raise ValueError(f"sharding {self.sharding} splits tables over Ray Train workers: num_workers must be "
                             f">= 1, got 0 (in this process)")
        for name in ("epochs", "batch_size", "eval_batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "embedding_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("embedding_l2", "weight_decay", "sparse_table_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def model_parallel(self) -> bool:
        """Tables split over the workers (each holds part of them), not replicated."""
        return self.sharding in ("table_wise", "row_wise", "column_wise")

    @property
    def table_lr(self) -> float:
        """embedding_lr with its default resolved."""
        if self.embedding_lr is not None:
            return self.embedding_lr
        return ADAGRAD_LR if self.table_optimizer in ("adagrad", "rowwise_adagrad") else self.lr

    @property
    def table_optimizer(self) -> str:
        """embedding_optimizer with "auto" resolved."""
        if self.embedding_optimizer != "auto":
            return self.embedding_optimizer
        return "rowwise_adagrad" if self.model_parallel else "adam"

    @property
    def lazy_tables(self) -> bool:
        """Whether tables over `sparse_table_rows` rows learn with lazy Adam (sparse gradients)."""
        return self.sparse_table_rows > 0 and self.sharding == "none" and self.table_optimizer == "adam"


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
