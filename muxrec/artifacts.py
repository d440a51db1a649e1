"""A versioned model registry on disk.

    <root>/<model name>/
        v0001/  weights.safetensors  spec.yaml  vocabulary.json  model.json  metrics.json  manifest.json
        v0002/  ...
        aliases.json     {"latest": "v0002", "production": "v0001"}

A version is written into a staging folder and renamed into place only when complete, so a crash
never leaves a half-written version and never touches existing ones. `manifest.json` holds the
sha256 of every file; `open` verifies each hash and refuses a version whose files differ, are
missing or were added. Aliases are replaced atomically (write + os.replace). Nothing here unpickles:
weights are safetensors, everything else is JSON / YAML.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from muxrec.errors import ArtifactError

if TYPE_CHECKING:
    from muxrec.spec import FeatureSpec

MANIFEST = "manifest.json"
ALIASES = "aliases.json"
WEIGHTS = "weights.safetensors"  # the model's weights; their hash identifies the version's vectors
SPEC = "spec.yaml"  # the feature spec the version was trained with
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # model names and aliases: one path part, never "." or ".."
_VERSION = re.compile(r"^v(\d{4,})$")
_NAME = re.compile(NAME_PATTERN)


def check_name(kind: str, value: str) -> str:
    """`value` if it is a valid model name / alias (cannot leave the registry folder), else ArtifactError."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ArtifactError(f"{kind} {value!r} must match {NAME_PATTERN}")
    return value


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    """A verified version: its folder, manifest and metadata."""

    name: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.get("metadata", {})

    def file(self, filename: str) -> Path:
        if filename not in self.manifest["files"]:
            raise ArtifactError(f"{self.name}/{self.version} has no file {filename!r}")
        return self.path / filename

    def read_text(self, filename: str) -> str:
        return self.file(filename).read_text()

    def read_json(self, filename: str) -> Any:
        return json.loads(self.read_text(filename))

    def read_spec(self) -> "FeatureSpec":
        """The feature spec stored with this version."""
        from muxrec.spec import spec_from_yaml  # the spec module is core too; imported late to keep this light

        return spec_from_yaml(self.read_text(SPEC), origin=f"{self.ref}/{SPEC}")

    @property
    def weights_sha256(self) -> str:
        """The sha256 of the weights file, from the verified manifest."""
        if WEIGHTS not in self.manifest["files"]:
            raise ArtifactError(f"{self.ref} has no {WEIGHTS}")
        return self.manifest["files"][WEIGHTS]

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


class ArtifactRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- writing ---------------------------------------------------------------------------

    def publish(self, name: str, files: Mapping[str, bytes | str | Path], metadata: Mapping[str, Any] | None = None,
                aliases: tuple[str, ...] = ("latest",)) -> ModelVersion:
        """Write a new version holding `files` (name -> bytes, text or a path to copy)."""
        check_name("model name", name)
        bad = [f for f in files if "/" in f or f.startswith(".") or f == MANIFEST]
        if bad:
            raise ArtifactError(f"invalid artifact file names: {bad}")
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = model_dir / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for filename, content in files.items():
                target = staging / filename
                if isinstance(content, Path):
                    shutil.copyfile(content, target)
                elif isinstance(content, str):
                    target.write_text(content)
                else:
                    target.write_bytes(content)
            manifest = {
                "name": name,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": {f: sha256_file(staging / f) for f in sorted(files)},
                "metadata": dict(metadata or {}),
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            version = self._claim_version(model_dir, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for alias in aliases:
            self.set_alias(name, alias, version)
        return self.open(name, version)

    def _claim_version(self, model_dir: Path, staging: Path) -> str:
        # rename() onto an existing non-empty folder fails, so two writers never share a number.
        number = max((int(m.group(1)) for p in model_dir.iterdir() if (m := _VERSION.match(p.name))), default=0)
        for attempt in range(number + 1, number + 1000):
            version = f"v{attempt:04d}"
            try:
                staging.rename(model_dir / version)
                return version
            except OSError:
                continue
        raise ArtifactError(f"could not allocate a version folder under {model_dir}")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        check_name("alias", alias)
        if _VERSION.match(alias):
            raise ArtifactError(f"alias {alias!r} must be a name, not a version")
        if version not in self.versions(name):
            raise ArtifactError(f"{name} has no version {version!r}; versions: {self.versions(name)}")
        current = self.aliases(name)
        current[alias] = version
        path = self.root / name / ALIASES
        tmp = path.with_name(f".{ALIASES}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(current, indent=1, sort_keys=True))
        os.replace(tmp, path)

    # ---- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and _NAME.match(p.name) and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        model_dir = self.root / check_name("model name", name)
        if not model_dir.is_dir():
            return []
        return sorted((p.name for p in model_dir.iterdir() if _VERSION.match(p.name)),
                      key=lambda v: int(v[1:]))

    def aliases(self, name: str) -> dict[str, str]:
        path = self.root / check_name("model name", name) / ALIASES
        return json.loads(path.read_text()) if path.is_file() else {}

    def resolve(self, name: str, ref: str = "latest") -> str:
        """A version ("v0003") or an alias ("latest") -> the version it names."""
        versions = self.versions(name)
        if not versions:
            known = self.names()
            raise ArtifactError(f"no model named {name!r} in {self.root} (known: {known or 'none'})")
        if not isinstance(ref, str) or not (_VERSION.match(ref) or _NAME.match(ref)):
            raise ArtifactError(f"{ref!r} is neither a version (v0003) nor an alias matching {NAME_PATTERN}")
        if _VERSION.match(ref):
            if ref not in versions:
                raise ArtifactError(f"{name} has no version {ref}; versions: {versions}")
            return ref
        aliases = self.aliases(name)
        if ref not in aliases:
            raise ArtifactError(f"{name} has no alias {ref!r}; aliases: {sorted(aliases)}, versions: {versions}")
        return aliases[ref]

    def manifest(self, name: str, version: str) -> dict[str, Any]:
        """The manifest of `version` as written, without verifying files (listings, cache keys)."""
        version = self.resolve(name, version)
        try:
            return json.loads((self.root / name / version / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ArtifactError(f"{name}/{version}: unreadable {MANIFEST} ({err})") from None

    def open(self, name: str, ref: str = "latest") -> ModelVersion:
        """Resolve ref and verify every file against the manifest before anything reads it."""
        version = self.resolve(name, ref)
        path = self.root / name / version
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ArtifactError(f"{name}/{version}: unreadable {MANIFEST} ({err})") from None
        expected = manifest.get("files", {})
        present = {p.name for p in path.iterdir() if p.name != MANIFEST}
        if extra := sorted(present - set(expected)):
            raise ArtifactError(f"{name}/{version}: files not in the manifest: {extra}")
        for filename, digest in expected.items():
            target = path / filename
            if not target.is_file():
                raise ArtifactError(f"{name}/{version}: {filename} is missing")
            actual = sha256_file(target)
            if actual != digest:
                raise ArtifactError(f"{name}/{version}: {filename} fails its manifest check "
                                    f"(sha256 {actual[:12]}..., manifest says {digest[:12]}...); "
                                    "the file was changed or corrupted, refusing to load it")
        return ModelVersion(name, version, path, manifest)
