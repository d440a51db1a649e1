"""Dependencies point one way. Every import statement in the source tree is read (including the
lazy ones inside functions) and checked against the layering of the design:

    core (muxrec/)  <-  models/  <-  pipelines/, services/  <-  top: muxrec/cli.py, muxrec/apps/, benchmarks/

core stays free of torch / Ray (muxrec/ray_env.py alone may import Ray, inside its functions, so that
pipelines and services share one set of start-up settings); models import neither pipelines, services
nor Ray; services never import pipelines; pipelines never import services. The top layer (the CLI,
the composition roots and the benchmarks) may import everything, and nothing below it imports it.
Top-level folder names are never import names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TOP = {"muxrec.cli", "muxrec.apps", "muxrec.benchmarks"}
LAYERS = {
    "core": (REPO / "muxrec", TOP | {"muxrec.models", "muxrec.pipelines", "muxrec.services",
                                     "torch", "torchrec", "ray", "fastapi", "redis"}),
    "ray_env": (REPO / "muxrec" / "ray_env.py", TOP | {"muxrec.models", "muxrec.pipelines", "muxrec.services",
                                                      "torch", "torchrec", "fastapi", "redis"}),
    "models": (REPO / "models", TOP | {"muxrec.pipelines", "muxrec.services", "ray"}),
    "pipelines": (REPO / "pipelines", TOP | {"muxrec.services"}),
    "services": (REPO / "services", TOP | {"muxrec.pipelines"}),
    "top": (REPO / "benchmarks", set()),
}
BARE = {"models", "pipelines", "services", "benchmarks"}


def _files(layer: str) -> list[Path]:
    root = LAYERS[layer][0]
    if root.is_file():
        return [root]
    files = sorted(root.rglob("*.py"))
    if layer == "core":  # the CLI and the composition roots are the top layer; ray_env has its own rule
        core = REPO / "muxrec"
        return [p for p in files if p not in (core / "cli.py", core / "ray_env.py") and core / "apps" not in p.parents]
    if layer == "top":
        return [REPO / "muxrec" / "cli.py", *sorted((REPO / "muxrec" / "apps").rglob("*.py")), *files]
    return files


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
    base = root if root.is_dir() else root.parent
    bad = []
    for path in _files(layer):
        for line, module in _imports(path):
            hit = [f for f in forbidden if module == f or module.startswith(f + ".")]
            if hit or module.split(".")[0] in BARE:
                bad.append(f"{layer}/{path.relative_to(base) if base in path.parents else path.name}:{line} "
                           f"imports {module}")
    return bad


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_point_one_way(layer):
    assert _violations(layer) == []


def test_the_checker_sees_lazy_imports(tmp_path, monkeypatch):
    (tmp_path / "m.py").write_text("def f():\n    from muxrec.pipelines.train import train\n    import ray\n")
    monkeypatch.setitem(LAYERS, "models", (tmp_path, LAYERS["models"][1]))
    assert _violations("models") == ["models/m.py:2 imports muxrec.pipelines.train", "models/m.py:3 imports ray"]


def _loaded_after(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    """Modules starting with `prefixes` that a fresh interpreter has loaded after `import <imports>`."""
    code = f"import sys, {imports}; print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_core_imports_without_torch_or_ray():
    core = "muxrec.spec, muxrec.encoding, muxrec.artifacts, muxrec.metrics, muxrec.config, muxrec.data, muxrec.cli"
    assert _loaded_after(core, ("torch", "ray", "torchrec")) == []


def test_serving_needs_no_pipelines():
    """The Serve image needs muxrec, models and services only: the serving entry pulls in no pipeline."""
    serving = "muxrec.apps.serving, muxrec.services.app, muxrec.ray_env"
    assert _loaded_after(serving, ("muxrec.pipelines", "muxrec.benchmarks")) == []


def test_preprocessing_imports_without_torch():
    """Ray Data's workers import the modules whose functions `prepare` maps over the rows: without torch and
    TorchRec a new worker starts in ~1 s instead of ~6 s (pipelines/prepare.py)."""
    preprocessing = "muxrec.pipelines.prepare, muxrec.pipelines.sources, muxrec.pipelines.io, muxrec.history"
    assert _loaded_after(preprocessing, ("torch", "fbgemm_gpu")) == []


def test_serving_imports_torch_only_where_a_model_loads():
    """The replicas that load no model start without torch and TorchRec (~2 s instead of ~7 s per replica
    here, and ~300 MB less each): the gateway's routes reach the Ranker and Embedder through
    services/calls.py, not through the deployments' modules. The `muxrec serve` process builds the app
    from every deployment's module, and loads no model either."""
    lean = "muxrec.services.gateway, muxrec.services.selector, muxrec.services.app, muxrec.apps.serving"
    assert _loaded_after(lean, ("torch", "fbgemm_gpu", "muxrec.models")) == []
