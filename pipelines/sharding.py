"""Sharded training on TorchRec: `DistributedModelParallel` over the Ray Train workers' gloo group.

`shard(model, cfg, world)` plans every `EmbeddingBagCollection` of the model with TorchRec's planner,
constrained to the chosen sharding type, and wraps the model in DMP: model-parallel tables
(table-wise, row-wise, column-wise) are split over the workers and train with fbgemm's fused CPU
kernels (the optimizer runs inside the backward pass); the rest of the model (MLPs, numeric vectors,
compressed tables, which live outside the collection) is replicated under DDP.

What CPU and gloo allow, found by running it (TorchRec 1.8, fbgemm-gpu-cpu 1.8):
- Row-wise runs on CPU over gloo, but TorchRec's sharder only offers it for cuda/mtia devices;
  `_Sharder` offers it here too.
- fbgemm's CPU kernels need a table width divisible by 4 ("local_cols ... not divisible by 4"), so a
  narrower table (DeepFM's first-order weights are 1 wide) is data-parallel whatever the choice.
- They have no Adam ("Optimizer adam is not supported in CPU mode"): model-parallel tables learn with
  Adagrad, row-wise Adagrad or SGD (`TrainConfig.table_optimizer`), and an unsharded run with the same
  setting takes the same step (TorchRec's dense optimizers, pipelines/loop.py).
- A model-parallel table's gradient is averaged over the workers as DDP averages the replicated
  parameters' (TorchRec divides it in its all-to-all backward), so no optimizer setting changes.

Checkpoints are written unsharded (`full_state` gathers every table on rank 0), so a sharded run is
published, served and resumed like any other (resuming with another sharding or worker count works).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec import EmbeddingBagCollection
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv, ShardingPlan, ShardingType
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from muxrec.config import TrainConfig
from muxrec.errors import ConfigError
from muxrec.pipelines.loop import (TABLE_OPTIMIZERS, Optimizers, empty_parameters, make_optimizer,
                                   table_optimizer_kwargs)
from muxrec.spec import ModelInputs

FUSED_MIN_WIDTH_MULTIPLE = 4  # fbgemm's kernels need table widths divisible by this


class _Sharder(EmbeddingBagCollectionSharder):
    """TorchRec's sharder offering `sharding` (row-wise included on CPU) and data-parallel."""

    def __init__(self, sharding: str):
        super().__init__()
        self.sharding = sharding

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return [self.sharding, ShardingType.DATA_PARALLEL.value]


def check_shardable(inputs: ModelInputs) -> None:
    """Refuse, in one line, a spec whose tables a sharded collection cannot serve.

    A sequence feature reads its table position by position (models/layers/embedding.py), which a
    sharded `EmbeddingBagCollection` does not offer (it returns pooled bags only)."""
    for name in inputs.sequences:
        table = inputs.table_of[name]
        if not any(t.name == table and t.standalone for t in inputs.tables):
            raise ConfigError(f"feature {name!r} (a sequence) reads table {table!r} position by position, which a "
                              f"sharded TorchRec table does not offer: train it with --sharding none, or drop the feature")


def _collections(model: nn.Module) -> dict[str, EmbeddingBagCollection]:
    return {path: m for path, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)}


def _table_kind(cfg: TrainConfig, dim: int) -> tuple[str, str]:
    """(sharding type, compute kernel) of one table."""
    if cfg.model_parallel and dim % FUSED_MIN_WIDTH_MULTIPLE == 0:
        return cfg.sharding, EmbeddingComputeKernel.FUSED.value
    return ShardingType.DATA_PARALLEL.value, EmbeddingComputeKernel.DENSE.value


@dataclass
class ShardedModel:
    """A model wrapped in DMP, and which of its table weights train inside the backward pass."""

    dmp: DistributedModelParallel
    tables: dict[str, str]  # parameter name -> its sharding type, for every table weight
    fused: set[str]  # parameter names whose optimizer is fused into TorchRec's kernels

    @property
    def module(self) -> nn.Module:
        """The model itself (sharded in place), for evaluation and regularization."""
        return self.dmp.module

    def optimizer(self, cfg: TrainConfig) -> torch.optim.Optimizer | Optimizers:
        """The optimizer of everything not fused: Adam for the replicated model, and the tables'
        optimizer for the data-parallel tables (TorchRec's dense twin of the fused kernel)."""
        named = dict(self.dmp.named_parameters())
        replicated_tables = [p for name, p in named.items() if name in self.tables and name not in self.fused]
        exclude = {id(p) for name, p in named.items() if name in self.fused}
        return make_optimizer(self.dmp, cfg, tables=replicated_tables, exclude=exclude)

    def full_state(self) -> dict[str, Tensor]:
        """The unsharded state dict, keyed as the plain model's (collective: every rank calls it; only
        rank 0 gets the model-parallel tables, the other ranks get the replicated part only)."""
        return _gather(self.dmp.state_dict())

    def load_full_state(self, state: dict[str, Tensor]) -> None:
        """Copy an unsharded state dict (every key of the plain model) into this rank's shards."""
        target = self.dmp.state_dict()
        missing = sorted(set(target) - set(state))
        if missing:
            raise ValueError(f"state misses {missing[:5]}")
        _scatter(target, state)
        self.dmp.load_state_dict(target)

    def fused_optimizer_state(self) -> dict[str, Tensor]:
        """The fused tables' optimizer state (e.g. Adagrad's accumulators), unsharded on rank 0 (collective).

        Unlike the weights, each rank's optimizer state names only the tables it holds a shard of."""
        return _gather_pieces(_flat_state(self.dmp.fused_optimizer.state_dict()))

    def load_fused_optimizer_state(self, state: dict[str, Tensor]) -> bool:
        """Restore `fused_optimizer_state()`'s output; False (and nothing changed) when it was written
        under another layout (other tables or sharding)."""
        current = self.dmp.fused_optimizer.state_dict()
        flat = _flat_state(current)  # this rank's tables only
        if any(k not in state or tuple(flat[k].size()) != tuple(state[k].shape) for k in flat):
            return False
        _scatter(flat, state)
        self.dmp.fused_optimizer.load_state_dict(current)
        return True


