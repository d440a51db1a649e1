"""muxrec.models: PyTorch + TorchRec CTR models, created by name from the registry.

Importing this package registers every model; `known_models()` lists them.
"""

from muxrec.models import deepfm, din, lr  # noqa: F401  (registration side effect)
from muxrec.models.batch import Batch, EncodedRows
from muxrec.models.registry import build_model, known_models, make_config

__all__ = ["Batch", "EncodedRows", "build_model", "known_models", "make_config"]
