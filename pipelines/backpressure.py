"""Keep Ray Data's scheduler from spinning while its consumer is the slow side.

Ray Data's streaming executor loops over scheduling steps; a step waits (`ray.wait`, up to 0.1 s) on
the tasks it has running. When every operator is held back because the consumer has not taken what
was made (a training worker going through a large split), no task runs and the loop turns without
waiting. Measured in the 20M-row `muxrec bench pipeline` run: Ray Train's split coordinator, which
runs the executor for a streamed train split, took 0.7 of this machine's 2 CPUs through the whole
epoch, ~80% of its samples in the scheduling loop (py-spy), beside a training worker that got 1.07.

`SpinGuard` is an execution callback (`DataContext.custom_execution_callback_classes`, Ray Data's
hook for them): after each step it sleeps `PAUSE_S` while the consumer still has output waiting, so a
held-back executor costs a few percent of a CPU instead of most of one, and a consumer that waits for
data never waits for the guard. `use_spin_guard()` adds it to this process's DataContext; datasets
made afterwards carry it to wherever they execute (e.g. the split coordinator).
"""

from __future__ import annotations

import time

from ray.data import DataContext
from ray.data._internal.execution.execution_callback import ExecutionCallback

PAUSE_S = 0.005


class SpinGuard(ExecutionCallback):
    """Sleep PAUSE_S after a scheduling step while the consumer has output waiting (see the module)."""

    def on_execution_step(self, executor) -> None:
        if self.should_pause(executor):
            time.sleep(PAUSE_S)

    @staticmethod
    def should_pause(executor) -> bool:
        """Whether the executor's consumer has output waiting. `_consumer_idling` (Ray 2.60: the output
        queue is empty) is not public: where a Ray lacks it, never, rather than risk delaying a consumer."""
        idling = getattr(executor, "_consumer_idling", None)
        return idling is not None and not idling()


def use_spin_guard() -> None:
    """Add `SpinGuard` to the current DataContext (once)."""
    classes = DataContext.get_current().custom_execution_callback_classes
    if SpinGuard not in classes:
        classes.append(SpinGuard)
