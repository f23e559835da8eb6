"""Speed work must not change the numbers: a short run's metrics against a stored fixture.

tests/fixtures/numbers-{fast,torch}.* were written by the code before the issue-15 speed work
(commit 68e8735, torch's default two threads on the 2-core project machine) for the config
below. On that machine the current code reproduces them exactly; the tolerance leaves room only
for another CPU's float reassociation (other SIMD widths in matmuls and sums).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import vaebench
from vaebench import runs

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("engine", ["fast", "torch"])
def test_a_short_run_reproduces_the_stored_metrics(tmp_path, engine):
    # the fixtures' protocol: validation on the first 100 test images (data.val_from: test)
    res = vaebench.run({"name": f"numbers-{engine}", "seed": 3, "objective": {"k": 2},
                        "data": {"val_from": "test", "val_size": 100},
                        "train": {"steps": 300, "eval_every": 100, "flush_every": 100, "checkpoint_every": 200,
                                  "engine": engine}}, out=tmp_path, progress=False)
    got = runs.read_metrics(Path(res.path))
    want = pd.read_parquet(FIXTURES / f"numbers-{engine}.parquet")
    assert len(got) == len(want) == 304  # 300 train steps, validation at 0, 100, 200, 300
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), rtol=1e-5, atol=1e-5)
    final = json.loads((Path(res.path) / runs.FINAL).read_text())
    stored = json.loads((FIXTURES / f"numbers-{engine}.final.json").read_text())
    for split in ("train", "val"):
        for term in runs.TERMS:
            assert final[split][term] == pytest.approx(stored[split][term], rel=1e-5, abs=1e-5)
