"""Which model version is live, and the loaded versions a replica keeps.

The registry alias `serving` (ServeSettings.serving_alias) names the live version. The gateway sets
it at start-up and on /v1/admin/reload, and passes the version it resolved with every call to the
Ranker / Embedder / FeatureSelector. Each call is therefore answered by exactly the version the
gateway chose, and replicas of any count agree without talking to each other.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from muxrec.artifacts import ALIASES, ArtifactRegistry
from muxrec.models.serialization import LoadedModel, load_model


class LiveVersion:
    """The version the serving alias names, re-read only when aliases.json changes (one stat)."""

    def __init__(self, registry: ArtifactRegistry, name: str, alias: str):
        self.registry, self.name, self.alias = registry, name, alias
        self._path = Path(registry.root) / name / ALIASES
        self._stamp: tuple[int, int] | None = None
        self._version: str | None = None

    def set(self, version: str) -> None:
        self.registry.set_alias(self.name, self.alias, version)
        self._stamp, self._version = None, None

    def get(self) -> str:
        st = os.stat(self._path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._version is None:
            self._version = self.registry.resolve(self.name, self.alias)
            self._stamp = stamp
        return self._version

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.get()}"


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
                model = load_model(self.registry.open(self.name, version))
                self._loaded[version] = model
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(version)
            return model

    @property
    def versions(self) -> list[str]:
        return list(self._loaded)
