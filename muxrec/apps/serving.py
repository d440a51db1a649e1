"""Running the Serve app from this process: `muxrec serve`, the demo and the serving benchmark."""

from __future__ import annotations

import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import httpx

from muxrec.errors import MuxrecError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float = 120.0) -> dict:
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()
            last = r.text
        except httpx.HTTPError as err:
            last = str(err)
        time.sleep(0.5)
    raise MuxrecError(f"the service at {url} did not become ready in {timeout_s:.0f}s (last answer: {last})")


@contextmanager
def serving(config_path: Path, overrides: dict[str, Any] | None = None, host: str | None = None,
            port: int | None = None, remove_app: bool = True) -> Iterator[str]:
    """Start Ray (if needed) and the Serve app; yield its URL once /readyz answers; then shut Serve down,
    and Ray with every process it started when this call started it (a joined cluster or the Ray of
    `muxrec ray up` is left running). `remove_app=False`: leave the app to a caller that is about to stop
    the Ray it started (Serve's own shutdown makes Ray print a retry of the controller's last call)."""
    from ray import serve

    from muxrec.ray_env import ensure_ray, shutdown_started_ray
    from muxrec.services.app import load_serve_config, start

    config = load_serve_config(config_path)
    config = replace(config, host=host or config.host, port=port or config.port)
    started = ensure_ray()
    try:
        url = start(config, overrides)
        wait_ready(url)
        yield url
    finally:
        if started:  # everything goes with this Ray; serve.shutdown() first would only add Ray's complaint
            shutdown_started_ray()  # that the Serve controller, ending itself, was "killed" mid-call
        elif remove_app:
            serve.shutdown()  # a Ray that keeps running: take the app off it


def serve_until_stopped(config_path: Path, overrides: dict[str, Any], host: str | None, port: int | None) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # kept by ensure_ray when Ray starts
        signal.signal(sig, lambda *_: stop.set())
    with serving(config_path, overrides, host, port) as url:
        print(f"muxrec is serving at {url}  (OpenAPI docs: {url}/docs, metrics: {url}/metrics); Ctrl-C stops it",
              flush=True)
        stop.wait()
        print("muxrec: stopping", flush=True)
