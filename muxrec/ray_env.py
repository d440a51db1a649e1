"""Starting (or joining) Ray once per process, with settings that suit a laptop or CI box.

It lives in the core so that pipelines and services (and the serving launcher) share one set of
start-up settings. Ray is imported inside the functions: the core stays importable without it.

Which Ray: RAY_ADDRESS when set; else the local one `muxrec ray up` keeps running (bound to
127.0.0.1; its address is in `$XDG_CACHE_HOME/muxrec/ray.json`), which saves every later command
Ray's start-up; else a new local instance for this process alone.

Local means loopback: a Ray that muxrec starts or joins on this machine (not RAY_ADDRESS) takes
127.0.0.1 as its node address, so that GCS, raylet, workers, agents and the metrics exporter all
listen on 127.0.0.1 only (by default Ray takes the machine's outward address and binds to it or to
every interface). The dashboard stays off. A cluster address (RAY_ADDRESS / --address) is left to
that cluster's own settings.

Quiet by default: Ray's own log lines and the output of its worker processes (placement-group
notices, library loads, deprecation warnings, Ray Data / Train progress tables) reach the terminal
only with --verbose / MUXREC_LOG_LEVEL=debug. Errors still do: a failed task or training worker is
raised in the driver as an exception.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from muxrec.errors import ConfigError, MuxrecError
from muxrec.log import verbose

if TYPE_CHECKING:
    from ray.data.context import ShuffleStrategy

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
    when it is imported, so the CLI calls this before anything imports Ray; a program that imported
    Ray first (a script calling muxrec's Python API) has Ray read it again, as `ray.init` does when it
    turns token authentication on itself (without: "Authentication token is missing or incorrect"
    until the join gives up). RAY_ADDRESS set to the kept Ray's own address (as `muxrec ray status`
    prints it) joins it the same way; another RAY_ADDRESS is a cluster of the user's, joined as it is.
    """
    kept = kept_ray_address()
    if not kept or os.environ.get("RAY_ADDRESS", kept) != kept:
        return None
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray._raylet" in sys.modules:
            from ray._raylet import Config

            Config.initialize("")
    return kept


