"""How much muxrec prints: its own progress lines by default; Ray's internals and tracebacks with
`--verbose` (or MUXREC_LOG_LEVEL=debug). Errors are never silenced.

The level travels in the environment, so Ray workers started from this process see it too.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

ENV = "MUXREC_LOG_LEVEL"


def verbose() -> bool:
    """True when the user asked for everything (--verbose or MUXREC_LOG_LEVEL=debug)."""
    return os.environ.get(ENV, "").strip().lower() == "debug"


def set_verbose(on: bool) -> None:
    if on:
        os.environ[ENV] = "debug"


def say(message: str) -> None:
    """One progress line for people, on stderr (stdout is kept for results and JSON)."""
    print(f"[muxrec] {message}", file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Unless verbose: hide library chatter that is not ours (warnings about other libraries' APIs,
    torch's notes on torchrec's tracing helpers). Errors and exceptions are untouched."""
    if verbose():
        return
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
