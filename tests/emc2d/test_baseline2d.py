"""The naive rotation-invariant baseline and shape purity (the yardstick for 2D EMC classes)."""

import json

import numpy as np
import pytest

from spicompute.emc2d.baseline import naive_classes, ring_features, shape_labels, shape_purity


def test_labels_and_purity_arithmetic():
    labels = shape_labels(["cube", "melt", "melt", "melt", "sphere", "rod"], [0, 0.1, 0.5, 0.9, 1, 0])
    assert labels.tolist() == ["cube-like", "cube-like", "intermediate", "sphere-like", "sphere-like",
                               "contaminant"]
    assert shape_purity([0, 0, 0, 1, 1, 1], ["a", "a", "b", "b", "b", "b"]) == pytest.approx(5 / 6)
    assert shape_purity(np.arange(6), list("abcdef")) == 1.0


@pytest.mark.parametrize("photons,floor", [(400, 0.62), (2000, 0.8)])  # chance: 0.5
def test_naive_clustering_separates_cubes_from_spheres(photons, floor):
    from spicompute.simulation.simulate import SimulationParams, simulate
    from tests.conftest import small_simulation_params

    p = SimulationParams.from_dict(small_simulation_params(
        n_frames=240, photons_mean=photons, fractions={"cube": 0.5, "sphere": 0.5}))
    frames, truth = simulate(p, progress=False)
    x = ring_features(frames.counts, frames.detector)
    assert x.shape[0] == 240 and np.isfinite(x).all()
    labels = shape_labels(truth.class_name, truth.melt_t)
    classes = naive_classes(frames.counts, frames.detector, 4, seed=0)
    assert shape_purity(classes, labels) > floor


def test_classify2d_reports_purity_against_the_baseline(tmp_path, small_simulation):
    from spicompute.cli import main
    from spicompute.io.frames import write_frames
    from spicompute.io.truth import write_truth

    frames, truth, _ = small_simulation
    write_frames(tmp_path / "frames.h5", frames)
    write_truth(tmp_path / "truth.h5", truth)
    (tmp_path / "params.yaml").write_text("classify2d:\n  n_models: 6\n  n_rot: 12\n  n_runs: 2\n"
                                          "  max_iter: 4\n  min_iter: 4\n  device: cpu\n")
    t = str(tmp_path)
    rc = main(["classify2d", "--params", f"{t}/params.yaml", "-q", "--frames", f"{t}/frames.h5",
               "--out", f"{t}/avg.h5", "--frames-table", f"{t}/f.parquet", "--part", f"{t}/p.parquet",
               "--checkpoints", "", "--metrics", f"{t}/m.json", "--live", "", "--truth", f"{t}/truth.h5"])
    assert rc == 0
    purity = json.loads((tmp_path / "m.json").read_text())["shape_purity"]
    assert len(purity["emc_per_run"]) == 2 and 0 < purity["emc_mean"] <= 1 and 0 < purity["naive_baseline"] <= 1
    assert purity["emc_minus_baseline"] == pytest.approx(purity["emc_mean"] - purity["naive_baseline"], abs=1e-3)
