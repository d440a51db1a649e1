"""`muxrec serve` as a user runs it (its own process, starting its own Ray): every socket that it and
the processes it started listen on is bound to 127.0.0.1 (fault 7 of issue 10), and SIGTERM leaves
none of those processes behind (fault 6). One start covers both: a Serve start costs seconds here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from muxrec.apps.serving import free_port, wait_ready
from muxrec.ray_env import _alive, _process_tree

from tests.conftest import MODEL

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# The one exception, a measured finding (docs/serving.md): every Serve replica starts an inter-deployment
# gRPC server on "[::]:0", hard-coded in Ray Serve 2.60 (ray/serve/_private/replica.py) with no setting.
SERVE_REPLICA = "ray::ServeReplica:"


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening_sockets(pids: list[int]) -> list[tuple[str, int, str]]:
    """(address, port, process title) of each TCP socket in LISTEN state that one of `pids` holds,
    read from /proc/<pid>/fd and /proc/net/tcp{,6}."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:  # the process ended meanwhile
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            pid = owner[fields[9]]
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            out.append((_address(address), int(port, 16), Path(title).name if "/" in title else title))
    return out


def test_serve_listens_on_loopback_only_and_sigterm_leaves_no_process(small_models, tmp_path):
    registry, v1, *_ = small_models
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(XDG_CACHE_HOME=str(tmp_path), REDIS_URL="")  # no kept Ray: it starts its own; no Redis
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "muxrec.cli", "serve", "--registry", str(registry.root),
                             "--name", MODEL, "--model-version", v1.version, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout_s=240)
        tree = _process_tree(proc.pid)
        sockets = listening_sockets([proc.pid, *tree])
        driver_torch = "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
        driver_mb = int(Path(f"/proc/{proc.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    except BaseException:
        proc.kill()
        print(proc.communicate()[0][-3000:])
        raise
    proc.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    try:
        output = proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    stop_s = time.monotonic() - stopped_at
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid, start in tree.items() if _alive(pid, start)}
    for pid in left:  # tidy up before failing
        os.kill(pid, signal.SIGKILL)
    public = [s for s in sockets if s[0] not in LOOPBACK]
    replicas = [s for s in public if s[2].startswith(SERVE_REPLICA)]
    print(f"muxrec serve: {len(tree)} processes started, {len(sockets)} listening sockets "
          f"({len({s[2] for s in sockets})} kinds of process), {len(public)} not on loopback, "
          f"{len(replicas)} of them Serve replicas' gRPC servers {public}; "
          f"SIGTERM: exit {proc.returncode} after {stop_s:.1f} s, {len(left)} processes left {list(left.values())}; "
          f"the serve process itself: {driver_mb} MB resident, torch loaded: {driver_torch}")
    assert not driver_torch  # it builds the app; only the Ranker and Embedder replicas load models
    assert proc.returncode == 0, output[-3000:]
    assert "muxrec: stopping" in output
    assert "(raylet)" not in output, output[-3000:]  # stopping its own Ray, it does not call Serve's shutdown
    assert any(s[1] == port for s in sockets)  # the HTTP proxy is among them
    assert len(tree) >= 4 and len(sockets) >= 6  # GCS, raylet, agents, workers: the check saw Ray's servers
    assert public == replicas, public  # Ray's GCS, raylet, workers, agents, metrics, Serve's proxy: loopback
    assert not left, left
