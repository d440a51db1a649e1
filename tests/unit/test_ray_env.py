"""Ray start-up settings that need no running Ray."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.data.context import ShuffleStrategy

from muxrec.errors import ConfigError
from muxrec.pipelines.sources import estimated_rows
from muxrec.ray_env import SHUFFLE_ENV, SORT_SHUFFLE_MAX_ROWS, shuffle_strategy
from muxrec.spec import SourceSpec


def test_small_jobs_shuffle_by_sorting_large_ones_by_hashing_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv(SHUFFLE_ENV, raising=False)
    assert shuffle_strategy() is ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    assert shuffle_strategy(SORT_SHUFFLE_MAX_ROWS) is ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    assert shuffle_strategy(SORT_SHUFFLE_MAX_ROWS + 1) is ShuffleStrategy.SHUFFLE_V2
    monkeypatch.setenv(SHUFFLE_ENV, "shuffle_v2")
    assert shuffle_strategy(10) is ShuffleStrategy.SHUFFLE_V2


def test_an_unknown_shuffle_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(SHUFFLE_ENV, "fast")
    with pytest.raises(ConfigError, match=r"MUXREC_RAY_SHUFFLE: expected one of .*sort_shuffle_pull_based.*, got 'fast'"):
        shuffle_strategy()


def test_rows_are_estimated_without_reading_them(tmp_path):
    assert estimated_rows(SourceSpec(loader="synthetic", options={"rows": 1234})) == 1234
    folder = tmp_path / "rows"
    folder.mkdir()
    for i, n in enumerate((300, 700)):
        pq.write_table(pa.table({"x": list(range(n))}), folder / f"{i}.parquet")
    assert estimated_rows(SourceSpec(loader="parquet", path=str(folder))) == 1000
    (tmp_path / "a.csv").write_text("x\n" + "1\n" * 1000)
    assert estimated_rows(SourceSpec(loader="csv", path=str(tmp_path / "a.csv"))) == 2002 // 100


def test_a_local_ray_keeps_at_least_min_idle_workers_unless_the_user_says(monkeypatch):
    from muxrec.ray_env import MIN_IDLE_WORKERS, _worker_pool_config

    monkeypatch.delenv("RAY_num_workers_soft_limit", raising=False)
    assert _worker_pool_config(2) == {"num_workers_soft_limit": MIN_IDLE_WORKERS}
    assert _worker_pool_config(64) == {"num_workers_soft_limit": 64}  # Ray's own default there
    monkeypatch.setenv("RAY_num_workers_soft_limit", "3")
    assert _worker_pool_config(2) == {}


def test_the_raylets_worker_pool_notice_goes_to_the_log_and_its_other_messages_to_stdout(monkeypatch, capsys):
    """Ray's driver prints the raylet's messages to stdout; the worker-pool notice there broke the JSON last
    line of `muxrec bench pipeline --json`. Quiet mode keeps it off stdout and prints the rest as before."""
    from ray._private import worker as ray_worker

    from muxrec.ray_env import _quiet_worker_pool_notice

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # put back afterwards
    _quiet_worker_pool_notice()
    _quiet_worker_pool_notice()  # a second call does not wrap twice
    assert getattr(ray_worker.print_to_stdstream, "muxrec_quiet", False)
    notice = ("WARNING: 10 PYTHON worker processes have been started on node: 682e with address: 127.0.0.1, "
              "which is 5x the maximum expected startup concurrency (2).")
    killed = "A worker died or was killed while executing a task by an unexpected system error (test_ray_env)."
    ray_worker.print_to_stdstream({"lines": [notice], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert capsys.readouterr().out == ""
    ray_worker.print_to_stdstream({"lines": [notice, killed], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    out = capsys.readouterr().out
    assert killed in out and "worker processes have been started" not in out
