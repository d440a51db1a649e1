"""Which model version is live.

The registry alias `serving` (ServeSettings.serving_alias) names the live version; only
/v1/admin/reload moves it. Nothing writes it at start-up: a replica that starts, restarts, scales up
or is redeployed reads the alias, and `ServeSettings.version` is used only while the alias does not
exist yet (a fresh registry, or one mounted read-only). The gateway passes the version it resolved
with every call to the Ranker / Embedder / FeatureSelector, so each call is answered by exactly the
version the gateway chose, and replicas of any count agree without talking to each other.

The gateway asks for the live version on every request; `LiveVersion` answers from memory and looks
at the alias file (one stat, a re-read only when it changed) at most every
`ServeSettings.alias_check_s` (0.5 s by default). A reload moves the alias through this replica's
`LiveVersion.set`, which takes effect here at once; other gateway replicas follow within that interval.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from muxrec.artifacts import ALIASES, ArtifactRegistry
from muxrec.services.settings import ServeSettings


def serving_version(registry: ArtifactRegistry, settings: ServeSettings) -> str:
    """The live version: the serving alias when it exists, else the configured start-up version."""
    if settings.serving_alias in registry.aliases(settings.model):
        return registry.resolve(settings.model, settings.serving_alias)
    return registry.resolve(settings.model, settings.version)


class LiveVersion:
    """The live version (`serving_version`): from memory, the alias file looked at (one stat) at most
    every `settings.alias_check_s`, and re-read only when it changed."""

    def __init__(self, registry: ArtifactRegistry, settings: ServeSettings, clock=time.monotonic):
        self.registry, self.settings = registry, settings
        self.name, self.alias = settings.model, settings.serving_alias
        self._path = Path(registry.root) / self.name / ALIASES
        self._stamp: tuple[int, int] | None = None
        self._version: str | None = None
        self._clock = clock
        self._next_check = 0.0

    def set(self, version: str) -> None:
        """Move the serving alias (OSError where the registry is mounted read-only); this replica
        serves the new version from its next request."""
        self.registry.set_alias(self.name, self.alias, version)
        self._stamp, self._version = None, None

    def get(self) -> str:
        now = self._clock()
        if self._version is not None and now < self._next_check:
            return self._version
        self._next_check = now + self.settings.alias_check_s
        try:
            st = os.stat(self._path)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp or self._version is None:
            self._version = serving_version(self.registry, self.settings)
            self._stamp = stamp
        return self._version

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.get()}"
