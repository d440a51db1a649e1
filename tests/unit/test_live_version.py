"""Which version a gateway replica serves: the `serving` alias when it exists, the configured version
only before it does, and nothing is written to the registry at start (it may be mounted read-only).
Built without Ray: the gateway's context takes no handle until a request needs one."""

from __future__ import annotations

import json

from muxrec.artifacts import ALIASES, ArtifactRegistry
from muxrec.services.deps import GatewayContext
from muxrec.services.settings import ServeSettings
from muxrec.services.versions import LiveVersion, serving_version

from tests.helpers import synthetic_spec


def _registry(tmp_path) -> ArtifactRegistry:
    registry = ArtifactRegistry(tmp_path / "registry")
    spec = synthetic_spec(rows=200, seed=3).to_yaml()
    for payload in (b"weights-1", b"weights-2", b"weights-3"):
        registry.publish("m", {"spec.yaml": spec, "weights.safetensors": payload})
    return registry  # latest = v0003, no serving alias yet


def _start(registry: ArtifactRegistry, version: str, alias_check_s: float = 0.5) -> GatewayContext:
    settings = ServeSettings(registry=registry.root, model="m", version=version, redis_url="",
                             alias_check_s=alias_check_s)
    return GatewayContext.start(settings, None, None, None)


def test_start_writes_nothing_and_serves_the_configured_version_until_an_alias_exists(tmp_path):
    registry = _registry(tmp_path)
    aliases = registry.root / "m" / ALIASES
    before = aliases.read_bytes(), aliases.stat().st_mtime_ns
    context = _start(registry, "v0001")
    assert context.live.get() == "v0001"
    assert (aliases.read_bytes(), aliases.stat().st_mtime_ns) == before  # read-only at start
    assert "serving" not in registry.aliases("m")


def test_a_reloaded_version_survives_restarts_and_redeploys(tmp_path):
    registry = _registry(tmp_path)
    first = _start(registry, "latest")
    first.live.set("v0002")  # what /v1/admin/reload does
    restarts = [_start(registry, version, alias_check_s=0) for version in ("latest", "v0001", "v0003", "latest")]
    live = [c.live.get() for c in restarts]
    print(f"after a reload to v0002, {live.count('v0002')}/{len(live)} restarted replicas serve v0002 "
          f"(configured: latest, v0001, v0003, latest)")
    assert live == ["v0002"] * 4
    settings = ServeSettings(registry=registry.root, model="m", version="latest", redis_url="")
    assert serving_version(registry, settings) == "v0002"  # what a restarted Ranker / Embedder loads
    first.live.set("v0003")
    assert [c.live.get() for c in restarts] == ["v0003"] * 4  # every replica follows the alias
    assert json.loads((registry.root / "m" / ALIASES).read_text())["serving"] == "v0003"


def test_the_alias_is_looked_at_at_most_every_alias_check_s_and_a_reload_here_applies_at_once(tmp_path):
    registry = _registry(tmp_path)
    now = [100.0]
    settings = ServeSettings(registry=registry.root, model="m", version="latest", redis_url="", alias_check_s=0.5)
    here, other = (LiveVersion(registry, settings, clock=lambda: now[0]) for _ in range(2))
    assert here.get() == other.get() == "v0003"
    here.set("v0001")  # a reload through this replica
    assert here.get() == "v0001"  # at once
    now[0] += 0.4
    assert other.get() == "v0003"  # another replica: from memory until its next look at the alias file
    now[0] += 0.2
    assert other.get() == "v0001"
    registry.set_alias("m", "serving", "v0002")  # moved by a process without this LiveVersion
    now[0] += 0.49
    assert other.get() == "v0001"
    now[0] += 0.02
    assert other.get() == "v0002"


def test_a_restart_after_a_reload_to_a_subset_model_keeps_the_request_model_of_the_deploy(tmp_path):
    import asyncio

    from muxrec.selection import subset_spec

    registry = ArtifactRegistry(tmp_path / "registry")
    full = synthetic_spec(rows=200, seed=3)
    lean = subset_spec(full, ["user_id", "item_id", "price"], "lean")
    for spec in (full, lean):
        registry.publish("m", {"spec.yaml": spec.to_yaml(), "weights.safetensors": spec.name.encode()})
    _start(registry, "v0001").live.set("v0002")  # a reload to the subset model
    restarted = _start(registry, "v0001")
    assert restarted.live.get() == "v0002"
    assert restarted.spec.name == "synthetic"  # the request model of the deploy-time spec...
    assert [c.name for c in restarted.schema.columns] == [c.name for c in full.request_columns()]
    live = asyncio.run(restarted.model_columns("v0002"))  # ...checked and sent with the live model's columns
    assert live.spec.name == "lean" and [c.name for c in live.columns] == ["user_id", "item_id", "price"]
    # Configured as the subset version itself (or `latest`, now that one): the live spec is all there is.
    assert _start(registry, "latest").spec.name == "lean"