def shard(model: nn.Module, cfg: TrainConfig, world: int, group: dist.ProcessGroup | None = None) -> ShardedModel:
    """Shard `model`'s embedding collections as `cfg.sharding` says, over the default process group.

    The model's current weights (its initialisation, or a checkpoint loaded into it) are kept: DMP
    builds its shards initialised afresh, so they are copied in afterwards.
    """
    group = group or dist.GroupMember.WORLD
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sharder = _Sharder(cfg.sharding if cfg.model_parallel else ShardingType.DATA_PARALLEL.value)
    topology = Topology(world_size=world, compute_device="cpu")
    optimizer_class = TABLE_OPTIMIZERS.get(cfg.table_optimizer)
    kwargs = table_optimizer_kwargs(cfg)
    plans, tables, fused = {}, {}, set()
    for path, collection in _collections(model).items():
        constraints = {}
        for c in collection.embedding_bag_configs():
            kind, kernel = _table_kind(cfg, c.embedding_dim)
            constraints[c.name] = ParameterConstraints(sharding_types=[kind], compute_kernels=[kernel])
            name = f"{path}.embedding_bags.{c.name}.weight"
            tables[name] = kind
            if kernel == EmbeddingComputeKernel.FUSED.value:
                fused.add(name)
                apply_optimizer_in_backward(optimizer_class, [collection.embedding_bags[c.name].weight], kwargs)
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
        with _quiet_torchrec():
            plans[path] = planner.collective_plan(collection, [sharder], group).plan[""]
    with _quiet_torchrec():
        dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(group), plan=ShardingPlan(plans),
                                       sharders=[sharder], device=torch.device("cpu"),
                                       data_parallel_wrapper=DefaultDataParallelWrapper(params_to_ignore=empty_parameters(model)))
    sharded = ShardedModel(dmp, tables, fused)
    sharded.load_full_state(initial)
    return sharded


def plan_summary(sharded: ShardedModel) -> dict[str, int]:
    """Sharding type -> how many table weights have it (what a progress line shows)."""
    counts: dict[str, int] = {}
    for kind in sharded.tables.values():
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _flat_state(optimizer_state: dict) -> dict[str, Tensor]:
    """A fused optimizer's {"state": {param: {name: tensor}}} as {"param/name": tensor}."""
    return {f"{param}/{name}": value for param, values in optimizer_state["state"].items()
            for name, value in values.items()}


def _gather(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each ShardedTensor gathered whole on rank 0 (dropped elsewhere); plain tensors copied."""
    rank = dist.get_rank()
    out = {}
    for key, value in state.items():
        if isinstance(value, ShardedTensor):
            whole = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
            value.gather(dst=0, out=whole)
            if rank == 0:
                out[key] = whole
        else:
            out[key] = value.detach().clone()
    return out


def _gather_pieces(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Like `_gather`, for state whose keys differ between ranks: every rank sends its local shards
    (offsets and values) to rank 0, which assembles each tensor whole; the other ranks get {}."""
    pieces = []
    for key, value in state.items():
        if isinstance(value, ShardedTensor):
            pieces += [(key, tuple(value.size()), tuple(s.metadata.shard_offsets), s.tensor.detach().clone())
                       for s in value.local_shards()]
        else:
            pieces.append((key, tuple(value.shape), (0,) * value.dim(), value.detach().clone()))
    rank = dist.get_rank()
    everyone = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(pieces, everyone, dst=0)
    if rank != 0:
        return {}
    out: dict[str, Tensor] = {}
    for key, size, offsets, values in (piece for rank_pieces in everyone for piece in rank_pieces):
        whole = out.setdefault(key, torch.zeros(size, dtype=values.dtype))
        whole[tuple(slice(o, o + n) for o, n in zip(offsets, values.shape))] = values
    return out


@torch.no_grad()
def _scatter(target: dict[str, Tensor], source: dict[str, Tensor]) -> None:
    """Copy each whole tensor of `source` into `target`'s local shards (or the tensor itself)."""
    for key, value in target.items():
        whole = source[key]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                index = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
                shard.tensor.copy_(whole[index])
        else:
            value.copy_(whole)


class _quiet_torchrec:
    """TorchRec's planner prints its plan table and warnings; keep them for --verbose."""

    def __enter__(self) -> None:
        self._level = logging.getLogger("torchrec").level
        logging.getLogger("torchrec").setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._warnings.__exit__(*exc)
        logging.getLogger("torchrec").setLevel(self._level)
