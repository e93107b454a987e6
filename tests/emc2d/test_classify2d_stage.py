"""The classify2d and import-dragonfly2d commands: outputs, resume, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from test_emc2d_data import make_frames  # noqa: E402

from spicompute.cli import main
from spicompute.io.averages import read_averages
from spicompute.io.frames import FrameSet, write_frames

sys.path.insert(0, str(Path(__file__).parent))

INTEROP = Path(__file__).resolve().parents[2].parent / "shared" / "interop" / "dragonfly"

SECTION = dict(n_models=3, n_rot=16, n_runs=2, subset_fraction=0.8, seed=0, max_iter=4,
               min_iter=2, tol=1e-3, device="cpu")


@pytest.fixture(scope="module")
def frames_file(tmp_path_factory):
    fs, labels, angles, fluence = make_frames(n_frames=120, photons=400.0, seed=4)
    counts = fs.counts.tolil()
    counts[3, :] = 0                                        # an empty frame
    fs = FrameSet(sp.csr_matrix(counts), fs.frame_id + 1000, fs.detector)
    path = tmp_path_factory.mktemp("frames") / "frames.h5"
    write_frames(path, fs, layout="sparse")
    return path


def _args(ws: Path, frames: Path, **params) -> list[str]:
    section = {**SECTION, **params}
    (ws / "params.yaml").write_text(yaml.safe_dump({"classify2d": section}))
    return ["classify2d", "--params", str(ws / "params.yaml"), "--frames", str(frames),
            "--out", str(ws / "data/averages.h5"),
            "--frames-table", str(ws / "results/frames.parquet"),
            "--part", str(ws / "results/parts/classify2d.parquet"),
            "--checkpoints", str(ws / "checkpoints/classify2d"),
            "--metrics", str(ws / "metrics/classify2d.json"),
            "--live", str(ws / "dvclive/classify2d"), "-q"]


def test_stage_writes_the_contract_outputs(frames_file, tmp_path):
    assert main(_args(tmp_path, frames_file)) == 0
    av = read_averages(tmp_path / "data/averages.h5")
    assert av.n_averages == 6
    np.testing.assert_array_equal(av.average_id, np.arange(6))
    np.testing.assert_array_equal(av.run, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(av.model, [0, 1, 2, 0, 1, 2])
    assert av.size % 2 == 1 and np.all(av.intensity >= 0) and av.valid.any()
    with h5py.File(tmp_path / "data/averages.h5") as h5:
        assert json.loads(h5.attrs["spicompute_params"])["n_models"] == 3
    frames = pd.read_parquet(tmp_path / "results/frames.parquet")
    assert list(frames.columns) == ["frame_id", "run", "average_id", "rotation_deg",
                                    "posterior_max", "scale"]
    per_run = round(0.8 * 119)
    assert (frames.run == 0).sum() == per_run and (frames.run == 1).sum() == per_run
    excluded = frames[frames.run == -1]
    assert excluded.frame_id.tolist() == [1003] and excluded.average_id.tolist() == [-1]
    kept = frames[frames.run >= 0]
    assert kept.frame_id.min() >= 1000 and 1003 not in kept.frame_id.values
    assert set(kept.average_id) <= set(range(6))
    assert np.all((kept.average_id // 3) == kept.run)
    assert kept.rotation_deg.between(0, 360).all() and kept.posterior_max.between(0, 1).all()
    # occupancies are the posterior sums over each run's frames
    part = pd.read_parquet(tmp_path / "results/parts/classify2d.parquet")
    assert list(part.columns) == ["average_id", "run", "model", "n_frames"]
    np.testing.assert_allclose(part.groupby("run").n_frames.sum(), per_run, rtol=1e-6)
    metrics = json.loads((tmp_path / "metrics/classify2d.json").read_text())
    assert metrics["n_excluded_frames"] == 1 and len(metrics["runs"]) == 2
    assert metrics["photon_sorting_f"] > 0 and all(r["photon_sorting_f"] > 0 for r in metrics["runs"])
    assert all(r["iterations"] >= 2 for r in metrics["runs"])
    tsv = tmp_path / "dvclive/classify2d/plots/metrics/run_1/loglik.tsv"
    rows = tsv.read_text().strip().splitlines()
    assert rows[0].split("\t")[:2] == ["step", "loglik"]
    assert len(rows) - 1 == metrics["runs"][1]["iterations"]
    assert sorted(p.name for p in (tmp_path / "checkpoints/classify2d").iterdir()) == [
        "run_000.h5", "run_001.h5"]
    # a second invocation resumes from the finished checkpoints: identical averages
    first = av.intensity.copy()
    assert main(_args(tmp_path, frames_file)) == 0
    np.testing.assert_array_equal(read_averages(tmp_path / "data/averages.h5").intensity, first)
    assert len(tsv.read_text().strip().splitlines()) == len(rows)


def test_n_models_auto_follows_the_frames_per_run(frames_file, tmp_path):
    """119 usable frames, 80 % per run = 95 frames; 20 per class -> 5 models per run."""
    assert main(_args(tmp_path, frames_file, n_models="auto", frames_per_class=20)) == 0
    av = read_averages(tmp_path / "data/averages.h5")
    assert av.n_averages == 10
    np.testing.assert_array_equal(av.model, [0, 1, 2, 3, 4] * 2)
    metrics = json.loads((tmp_path / "metrics/classify2d.json").read_text())
    assert metrics["resolved_n_models"] == 5 and "auto" in metrics["resolved_n_models_source"]
    frames = pd.read_parquet(tmp_path / "results/frames.parquet")
    assert set(frames.average_id[frames.run == 1]) <= set(range(5, 10))


def test_models_for_rounds_and_bounds():
    from spicompute.emc2d.run import EMCConfig

    assert EMCConfig(n_models=7).models_for(1000) == 7
    auto = EMCConfig(n_models="auto", frames_per_class=80)
    assert auto.models_for(6400) == 80 and auto.models_for(4800) == 60
    assert auto.models_for(100) == 2 and auto.models_for(1) == 1


@pytest.mark.parametrize("params, field", [
    (dict(n_models=500), "n_models"),
    (dict(n_rot=0), "n_rot"),
    (dict(subset_fraction=1.2), "subset_fraction"),
    (dict(subset_fraction=0), "subset_fraction"),
    (dict(n_models="many"), "n_models"),
    (dict(n_models="auto", frames_per_class=0), "frames_per_class"),
])
def test_bad_parameters_fail_cleanly(frames_file, tmp_path, capsys, params, field):
    assert main(_args(tmp_path, frames_file, **params)) == 2
    err = capsys.readouterr().err
    assert field in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data/averages.h5").exists()
    assert not (tmp_path / "results/frames.parquet").exists()


def test_missing_frames_file_is_named(tmp_path, capsys):
    assert main(_args(tmp_path, tmp_path / "nope.h5")) == 2
    assert "nope.h5" in capsys.readouterr().err


needs_interop = pytest.mark.skipif(not INTEROP.exists(), reason="interop samples absent")


@needs_interop
def test_import_dragonfly2d(tmp_path, capsys):
    args = ["import-dragonfly2d", "--output", str(INTEROP / "output_2d_010.h5"),
            "--detector", str(INTEROP / "det_sim.h5"), "--out", str(tmp_path / "av.h5"),
            "--frames-table", str(tmp_path / "f.parquet"), "--part", str(tmp_path / "p.parquet")]
    assert main(args) == 2
    assert "wavelength" in capsys.readouterr().err
    assert not (tmp_path / "av.h5").exists()
    assert main(args + ["--wavelength-nm", "0.62"]) == 0
    av = read_averages(tmp_path / "av.h5")
    assert av.intensity.shape == (20, 93, 93) and av.source == "dragonfly"
    np.testing.assert_allclose(av.dq_nm, 2 * np.pi / 0.62 / 250.0)
    frames = pd.read_parquet(tmp_path / "f.parquet")
    assert len(frames) == 3000 and frames.average_id.between(0, 19).all()
    part = pd.read_parquet(tmp_path / "p.parquet")
    np.testing.assert_allclose(part.n_frames.sum(), 3000, rtol=1e-3)


@needs_interop
def test_dragonfly_grid_and_angle_convention_fit_the_photons():
    """Frames are explained best by the imported averages under our convention
    (transpose of intens, angle negated) than under the alternatives."""
    from spicompute.emc2d.steps import bilinear_matrix
    from spicompute.io.dragonfly import read_dragonfly_photons
    from spicompute.io.dragonfly2d import read_dragonfly2d

    av, tab = read_dragonfly2d(INTEROP / "output_2d_010.h5", INTEROP / "det_sim.h5", 0.62)
    fs = read_dragonfly_photons(INTEROP / "photons.emc", INTEROP / "det_sim.h5", 0.62)
    coo = fs.counts[:600].tocoo()
    q = fs.detector.q_perp / av.dq_nm
    c = av.size // 2

    def loglik(inten, sign):
        a = sign * np.radians(tab.rotation_deg.to_numpy())[coo.row]
        qx, qy = q[coo.col, 0], q[coo.col, 1]
        pts = np.stack([np.cos(a) * qx + np.sin(a) * qy + c,
                        -np.sin(a) * qx + np.cos(a) * qy + c], axis=1)
        S = bilinear_matrix(pts, av.size).tocoo()
        k = tab.average_id.to_numpy()[coo.row][S.row]
        vals = np.bincount(S.row, S.data * inten.reshape(len(inten), -1)[k, S.col],
                           minlength=len(coo.row))
        return float(np.sum(coo.data * np.log(np.maximum(vals, 1e-6))))

    ours = loglik(av.intensity, 1)
    assert ours > loglik(av.intensity, -1)
    assert ours > loglik(av.intensity.transpose(0, 2, 1), 1)


def test_class_sorting_is_one_at_random_and_large_for_brightness_classes():
    from spicompute.emc2d.sorting import class_sorting_f, photon_sorting

    rng = np.random.default_rng(0)
    photons = rng.poisson(rng.lognormal(np.log(400), 0.4, 6000)) + 1
    random_classes = rng.integers(0, 30, photons.size)
    assert 0.2 < photon_sorting(photons, random_classes) < 2.5   # F(29, 5970): mean 1, sd 0.26
    by_brightness = np.digitize(photons, np.quantile(photons, np.linspace(0, 1, 31)[1:-1]))
    assert photon_sorting(photons, by_brightness) > 100
    # half the frames sorted, half at random: in between
    mixed = np.where(rng.random(photons.size) < 0.5, by_brightness, random_classes)
    assert 2 < photon_sorting(photons, mixed) < photon_sorting(photons, by_brightness)
    assert photon_sorting(photons, np.zeros(photons.size, int)) is None     # one class
    assert photon_sorting(photons[:3], np.arange(3)) is None                 # singletons only
    # a zero count is floored at one photon; the generic F takes any positive value
    assert np.isfinite(photon_sorting(np.r_[0, photons[1:]], by_brightness))
    assert class_sorting_f(photons * 1e-6, by_brightness) == pytest.approx(
        photon_sorting(photons, by_brightness))


def test_truth_sorting_separates_fluence_from_scattering_strength():
    """Photons = fluence x strength: classes sorted by strength (views, sizes) are not
    sorted by fluence, though their photon counts differ."""
    from spicompute.emc2d.sorting import photon_sorting, truth_sorting

    rng = np.random.default_rng(1)
    n = 6000
    fluence = np.exp(rng.uniform(np.log(0.3), 0.0, n))
    strength = rng.lognormal(0.0, 0.3, n)
    size = 40 * strength ** (1 / 6)
    truth = {"frame_id": np.arange(100, 100 + n), "fluence": fluence,
             "photons_expected": 700 * fluence * strength, "size_nm": size}
    by_strength = np.digitize(strength, np.quantile(strength, np.linspace(0, 1, 31)[1:-1]))
    photons = rng.poisson(truth["photons_expected"])
    order = rng.permutation(n)   # frame ids in another order than the truth's
    f = truth_sorting(truth, truth["frame_id"][order], by_strength[order])
    assert f["scattering_strength"] > 1000 and f["size_nm"] > 1000
    assert f["fluence"] < 2.5
    assert photon_sorting(photons, by_strength) > 50      # photons alone would call it brightness
    by_fluence = np.digitize(fluence, np.quantile(fluence, np.linspace(0, 1, 31)[1:-1]))
    g = truth_sorting(truth, truth["frame_id"], by_fluence)
    assert g["fluence"] > 1000 and g["scattering_strength"] < 2.5
