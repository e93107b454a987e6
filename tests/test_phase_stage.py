"""The phase command: contract outputs, determinism, 2D averages, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from spicompute.cli import main
from spicompute.io.averages import AverageSet, write_averages
from spicompute.shapes import cube_intensity, sphere_intensity

SECTION = dict(n_starts=3, n_dm=150, n_er=50, seed=0, averages_2d="auto", averages_2d_count=2)
SIZE, EDGES = 25, (21.0, 27.0)   # cube edges (nm); dx = 3 nm
DX = 3.0
DQ = 2 * np.pi / (SIZE * DX)


def _q(size, dq, ndim):
    axis = (np.arange(size) - size // 2) * dq
    grids = list(np.meshgrid(*([axis] * ndim), indexing="ij"))
    if ndim == 2:
        grids.append(np.zeros_like(grids[0]))
    return np.stack(grids, -1)


def write_volumes(path: Path, *, size=SIZE, mutate=None):
    q = _q(size, DQ, 3)
    vols = [cube_intensity(q, e) for e in EDGES] + [sphere_intensity(q, 13.0)]
    qn = np.linalg.norm(q, axis=-1)
    observed = ((qn > 1.5 * DQ) & (qn <= (size // 2) * DQ)).astype(np.uint8)
    data = {"volumes/intensity": np.stack(vols).astype(np.float32),
            "volumes/z": np.array([[-1.0], [0.0], [1.0]]),
            "volumes/observed": observed}
    if mutate:
        mutate(data)
    with h5py.File(path, "w") as h5:
        for name, value in data.items():
            if value is not None:
                h5.create_dataset(name, data=value)
        h5.attrs["dq_nm"] = DQ
        h5.attrs["center"] = size // 2


def write_avg(path: Path):
    n, dq, edge = 33, 0.06, 30.0
    q = _q(n, dq, 2)
    base = cube_intensity(q, edge) / edge**2
    inten = np.stack([base * s for s in (1.0, 2.0, 0.5, 1.5)]).astype(np.float32)
    weight = np.ones_like(inten)
    weight[:, n // 2 - 1:n // 2 + 2, n // 2 - 1:n // 2 + 2] = 0   # beamstop
    avg = AverageSet(inten, weight, average_id=np.arange(4), run=[0, 0, 1, 1], model=[0, 1, 0, 1],
                     n_frames=[10.0, 30.0, 25.0, 5.0], dq_nm=dq, wavelength_nm=0.25)
    write_averages(path, avg)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("phase_in")
    write_volumes(d / "volumes.h5")
    write_avg(d / "averages.h5")
    return d


def _args(ws: Path, volumes: Path, averages: Path, **params) -> list[str]:
    (ws / "params.yaml").write_text(yaml.safe_dump({"phase": {**SECTION, **params}}))
    return ["phase", "--params", str(ws / "params.yaml"), "--volumes", str(volumes),
            "--averages", str(averages), "--out", str(ws / "data/phased.h5"),
            "--table", str(ws / "results/volumes.parquet"),
            "--metrics", str(ws / "metrics/phase.json"), "-q"]


def _outputs(ws: Path):
    return [ws / "data/phased.h5", ws / "results/volumes.parquet", ws / "metrics/phase.json"]


@pytest.mark.slow
@pytest.mark.slow
def test_stage_writes_the_contract_outputs_deterministically(inputs, tmp_path):
    args = _args(tmp_path, inputs / "volumes.h5", inputs / "averages.h5")
    assert main(args) == 0
    with h5py.File(tmp_path / "data/phased.h5") as h5:
        dens = h5["phased/density"][()]
        assert dens.shape == (3, SIZE, SIZE, SIZE) and dens.dtype == np.float32
        assert h5["phased/support"].shape == (3, SIZE, SIZE, SIZE)
        assert h5["phased/support"].dtype == np.uint8
        assert h5["phased/prtf"].shape == (3, SIZE // 2 + 1)
        np.testing.assert_allclose(h5["phased/prtf_q_nm"][()], np.arange(SIZE // 2 + 1) * DQ)
        np.testing.assert_array_equal(h5["phased/z"][()], [[-1.0], [0.0], [1.0]])
        assert h5.attrs["dx_nm"] == pytest.approx(DX)
        assert json.loads(h5.attrs["spicompute_params"])["n_dm"] == 150
        assert h5.attrs["spicompute_stage"] == "phase"
        d2 = h5["averages2d/density"][()]
        assert d2.shape == (2, 33, 33)
        # auto: the most occupied average of each run (ids 1 and 2), most occupied first
        assert h5["averages2d/average_id"][()].tolist() == [1, 2]
        assert h5["averages2d/dx_nm"][()] == pytest.approx(2 * np.pi / (33 * 0.06))
        # the 2D square with intensity x2 (id 1) and x0.5 (id 2): densities in ratio sqrt(4)
        assert d2[0].sum() / d2[1].sum() == pytest.approx(2.0, rel=0.05)
    table = pd.read_parquet(tmp_path / "results/volumes.parquet")
    assert list(table.columns) == ["volume_index", "z_1", "particle_volume_nm3",
                                   "particle_volume_threshold_nm3", "particle_volume_intensity_nm3",
                                   "porod_tail_share", "particle_volume_half_max_nm3",
                                   "support_voxels", "prtf_resolution_nm", "prtf_at_data_limit",
                                   "n_starts_kept", "final_error", "converged", "compact",
                                   "forward_ratio", "tight_start"]
    assert table.volume_index.tolist() == [0, 1, 2]
    # cubes 7 and 9 voxels across, a sphere 9 across: the invariant estimate is sub-voxel
    true = np.r_[np.array(EDGES) ** 3, 4 / 3 * np.pi * 13.0**3]
    np.testing.assert_allclose(table.particle_volume_nm3, true, rtol=0.05)
    # the paper's 1e-4-of-mass voxel count also counts the blurred rim at this size
    thr = table.particle_volume_threshold_nm3.to_numpy()
    assert np.all(thr[:2] > np.array(EDGES) ** 3) and np.all(thr[:2] < 1.7 * np.array(EDGES) ** 3)
    # the first observed shell (q = 0.17 rad/nm) is past the Guinier range of these particles:
    # the intensity-only cross-check declines rather than guess
    assert table.particle_volume_intensity_nm3.isna().all()
    assert (table.support_voxels > 0).all() and (table.final_error < 0.05).all()
    assert table.converged.dtype == bool and table.converged.all()
    assert np.all(table.prtf_resolution_nm >= 2 * np.pi / (np.sqrt(3) * (SIZE // 2) * DQ))
    # noiseless: the starts agree up to q_max, the resolution is the flagged data limit
    assert table.prtf_at_data_limit.dtype == bool and table.prtf_at_data_limit.all()
    np.testing.assert_allclose(table.prtf_resolution_nm, 2 * np.pi / ((SIZE // 2) * DQ))
    assert (table.n_starts_kept >= 2).all()
    metrics = json.loads((tmp_path / "metrics/phase.json").read_text())
    assert metrics["n_volumes"] == 3 and metrics["n_averages_2d"] == 2
    assert metrics["n_converged"] == 3
    assert metrics["particle_volume_nm3_min"] == pytest.approx(table.particle_volume_nm3.min())
    # same seed -> identical outputs
    first = dens.copy()
    assert main(args) == 0
    with h5py.File(tmp_path / "data/phased.h5") as h5:
        np.testing.assert_array_equal(h5["phased/density"][()], first)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "results/volumes.parquet"), table)


def test_explicit_empty_2d_selection_needs_no_averages_file(inputs, tmp_path):
    args = _args(tmp_path, inputs / "volumes.h5", tmp_path / "absent.h5",
                 averages_2d=[], n_dm=10, n_er=5, n_starts=2)
    assert main(args) == 0
    with h5py.File(tmp_path / "data/phased.h5") as h5:
        assert h5["averages2d/average_id"].shape == (0,)


def test_a_volume_above_max_error_is_flagged_and_left_out_of_the_metrics(inputs, tmp_path, caplog):
    """A retrieval stopped early (2 DM + 1 ER) against a tight threshold: flagged, not averaged in."""
    args = _args(tmp_path, inputs / "volumes.h5", tmp_path / "absent.h5", averages_2d=[],
                 n_dm=2, n_er=1, n_starts=2, max_error=0.02)
    assert main(args) == 0
    table = pd.read_parquet(tmp_path / "results/volumes.parquet")
    metrics = json.loads((tmp_path / "metrics/phase.json").read_text())
    np.testing.assert_array_equal(table.converged, table.final_error <= 0.02)
    assert (~table.converged).any()
    assert metrics["n_converged"] == int(table.converged.sum()) and metrics["n_volumes"] == 3
    good = table.particle_volume_nm3[table.converged]
    assert metrics["particle_volume_nm3_min"] == (pytest.approx(good.min()) if len(good) else None)
    assert "did not converge" in caplog.text


def _drop(name):
    def mutate(data):
        data[name] = None
    return mutate


def _nan(data):
    data["volumes/intensity"][1, 3, 4, 5] = np.nan


@pytest.mark.parametrize("size, mutate, field", [
    (SIZE, _drop("volumes/observed"), "volumes/observed"),
    (SIZE, _drop("volumes/intensity"), "volumes/intensity"),
    (24, None, "volumes/intensity"),                   # even L: no centre voxel
    (SIZE, _nan, "volumes/intensity"),
])
def test_bad_volumes_fail_with_one_line_and_no_output(inputs, tmp_path, capsys, size, mutate, field):
    bad = tmp_path / "bad_volumes.h5"
    write_volumes(bad, size=size, mutate=mutate)
    assert main(_args(tmp_path, bad, inputs / "averages.h5", n_dm=10, n_er=5)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad_volumes.h5" in err and field in err
    assert not any(p.exists() for p in _outputs(tmp_path))


def test_unknown_average_and_bad_parameter_are_named(inputs, tmp_path, capsys):
    assert main(_args(tmp_path, inputs / "volumes.h5", inputs / "averages.h5",
                      averages_2d=[1, 99])) == 2
    assert "phase.averages_2d" in capsys.readouterr().err
    assert main(_args(tmp_path, inputs / "volumes.h5", inputs / "averages.h5", beta=0)) == 2
    assert "phase.beta" in capsys.readouterr().err
    assert main(_args(tmp_path, inputs / "volumes.h5", inputs / "averages.h5", n_stars=3)) == 2
    assert "phase.n_stars" in capsys.readouterr().err
    assert not any(p.exists() for p in _outputs(tmp_path))


@pytest.mark.parametrize("value", [0, -2, 2.5, "four", True])
def test_bad_number_of_starts_is_one_line_naming_the_parameter(inputs, tmp_path, capsys, value):
    assert main(_args(tmp_path, inputs / "volumes.h5", inputs / "averages.h5", n_starts=value)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "phase.n_starts" in err
    assert not any(p.exists() for p in _outputs(tmp_path))


def test_a_grid_too_small_for_the_particle_is_refused(tmp_path, capsys):
    """A 45 nm cube in a 75 nm box (< 2x oversampling): box, extent and the fix in one line."""
    bad = tmp_path / "small_box.h5"

    def bigger(data):
        q = _q(SIZE, DQ, 3)
        data["volumes/intensity"][1] = cube_intensity(q, 45.0)

    write_volumes(bad, mutate=bigger)
    assert main(_args(tmp_path, bad, tmp_path / "absent.h5", averages_2d=[])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "vae.preset" in err and "vae.q_max_nm" in err and "75 nm box" in err and "volume 1" in err
    assert "small_box.h5" in err
    assert not any(p.exists() for p in _outputs(tmp_path))


@pytest.mark.slow
def test_a_volume_whose_starts_all_spread_is_flagged_not_converged(inputs, tmp_path, monkeypatch, caplog):
    """Spread starts (|F(0)|^2 far above the data's Guinier I(0)) are no solution whatever their
    Fourier error: with a data I(0) far below every start's |F(0)|^2, every volume is flagged."""
    import spicompute.phasing as phasing

    monkeypatch.setattr(phasing, "guinier_forward", lambda *a, **k: 1e-6)
    assert main(_args(tmp_path, inputs / "volumes.h5", inputs / "averages.h5")) == 0
    table = pd.read_parquet(tmp_path / "results/volumes.parquet")
    assert not table["compact"].any() and not table["converged"].any() and table["tight_start"].all()
    assert (table["forward_ratio"] > phasing.SPREAD_FORWARD_RATIO).all()
    assert "spread over the field of view" in caplog.text
