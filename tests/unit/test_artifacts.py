"""The on-disk model registry: versions, manifest hashes, atomic aliases."""

from __future__ import annotations

import json

import pytest

from muxrec.artifacts import ArtifactRegistry
from muxrec.errors import ArtifactError


def _publish(registry, name="m", payload=b"weights-1", **kw):
    return registry.publish(name, {"weights.safetensors": payload, "spec.yaml": "name: x\n"}, {"auc": 0.7}, **kw)


def test_publish_numbers_versions_and_moves_latest(tmp_path):
    reg = ArtifactRegistry(tmp_path)
    v1 = _publish(reg)
    v2 = _publish(reg, payload=b"weights-2")
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert reg.versions("m") == ["v0001", "v0002"] and reg.names() == ["m"]
    assert reg.aliases("m") == {"latest": "v0002"}
    assert reg.open("m").file("weights.safetensors").read_bytes() == b"weights-2"
    assert reg.open("m", "v0001").metadata == {"auc": 0.7}
    manifest = json.loads((v2.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"weights.safetensors", "spec.yaml"}
    assert not list(tmp_path.glob("m/.staging-*"))


def test_aliases_are_replaced_atomically_and_validated(tmp_path):
    reg = ArtifactRegistry(tmp_path)
    _publish(reg)
    _publish(reg)
    reg.set_alias("m", "production", "v0001")
    assert reg.resolve("m", "production") == "v0001" and reg.resolve("m", "latest") == "v0002"
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".aliases")]
    with pytest.raises(ArtifactError, match="has no version 'v0009'"):
        reg.set_alias("m", "production", "v0009")
    with pytest.raises(ArtifactError, match="must be a name, not a version"):
        reg.set_alias("m", "v0001", "v0001")
    with pytest.raises(ArtifactError, match="has no alias 'staging'"):
        reg.open("m", "staging")


@pytest.mark.parametrize("tamper, message", [
    (lambda v: (v.path / "weights.safetensors").write_bytes(b"evil"), "fails its manifest check"),
    (lambda v: (v.path / "spec.yaml").unlink(), "spec.yaml is missing"),
    (lambda v: (v.path / "payload.pkl").write_bytes(b"x"), r"files not in the manifest: \['payload.pkl'\]"),
    (lambda v: (v.path / "manifest.json").write_text("{"), "unreadable manifest.json"),
])
def test_tampered_versions_are_refused(tmp_path, tamper, message):
    reg = ArtifactRegistry(tmp_path)
    good = _publish(reg)
    bad = _publish(reg)
    tamper(bad)
    with pytest.raises(ArtifactError, match=message):
        reg.open("m", bad.version)
    assert reg.open("m", good.version).file("weights.safetensors").read_bytes() == b"weights-1"


def test_a_failed_publish_leaves_existing_versions_and_aliases_alone(tmp_path):
    reg = ArtifactRegistry(tmp_path)
    _publish(reg)
    missing = tmp_path / "does-not-exist.bin"
    with pytest.raises(FileNotFoundError):
        reg.publish("m", {"weights.safetensors": missing})
    assert reg.versions("m") == ["v0001"] and reg.aliases("m") == {"latest": "v0001"}
    assert not list((tmp_path / "m").glob(".staging-*"))
    reg.open("m")  # still verifies


def test_names_and_files_are_checked(tmp_path):
    reg = ArtifactRegistry(tmp_path)
    with pytest.raises(ArtifactError, match="model name"):
        reg.publish("../escape", {"a": b""})
    with pytest.raises(ArtifactError, match="invalid artifact file names"):
        reg.publish("m", {"../a": b""})
    with pytest.raises(ArtifactError, match="no model named 'nope'"):
        reg.open("nope")


@pytest.mark.parametrize("bad", ["..", "../m", "m/../../x", "/etc", ".hidden", ""])
def test_names_and_aliases_cannot_leave_the_registry(tmp_path, bad):
    reg = ArtifactRegistry(tmp_path / "registry")
    _publish(reg)
    (tmp_path / "outside").mkdir()
    for call in (lambda: reg.versions(bad), lambda: reg.aliases(bad), lambda: reg.resolve("m", bad),
                 lambda: reg.open("m", bad), lambda: reg.set_alias("m", bad, "v0001")):
        with pytest.raises(ArtifactError, match="must match|neither a version"):
            call()
    assert set(reg.aliases("m")) == {"latest"}


def test_spec_and_weights_hash_are_read_through_the_version(tmp_path):
    reg = ArtifactRegistry(tmp_path)
    v1 = _publish(reg)
    manifest = reg.manifest("m", "latest")
    assert v1.weights_sha256 == manifest["files"]["weights.safetensors"] and len(v1.weights_sha256) == 64
