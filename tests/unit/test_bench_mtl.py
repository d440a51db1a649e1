"""`muxrec bench mtl` on a small synthetic funnel: rows per model, the single-task baselines, the report."""

from __future__ import annotations

import json

import pytest
import yaml

from muxrec.benchmarks.mtl import bench_mtl, single_task_spec, summary, with_blend
from muxrec.errors import ConfigError

from tests.conftest import CONFIGS
from tests.helpers import synthetic_spec


def test_single_task_spec_keeps_one_label_without_its_parent_and_an_equal_blend_by_default():
    spec = synthetic_spec(rows=500)
    alone = single_task_spec(spec, "conversion")
    assert alone.label_names == ["conversion"] and alone.labels[0].parent is None and not alone.blend
    assert with_blend(spec).task_blend == {"click": 0.5, "conversion": 0.5}
    assert with_blend(alone) is alone


def test_bench_mtl_writes_rows_a_table_and_a_plot(tmp_path):
    configs = tmp_path / "configs"
    (configs / "models").mkdir(parents=True)
    (configs / "small.yaml").write_text(yaml.safe_dump(synthetic_spec(rows=2000).model_dump(mode="json",
                                                                                            exclude_defaults=True)))
    for name in ("esmm", "mmoe", "deepfm"):
        model = yaml.safe_load((CONFIGS / "models" / f"{name}.yaml").read_text())
        model["model"].update(embedding_dim=4, hidden_units=[8])
        model["train"].update(epochs=2, batch_size=256)
        (configs / "models" / f"{name}.yaml").write_text(yaml.safe_dump(model))
    out = tmp_path / "docs"
    rows = list(bench_mtl("small", ["esmm", "mmoe"], ["deepfm"], [1, 2], configs, out))
    assert [r["model"] for r in rows] == ["esmm", "mmoe", "deepfm (click alone)", "deepfm (conversion alone)"]
    esmm, mmoe = rows[0], rows[1]
    assert set(esmm["test_auc"]) == {"click", "conversion", "conversion_given_click"}
    assert set(rows[3]["test_auc"]) == {"conversion"}  # alone: no parent, so no conditional figure
    for r in rows:
        for mean, std in r["test_auc"].values():
            assert 0.3 < mean < 1.0 and std >= 0
    # ESMM chains the funnel: never P(conversion) > P(click); MMoE's experts have gates.
    assert all(run["funnel"]["conversion"]["rows_over_parent"] == 0 for run in esmm["per_seed"])
    assert set(mmoe["per_seed"][0]["experts"]) == {"click", "conversion"}
    s = summary(rows)
    assert s["best"]["conversion"]["vs_single"] == pytest.approx(
        max(esmm["test_auc"]["conversion"][0], mmoe["test_auc"]["conversion"][0]) - s["single_task"]["conversion"],
        abs=1e-5)
    report = (out / "mtl-small.md").read_text()
    assert report.count("| esmm |") == 1 and "deepfm (conversion alone)" in report and "mmoe `click`" in report
    assert (out / "mtl-small.png").stat().st_size > 10_000
    saved = json.loads((out / "results" / "mtl-small-esmm.json").read_text())
    assert saved["test_auc"] == esmm["test_auc"]
    (configs / "single.yaml").write_text(yaml.safe_dump(single_task_spec(synthetic_spec(rows=500), "click").model_dump(
        mode="json", exclude_defaults=True)))
    with pytest.raises(ConfigError, match="several labels"):
        next(bench_mtl("single", ["esmm"], ["deepfm"], [1], configs, None))