# Ray takes 127.0.0.1 as the node address when "clusters" are off (its setting for Windows / macOS,
# read from this variable when Ray is imported); muxrec's local Ray is one node, so it sets it.
_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _use_loopback_node() -> None:
    """Make this process's Ray take 127.0.0.1 as its node address when it starts or joins a local Ray.

    Ray resolves 127.0.0.1 given as `_node_ip_address` back to the machine's outward address; only
    the single-node switch above keeps it. Ray reads that variable at import, which may have happened
    (a test session, a library): set the module's value too. The process's environment is left alone
    so that children (e.g. a multi-node test cluster) keep Ray's defaults.
    """
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _is_loopback(address: str) -> bool:
    """Whether a Ray address (host:port, ray://host:port) names this machine's loopback."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


# Ray keeps up to `num_workers_soft_limit` idle worker processes for reuse (default: the CPU count) and
# stops the others a second after they fall idle. Ray Data runs its readers and map tasks on fractional
# CPUs, several per CPU, so on a small machine every stage and every job started fresh processes that
# import Ray Data, pyarrow and muxrec again: tests/integration/test_pipeline.py started 116-117 worker
# processes on 2 CPUs, 95-98 with a limit of 8 (wall 283.6 s vs 246.6 / 276.1 s, one noisy window). A Ray
# that muxrec starts keeps at least this many (Ray's default on an 8-CPU machine); a user's
# RAY_num_workers_soft_limit, or a cluster's own setting, wins.
MIN_IDLE_WORKERS = 8


def _worker_pool_config(num_cpus: int) -> dict[str, int]:
    """Ray system config for a local Ray that muxrec starts (see MIN_IDLE_WORKERS)."""
    if "RAY_num_workers_soft_limit" in os.environ:
        return {}
    return {"num_workers_soft_limit": max(num_cpus, MIN_IDLE_WORKERS)}


SHUFFLE_ENV = "MUXREC_RAY_SHUFFLE"
SORT_SHUFFLE_MAX_ROWS = 250_000  # jobs over up to this many rows shuffle by sorting, larger ones by hashing
PARQUET_READER_ENV = "RAY_DATA_USE_DATASOURCE_V2"  # Ray Data's own switch; unset, muxrec reads with 0


def shuffle_strategy(rows: int | None = None) -> ShuffleStrategy:
    """Ray Data's shuffle for the group-bys and sorts of a job over about `rows` rows.

    $MUXREC_RAY_SHUFFLE when set (any value of Ray's ShuffleStrategy). Else the sort-based shuffle up
    to SORT_SHUFFLE_MAX_ROWS rows and Ray Data's default (shuffle_v2) above. Measured here
    (scripts/compare_shuffle.py, docs/benchmarks/README.md): shuffle_v2 pays several seconds per
    group-by whatever the size, so `muxrec prepare` of ML-100K with histories took 37.7 s with it and
    10.3 s sorting; at 500k rows it was the faster one, 23.8 s against 43-63 s. Same output either way.
    The threshold lies between the two measured sizes; it is not a measured crossover.
    """
    from ray.data.context import ShuffleStrategy

    chosen = os.environ.get(SHUFFLE_ENV)
    if not chosen:
        small = rows is None or rows <= SORT_SHUFFLE_MAX_ROWS
        return ShuffleStrategy.SORT_SHUFFLE_PULL_BASED if small else ShuffleStrategy.SHUFFLE_V2
    try:
        return ShuffleStrategy(chosen)
    except ValueError:
        names = ", ".join(s.value for s in ShuffleStrategy)
        raise ConfigError(f"{SHUFFLE_ENV}: expected one of {names}, got {chosen!r}") from None


def use_shuffle_for(rows: int | None) -> None:
    """Set this process's Ray Data shuffle for a job over about `rows` rows (`shuffle_strategy`)."""
    from ray.data import DataContext

    DataContext.get_current().shuffle_strategy = shuffle_strategy(rows)


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Join RAY_ADDRESS or the kept local Ray, else start a local one; no-op if Ray is running.

    Returns True when this call started a new local Ray (which the caller then owns and shuts down).
    A local Ray listens on 127.0.0.1 only (see the module docstring), and Ray Data keeps row order so
    that a rerun over the same input writes the same files.
    """
    kept = use_kept_ray()
    import ray
    from ray.data import DataContext

    # A Ray Data run that failed in this process holds its executor, and a scoring run its actor pool
    # and their CPUs, until the garbage collector frees the failure's traceback: free them before a
    # new stage asks for those CPUs (found as a scoring run waiting forever after a failed one).
    gc.collect()

    loud = verbose()
    if not loud:
        for name in ("ray", "ray.serve", "ray.train"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Ray Data logs a failed task's error with its whole traceback before raising it, and the
        # caller prints that error as one line; --verbose shows all of it.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        _quiet_worker_pool_notice()
    started = False
    if not ray.is_initialized():
        quiet = {"log_to_driver": loud,
                 "logging_config": ray.LoggingConfig(log_level="INFO" if loud else "ERROR")}
        cluster = os.environ.get("RAY_ADDRESS")
        if not cluster or _is_loopback(cluster):
            _use_loopback_node()  # a Ray on 127.0.0.1 is joined from 127.0.0.1, or the join hangs
        # Ray's core installs a SIGTERM handler that aborts the process (leaving Ray's own processes
        # behind); the handlers this process had (e.g. `muxrec serve`'s clean stop) are put back.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        if cluster or kept:
            ray.init(address=cluster or kept, **quiet)
        else:
            cpus = num_cpus or os.cpu_count() or 1
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, dashboard_host=HOST,
                     _system_config=_worker_pool_config(cpus), **quiet)
            started = True
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.raise_original_map_exception = True  # a DataError from derive() reaches the user as itself
    if PARQUET_READER_ENV not in os.environ:
        # Ray Data's newer Parquet reader starts FooterReader actors (new processes) on every read to read
        # the files' footers, which pays off on many remote files. Here it cost 1.8-2.3 s per read of 4
        # small files against 0.2-0.4 s, and `muxrec score` of 200,000 rows took 14-15 s against 10-11 s.
        ctx.use_datasource_v2 = False
    if not sys.stderr.isatty() or not loud:
        # Without a terminal Ray Data logs every progress update as a line; muxrec draws its own.
        ctx.enable_progress_bars = False
        if loud:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
    return started


# The raylet's notice that "N PYTHON worker processes have been started on node ..." (it counts the idle
# workers MIN_IDLE_WORKERS keeps, so muxrec's own settings raise it in ordinary runs). Ray's driver prints
# the raylet's messages to stdout, where this one broke a command's output (`muxrec bench pipeline --json`
# ended with it after its JSON line).
_WORKER_POOL_NOTICE = "worker processes have been started on node"


def _quiet_worker_pool_notice() -> None:
    """Send the raylet's worker-pool notice to the debug log instead of stdout; every other message the
    driver receives from Ray (a worker killed for memory, a failed task) is printed as before.

    Ray's driver prints them through `ray._private.worker.print_to_stdstream`, looked up at each call;
    there is no setting for it. If Ray renames that function, this does nothing."""
    from ray._private import worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "muxrec_quiet", False):
        return

    def print_to_stdstream(data, ignore_prefix):
        if data.get("pid") == "raylet":
            kept = [line for line in data["lines"] if _WORKER_POOL_NOTICE not in line]
            if len(kept) < len(data["lines"]):
                logging.getLogger("muxrec.ray").debug("raylet: %s", " ".join(data["lines"]))
                if not kept:
                    return
                data = {**data, "lines": kept}
        original(data, ignore_prefix)

    print_to_stdstream.muxrec_quiet = True
    ray_worker.print_to_stdstream = print_to_stdstream


DRAIN_ENV = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"  # Ray's seconds of draining a node on SIGTERM


def ray_up(num_cpus: int | None = None, timeout: float = 120.0) -> str:
    """Start a local Ray head bound to 127.0.0.1 that later muxrec commands join; return its address."""
    running = kept_ray_address()
    if running:
        return running
    port = _free_port()
    log_path = kept_ray_file().with_name("ray-up.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Every server of this Ray on 127.0.0.1 (see _LOOPBACK_ENV); the Ray Client server on a free port,
    # not the fixed 10001 that a second Ray on the machine would also want.
    cpus = num_cpus or os.cpu_count() or 1
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--node-ip-address={HOST}",
               f"--port={port}", f"--ray-client-server-port={_free_port()}", f"--num-cpus={cpus}",
               "--include-dashboard=false", "--disable-usage-stats"]
    # A token in ~/.ray (made if missing) guards the cluster. Ray's processes read their system config
    # from RAY_<name> variables too (`ray start` has no public flag for it).
    pool = {f"RAY_{name}": str(value) for name, value in _worker_pool_config(cpus).items()}
    # No drain on SIGTERM (Ray's default waits up to 30 s for the node to go idle, and after a training
    # run here it never did): `muxrec ray down` stops this Ray at once, as a user's own choice overrides.
    drain = {DRAIN_ENV: os.environ.get(DRAIN_ENV, "0")}
    env = {**os.environ, **_LOOPBACK_ENV, "RAY_AUTH_MODE": "token", **pool, **drain}
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
    """SIGTERM to `ray start --block` (it stops what it started), then SIGKILL to its process group.

    Only the leader gets the SIGTERM: it stops the raylet, GCS and the rest in order, ~4 s here. A
    SIGTERM to the whole group killed the raylet under it, and the leader then waited out its 30 s
    drain timeout (see ray_up) for a drain that could no longer happen."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # the leader is gone: whatever is left of its group gets the SIGTERM
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




def _process_tree(root: int) -> dict[int, str]:
    """{pid: start time} of `root`'s descendants, from /proc (empty where there is none)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: the parent's pid
        started[pid] = fields[19]  # start time: tells a reused pid apart
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = started[pid]
        todo += children.get(pid, [])
    return out


def _alive(pid: int, start: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == start


def shutdown_started_ray(timeout: float = 10.0) -> int:
    """Shut down the Ray this process started (ensure_ray returned True) and every process it spawned.

    ray.shutdown() stops GCS and raylet, but the raylet's agents (dashboard agent, runtime-env agent)
    and idle workers can outlive it for a while; whatever is left after `timeout` gets SIGTERM, then
    SIGKILL. Returns the number of processes that had to be signalled.
    """
    import ray

    tree = _process_tree(os.getpid())  # before shutdown: afterwards the orphans belong to init
    ray.shutdown()
    deadline = time.monotonic() + timeout
    while any(_alive(p, s) for p, s in tree.items()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p, s in tree.items() if _alive(p, s)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 3
        while any(_alive(p, tree[p]) for p in left) and time.monotonic() < end:
            time.sleep(0.1)
    return len(left)
