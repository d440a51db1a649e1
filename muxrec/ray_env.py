"""Starting (or joining) Ray once per process, with settings that suit a laptop or CI box.

It lives in the core so that pipelines and services (and the serving launcher) share one set of
start-up settings. Ray is imported inside the functions: the core stays importable without it.

Which Ray: RAY_ADDRESS when set; else the local one `muxrec ray up` keeps running (bound to
127.0.0.1; its address is in `$XDG_CACHE_HOME/muxrec/ray.json`), which saves every later command
Ray's start-up; else a new local instance for this process alone.

Quiet by default: Ray's own log lines and the output of its worker processes (placement-group
notices, library loads, deprecation warnings, Ray Data / Train progress tables) reach the terminal
only with --verbose / MUXREC_LOG_LEVEL=debug. Errors still do: a failed task or training worker is
raised in the driver as an exception.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from muxrec.errors import MuxrecError
from muxrec.log import verbose

HOST = "127.0.0.1"


def kept_ray_file() -> Path:
    """Where `muxrec ray up` records the address and process of the Ray it keeps."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "muxrec" / "ray.json"


def kept_ray_address() -> str | None:
    """The address of the Ray `muxrec ray up` started, if it is still running."""
    try:
        kept = json.loads(kept_ray_file().read_text())
        os.kill(kept["pid"], 0)
    except (OSError, ValueError, KeyError):
        return None
    host, port = kept["address"].rsplit(":", 1)
    return kept["address"] if _listening(host, int(port)) else None


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def use_kept_ray() -> str | None:
    """The address to join when it is the kept Ray (not RAY_ADDRESS); sets its auth mode.

    `ray up` starts Ray with token authentication (the token in ~/.ray). Ray reads RAY_AUTH_MODE
    when it is imported, so the CLI calls this before anything imports Ray.
    """
    if os.environ.get("RAY_ADDRESS"):
        return None
    kept = kept_ray_address()
    if kept:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    return kept


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS or the kept local Ray, else start a local one; no-op if Ray is running.

    The dashboard stays off (it would listen on a public interface by default), and Ray Data keeps
    row order so that a rerun over the same input writes the same files.
    """
    kept = use_kept_ray()
    import ray
    from ray.data import DataContext

    loud = verbose()
    if not loud:
        for name in ("ray", "ray.serve", "ray.train"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Ray Data logs a failed task's error with its whole traceback before raising it, and the
        # caller prints that error as one line; --verbose shows all of it.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    if not ray.is_initialized():
        quiet = {"log_to_driver": loud,
                 "logging_config": ray.LoggingConfig(log_level="INFO" if loud else "ERROR")}
        address = os.environ.get("RAY_ADDRESS") or kept
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     dashboard_host=HOST, **quiet)
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.raise_original_map_exception = True  # a DataError from derive() reaches the user as itself
    if not sys.stderr.isatty() or not loud:
        # Without a terminal Ray Data logs every progress update as a line; muxrec draws its own.
        ctx.enable_progress_bars = False
        if loud:
            logging.getLogger("ray.data").setLevel(logging.WARNING)


def ray_up(num_cpus: int | None = None, timeout: float = 120.0) -> str:
    """Start a local Ray head bound to 127.0.0.1 that later muxrec commands join; return its address."""
    running = kept_ray_address()
    if running:
        return running
    port = _free_port()
    log_path = kept_ray_file().with_name("ray-up.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--node-ip-address={HOST}",
               f"--port={port}", f"--num-cpus={num_cpus or os.cpu_count()}", "--include-dashboard=false",
               "--disable-usage-stats"]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # a token in ~/.ray (made if missing) guards the cluster
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    # Ready once `ray start` says so (its GCS port opens before the node has registered).
    while not (_listening(HOST, port) and "Ray runtime started" in log_path.read_text(errors="replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_group(proc.pid)
            raise MuxrecError(f"ray up: Ray did not start within {timeout:.0f}s (see {log_path})")
        time.sleep(0.2)
    address = f"{HOST}:{port}"
    kept_ray_file().write_text(json.dumps({"address": address, "pid": proc.pid}))
    return address


def ray_down(timeout: float = 30.0) -> bool:
    """Stop the Ray `ray_up` started (only that one); False when none was running."""
    path = kept_ray_file()
    try:
        pid = json.loads(path.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return False
    path.unlink(missing_ok=True)
    return _stop_group(pid, timeout)


def _stop_group(pid: int, timeout: float = 30.0) -> bool:
    """SIGTERM to the process group `ray start --block` leads (it stops what it started), then SIGKILL."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


