"""Progress of a Ray Train job, from rank 0 to the driver, through a file.

Ray's worker output reaches the terminal only with --verbose (muxrec.ray_env), so a worker that wants the user
to see a line appends a JSON event to a file in the run folder, and the driver follows that file from a thread
and shows what it reads (pipelines/train.py: a progress bar per epoch and a line per epoch; the ALIGN job: lines).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from muxrec.errors import train_worker_error


class ProgressLog:
    """Events appended to `path`, one JSON object per line with its wall-clock time `t`; a no-op unless enabled
    (only rank 0 writes)."""

    def __init__(self, path: str | Path, enabled: bool):
        self.file = open(path, "a", encoding="utf-8") if enabled else None

    def emit(self, **event: Any) -> None:
        if self.file is not None:
            self.file.write(json.dumps({**event, "t": time.time()}) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class ProgressFollower:
    """Calls `show(event)` for every event appended to `path`, from a driver thread, until `stop()` (which reads
    the file once more, so no event is lost). Use as a context manager around `trainer.fit()`."""

    def __init__(self, path: str | Path, show: Callable[[dict[str, Any]], None], poll_seconds: float = 0.2):
        self.path, self.show, self.poll = Path(path), show, poll_seconds
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="muxrec-progress", daemon=True)

    def start(self) -> ProgressFollower:
        self.thread.start()
        return self

    def __enter__(self) -> ProgressFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        offset, pending = 0, ""
        while True:
            finished = self.done.is_set()
            if self.path.exists():
                with self.path.open(encoding="utf-8") as f:
                    f.seek(offset)
                    pending += f.read()
                    offset = f.tell()
                *lines, pending = pending.split("\n")
                for line in lines:
                    self.show(json.loads(line))
            if finished:
                return
            self.done.wait(self.poll)


def fit_trainer(trainer: Any) -> Any:
    """`trainer.fit()` of a Ray Train trainer; an error of ours raised in a worker is re-raised as itself
    (one line for the user), not inside Ray's wrapper."""
    try:
        return trainer.fit()
    except Exception as err:
        ours = train_worker_error(err)
        if ours is not None:
            raise ours from None
        raise
