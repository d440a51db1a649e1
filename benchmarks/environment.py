"""Where and from what a benchmark figure was made (recorded beside every result), and where results go."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(terse=True), "python": platform.python_version(),
            "torch": torch.__version__.split("+")[0]}


def commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_result(out_dir: Path, name: str, row: dict[str, Any]) -> None:
    """A benchmark's result row as out_dir/results/<name>.json, the file its report is rebuilt from."""
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(row, indent=1))
