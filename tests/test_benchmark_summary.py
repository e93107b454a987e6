"""benchmarks/run_all.py: every figure next to its reference, as a ratio (>= 1: better)."""

from __future__ import annotations

import pytest

from tests.conftest import load_benchmark


def test_ratios_point_the_right_way_for_times_and_rates():
    m = load_benchmark("run_all")
    # a measurement in the shape bench_dashboard.py writes (made here: the test must not
    # depend on which measured files a checkout happens to hold)
    dash = {"cores": 2, "volume_step_27": {"seconds": [0.9, 1.1, 0.8], "median_s": 0.9, "target_s": 1.0},
            "volume_step_64": {"seconds": [1.0, 1.2, 1.1], "median_s": 1.1, "target_s": 2.0}}
    rows = {r[0]: r for r in m.summary_rows("dashboard", dash)}
    slider = rows["dashboard volume_step_27"]
    assert slider[3] == 1.0 and slider[5] == pytest.approx(1.0 / dash["volume_step_27"]["median_s"])
    cc = m.summary_rows("ccmatrix", {"numpy_sgemm_peak_gflops": 50.0, "cases": [
        {"case": "M=1000", "backend": "numpy", "gflops": 40.0, "seconds": 20.0}]})
    assert cc[0][5] == pytest.approx(0.8)          # a rate: measured / peak
    assert cc[1][5] == pytest.approx(0.5)          # a time: target 10 s / measured 20 s
    bf16 = {r[0]: r for r in m.summary_rows("ccmatrix", {"numpy_sgemm_peak_gflops": 50.0, "cases": [
        {"case": "M=1000", "backend": "bf16", "block": 16, "gflops": 100.0, "seconds": 8.0, "max_abs_dcc": 1e-3,
         "share_same_angles": 0.999, "rescored_fraction": 0.02}]})}
    assert bf16["CC matrix of 1,000 averages (bf16, block 16)"][5] == pytest.approx(1.25)
    assert bf16["CC matrix M=1000 bf16 screen: max |dCC| vs float32"][5] == pytest.approx(2.0)   # half the tolerance
    assert bf16["CC matrix M=1000 bf16 screen: pairs with the same best angles"][5] > 1
    same = m.summary_rows("ccmatrix", {"cases": [{"case": "M=1000", "backend": "bf16", "seconds": 5.0,
                                                  "max_abs_dcc": 0.0, "share_same_angles": 1.0}]})
    row = next(r for r in same if "max |dCC|" in r[0])
    assert row[0].endswith("(identical)") and row[5] is None     # no 2e9 "ratio" for an exact result
    phase = m.summary_rows("phase", [{"size": 41, "backend": "numpy", "seconds": 6.0},
                                     {"size": 41, "backend": "torch", "device": "cpu", "seconds": 30.0}])
    assert phase[1][3] == 6.0 and phase[1][5] == pytest.approx(0.2)
    table = m.format_summary([("phase", *phase[1], 1.0, 2.0)])
    assert "6 s/volume (numpy, same run)" in table and "| 0.2 |" in table and "1.0 → 2.0" in table
    assert m.summary_rows("stream", {})[0][0] == "(see the JSON)"
    vae = m.summary_rows("vae", {"rows": [{"preset": "demo", "device": "cpu", "seconds_per_batch": 0.5},
                                          {"preset": "high", "error": "failed (out of memory?)"}]})
    assert [r[0] for r in vae] == ["VAE demo batch (cpu)"] and vae[0][1] == 0.5


def test_dask_and_pruning_ratios_are_read_against_their_targets():
    m = load_benchmark("run_all")
    rows = [{"stage": "ccmatrix", "size": 1000, "scheduler": "", "seconds": 16.0},
            {"stage": "ccmatrix", "size": 500, "scheduler": "", "seconds": 4.0},
            {"stage": "ccmatrix", "size": 1000, "scheduler": "local:1", "seconds": 17.6},
            {"stage": "ccmatrix", "size": 1000, "scheduler": "local:2", "seconds": 13.0}]
    got = {r[0]: r for r in m.summary_rows("scaling", {"rows": rows})}
    one, two = got["Dask local:1 / in-process, ccmatrix"], got["Dask local:2 / in-process, ccmatrix"]
    assert one[1] == pytest.approx(1.1) and one[5] == pytest.approx(1.0)       # at the target
    assert two[1] == pytest.approx(13 / 16) and two[5] < 1                      # misses 0.65
    emc = m.summary_rows("emc2d", {"frames": 10, "median_seconds_per_iteration": 1.0,
                                   "pruning": {"late_ratio_median": 0.6}})
    assert emc[1][0].startswith("late pruned") and emc[1][5] == pytest.approx(0.5)
