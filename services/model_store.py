"""The model versions a Ranker or Embedder replica keeps loaded.

Only a replica that loads a model imports the model code (and torch): the gateway never does, and the
`muxrec serve` process that builds the app imports this module without loading anything.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from muxrec.artifacts import ArtifactRegistry

if TYPE_CHECKING:
    from muxrec.models.serialization import LoadedModel


class ModelStore:
    """Hash-verified model versions of one registry name, loaded on first use; the last `keep` stay
    loaded so requests already routed to the previous version finish on it during a reload."""

    def __init__(self, registry: ArtifactRegistry, name: str, keep: int = 2):
        self.registry, self.name, self.keep = registry, name, keep
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: str) -> LoadedModel:
        with self._lock:
            model = self._loaded.get(version)
            if model is None:
                from muxrec.models.serialization import load_model  # torch: see the module docstring

                model = load_model(self.registry.open(self.name, version))
                self._loaded[version] = model
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(version)
            return model

    @property
    def versions(self) -> list[str]:
        return list(self._loaded)
