"""Starting (or joining) Ray once per process, with settings that suit a laptop or CI box.

It lives in the core so that pipelines and services (and the serving launcher) share one set of
start-up settings. Ray is imported inside the functions: the core stays importable without it.
"""

from __future__ import annotations

import logging
import os
import sys


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS, else start a local one; no-op if Ray is running.

    The dashboard stays off (it would listen on a public interface by default), and Ray Data keeps
    row order so that a rerun over the same input writes the same files.
    """
    import ray
    from ray.data import DataContext

    from muxrec import log

    quiet = not log.verbose()
    if quiet:
        # Ray Data logs a failed task's error with its whole traceback before raising it, and the
        # caller prints that error as one line; `--verbose` shows all of it.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        level = logging.ERROR if quiet else logging.INFO  # start-up banners and warnings
        if address:
            ray.init(address=address, logging_level=level)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     dashboard_host="127.0.0.1", log_to_driver=True, logging_level=level)
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.raise_original_map_exception = True  # a DataError from derive() reaches the user as itself
    if not sys.stderr.isatty():
        # Without a terminal Ray Data logs every progress update as a line; keep logs readable.
        ctx.enable_progress_bars = False
        if not quiet:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
