"""Dependencies point one way. Every import statement in the source tree is read (including the
lazy ones inside functions) and checked against the layering of the design:

    core (muxrec/)  <-  models/  <-  pipelines/, services/  <-  muxrec/cli.py, muxrec/apps/ (composition roots)

core stays free of torch / Ray; models import neither pipelines, services nor Ray; services never
import pipelines; pipelines never import services. Top-level folder names are never import names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS = {
    "core": (REPO / "muxrec", {"muxrec.models", "muxrec.pipelines", "muxrec.services", "muxrec.cli",
                               "torch", "torchrec", "ray", "fastapi", "redis"}),
    "models": (REPO / "models", {"muxrec.pipelines", "muxrec.services", "muxrec.cli", "ray"}),
    "pipelines": (REPO / "pipelines", {"muxrec.services", "muxrec.cli"}),
    "services": (REPO / "services", {"muxrec.pipelines", "muxrec.cli"}),
}
BARE = {"models", "pipelines", "services"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _violations(layer: str) -> list[str]:
    root, forbidden = LAYERS[layer]
    bad = []
    for path in sorted(root.rglob("*.py")):
        if layer == "core" and (path == root / "cli.py" or root / "apps" in path.parents):
            continue  # composition roots (the CLI, muxrec.apps) may reach every layer
        for line, module in _imports(path):
            hit = [f for f in forbidden if module == f or module.startswith(f + ".")]
            if hit or module.split(".")[0] in BARE:
                bad.append(f"{layer}/{path.relative_to(root)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_point_one_way(layer):
    assert _violations(layer) == []


def test_the_checker_sees_lazy_imports(tmp_path, monkeypatch):
    (tmp_path / "m.py").write_text("def f():\n    from muxrec.pipelines.train import train\n    import ray\n")
    monkeypatch.setitem(LAYERS, "models", (tmp_path, LAYERS["models"][1]))
    assert _violations("models") == ["models/m.py:2 imports muxrec.pipelines.train", "models/m.py:3 imports ray"]


def test_core_imports_without_torch_or_ray():
    code = ("import sys, muxrec.spec, muxrec.encoding, muxrec.artifacts, muxrec.metrics, muxrec.config, muxrec.data, "
            "muxrec.cli; bad = [m for m in ('torch', 'ray', 'torchrec') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
