"""muxrec.models: PyTorch + TorchRec CTR models, created by name from the registry.

Importing this package registers every model; `known_models()` lists them.
"""

from muxrec.models import (  # noqa: F401  (registration side effect)
    armnet, autoint, dcn_v2, deepfm, din, fgcnn, final_mlp, fm, hiformer, lr, multitask, optfs, optinter, wide_deep,
)
from muxrec.models.batch import Batch, EncodedRows
from muxrec.models.registry import build_model, known_models, make_config

__all__ = ["Batch", "EncodedRows", "build_model", "known_models", "make_config"]
