"""Where and from what a benchmark figure was made (recorded beside every result), and where results go."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Process:
    parent: int  # pid of the parent process
    rss_bytes: int
    cpu_s: float  # user + system CPU seconds so far
    title: str  # the command line as the process shows it (Ray titles its workers `ray::...`)


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def processes() -> dict[int, Process]:
    """Every process of this machine by pid, from /proc (Linux; empty elsewhere). Benchmarks watch the
    memory and the CPU of Ray's processes with it."""
    out = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # after "(name)": state, ppid, ...
            rss_pages = int((entry / "statm").read_text().split()[1])
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        out[int(entry.name)] = Process(parent=int(fields[1]), rss_bytes=rss_pages * _PAGE_BYTES,
                                       cpu_s=(int(fields[11]) + int(fields[12])) / _CLOCK_TICKS, title=title)
    return out


def write_result(out_dir: Path, name: str, row: dict[str, Any]) -> None:
    """A benchmark's result row as out_dir/results/<name>.json, the file its report is rebuilt from."""
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(row, indent=1))
