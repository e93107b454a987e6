"""The ccmatrix and embed stages end to end (CLI), Dask, and a realism check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.spatial.transform import Rotation

from spicompute.cli import main
from spicompute.landscape.commonlines import cc_matrix, read_ccmatrix
from spicompute.io.averages import AverageSet, write_averages

from test_commonlines import SIZE, beamstop_valid, lines_of, make_object, slices


@pytest.fixture(scope="module")
def averages_file(tmp_path_factory):
    rng = np.random.default_rng(7)
    imgs = np.concatenate([slices(make_object(rng), Rotation.random(12, random_state=s))
                           for s in (1, 2)]).astype(np.float32)
    m = len(imgs)
    weight = beamstop_valid(m).astype(np.float32)
    avg = AverageSet(imgs * weight, weight, np.arange(m), np.repeat([0, 1], m // 2),
                     np.tile(np.arange(m // 2), 2), rng.uniform(10, 50, m), 0.04, 0.2066)
    folder = tmp_path_factory.mktemp("clstage")
    path = folder / "averages.h5"
    write_averages(path, avg)
    return folder, avg


def write_params(folder, **overrides):
    params = {"ccmatrix": {"n_angles": 90, "block": 5}, "embed": {"tsne_perplexity": 5.0}}
    for key, value in overrides.items():
        sec, _, name = key.partition("__")
        params[sec][name] = value
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_ccmatrix_and_embed_stages(averages_file):
    folder, avg = averages_file
    params = write_params(folder)
    rc = main(["ccmatrix", "--params", str(params), "-q", "--averages", str(folder / "averages.h5"),
               "--out", str(folder / "cc.h5"), "--metrics", str(folder / "cc.json")])
    assert rc == 0
    ccf = read_ccmatrix(folder / "cc.h5")
    m = avg.n_averages
    assert ccf.cc.shape == (m, m) and ccf.cc.dtype == np.float32
    assert np.array_equal(ccf.cc, ccf.cc.T) and np.all(np.diag(ccf.cc) == 1)
    assert ccf.angle_a.dtype == np.int16 and np.array_equal(ccf.angle_a, ccf.angle_b.T)
    assert len(ccf.angles_rad) == 90 and ccf.attrs["normalisation"] == "radial"
    assert ccf.attrs["spicompute_stage"] == "ccmatrix"
    assert 0 < ccf.q_nm[0] < ccf.q_nm[-1] <= (SIZE // 2) * 0.04
    # the file holds what the library computes
    radii = ccf.q_nm / 0.04  # the q-range the stage resolved (coverage and expected counts)
    ref = cc_matrix(lines_of(avg.intensity, avg.valid, n_lines=90, radii=radii)[0], block=5)
    np.testing.assert_allclose(ccf.cc, ref.cc, atol=1e-6)
    metrics = json.loads((folder / "cc.json").read_text())
    assert metrics["n_averages"] == m and metrics["gflops"] > 0
    assert metrics["cc_offdiag_p95"] - metrics["cc_offdiag_p05"] > 0.1

    rc = main(["embed", "--params", str(params), "-q", "--ccmatrix", str(folder / "cc.h5"),
               "--part", str(folder / "embed.parquet"), "--out", str(folder / "emb.h5"),
               "--metrics", str(folder / "embed.json")])
    assert rc == 0
    table = pd.read_parquet(folder / "embed.parquet")
    expected = ["average_id"] + [f"{m_}_{k}" for m_ in ("pc", "isomap", "spectral", "tsne")
                                 for k in (1, 2, 3)] + ["cluster", "cluster_prob", "landscape_usable", "size_scale"]
    assert list(table.columns) == expected
    assert np.array_equal(table["average_id"], avg.average_id)
    assert table.notna().all().all()
    em = json.loads((folder / "embed.json").read_text())
    assert len(em["explained_variance_ratio"]) == 3 and em["n_clusters"] >= 2
    # the two objects end up in different clusters
    labels = table["cluster"].to_numpy()
    assert len(set(labels[:12]) & set(labels[12:])) == 0 or em["n_clusters"] > 2
    # rerun: identical (fixed seeds)
    main(["embed", "--params", str(params), "-q", "--ccmatrix", str(folder / "cc.h5"),
          "--part", str(folder / "embed2.parquet"), "--out", str(folder / "emb2.h5"),
          "--metrics", str(folder / "embed2.json")])
    pd.testing.assert_frame_equal(table, pd.read_parquet(folder / "embed2.parquet"))


def test_stage_errors_leave_no_output(averages_file, tmp_path, capsys):
    folder, _ = averages_file
    out = tmp_path / "cc.h5"
    params = write_params(tmp_path, ccmatrix__normalisation="sqrt")
    rc = main(["ccmatrix", "--params", str(params), "-q", "--averages", str(folder / "averages.h5"),
               "--out", str(out), "--metrics", str(tmp_path / "m.json")])
    assert rc == 2 and not out.exists()
    assert "normalisation" in capsys.readouterr().err
    params = write_params(tmp_path)
    rc = main(["ccmatrix", "--params", str(params), "-q", "--averages", str(tmp_path / "nope.h5"),
               "--out", str(out), "--metrics", str(tmp_path / "m.json")])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "nope.h5" in err and len(err.strip().splitlines()) == 1
    rc = main(["embed", "--params", str(params), "-q", "--ccmatrix", str(folder / "averages.h5"),
               "--part", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "e.h5"),
               "--metrics", str(tmp_path / "e.json")])
    assert rc == 2 and not (tmp_path / "e.parquet").exists()
    assert "cc" in capsys.readouterr().err


@pytest.mark.slow
def test_dask_scheduler_equals_in_process(averages_file):
    _, avg = averages_file
    lines = lines_of(avg.intensity, avg.valid, n_lines=60)[0]
    ref = cc_matrix(lines, block=3)
    res = cc_matrix(lines, block=3, scheduler="local:2", band_blocks=2)
    assert np.array_equal(res.cc, ref.cc)
    assert np.array_equal(res.angle_a, ref.angle_a)
    assert np.array_equal(res.angle_b, ref.angle_b)


@pytest.mark.slow
def test_landscape_of_simulated_shapes_tracks_melt_and_flags_contaminants():
    """Noise-free slices of the simulator's shapes: cube->sphere melt family
    (t uniform) plus dimers/rods; CLPCA with the default normalisation has a
    component following t (Spearman) and separates contaminants."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from spicompute.landscape.commonlines import auto_radius_range, normalise_lines, polar_lines
    from spicompute.landscape.embedding import clpca
    from spicompute.geometry import grid_q
    from spicompute.simulation.simulate import SimulationParams, build_detector, shape_volumes
    from spicompute.orient.slicing import VolumeSampler
    from spicompute.orient.quaternions import random_quaternions

    size = 65
    p = SimulationParams.from_dict(dict(detector_size=size, binning=3, volume_size=96,
                                        melt_levels=5, seed=1))
    rng = np.random.default_rng(0)
    det = build_detector(p, rng)
    vols, _, ts, dq = shape_volumes(p, det)
    qg = det.q.reshape(size, size, 3)
    dq_grid = float(qg[size // 2, size // 2 + 1, 0] - qg[size // 2, size // 2, 0])
    q = grid_q(size, dq_grid, p.wavelength_nm).reshape(-1, 3)
    samplers = [VolumeSampler(v, dq) for v in vols]
    n_levels = int(np.isfinite(ts).sum())
    n_fam, n_con = 100, 30
    t = rng.uniform(0, 1, n_fam)
    quats = random_quaternions(n_fam + n_con, rng)
    pos = t * (n_levels - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_levels - 2)
    frac = pos - lo
    imgs = np.zeros((n_fam + n_con, size * size), np.float32)
    for v in range(n_levels):  # a handful of volumes, not a loop over averages
        w = np.where(lo == v, 1 - frac, 0) + np.where(lo + 1 == v, frac, 0)
        sel = np.nonzero(w > 0)[0]
        imgs[sel] += samplers[v].slices(q, quats[sel]) * w[sel, None].astype(np.float32)
    kind = rng.integers(n_levels, len(vols), n_con)
    for v in range(n_levels, len(vols)):
        sel = n_fam + np.nonzero(kind == v)[0]
        imgs[sel] = samplers[v].slices(q, quats[sel])
    imgs = imgs.reshape(-1, size, size)
    c = size // 2
    yy, xx = np.mgrid[:size, :size] - c
    valid = np.broadcast_to(np.hypot(yy, xx) > 1.5, imgs.shape)
    r0, r1 = auto_radius_range(valid)
    radii = np.arange(r0, r1 + 1.0)
    raw, rv = polar_lines(imgs, valid, radii, 180)
    cc = cc_matrix(normalise_lines(raw, rv)).cc
    pc = clpca(cc, 3).coords
    rho = max(abs(spearmanr(pc[:n_fam, k], t)[0]) for k in range(3))
    assert rho >= 0.7, rho
    # ...and over the continuum, not only by telling the two ends apart
    mid = (t > 0.1) & (t < 0.9)
    rho_mid = max(abs(spearmanr(pc[:n_fam][mid, k], t[mid])[0]) for k in range(3))
    print(f"melt Spearman: all {rho:.3f}, 0.1<t<0.9 {rho_mid:.3f} ({mid.sum()} averages)")
    assert rho_mid >= 0.85, rho_mid
    contaminant = np.r_[np.zeros(n_fam, bool), np.ones(n_con, bool)]
    auc = max(max(a, 1 - a) for a in (roc_auc_score(contaminant, pc[:, k]) for k in range(3)))
    assert auc > 0.8, auc


def test_empty_and_underoccupied_averages_are_flagged_not_fatal(averages_file, tmp_path):
    """An all-zero model no longer aborts ccmatrix; near-empty classes stay out of the fit."""
    import h5py

    folder, avg = averages_file
    m = avg.n_averages
    inten, weight = avg.intensity.copy(), avg.weight.copy()
    inten[3] = 0.0                      # EMC left model 3 empty
    n_frames = np.full(m, 40.0)
    n_frames[5] = 0.5                   # and class 5 nearly so
    bad = AverageSet(inten, weight, avg.average_id, avg.run, avg.model, n_frames, avg.dq_nm, avg.wavelength_nm)
    write_averages(tmp_path / "averages.h5", bad)
    params = write_params(tmp_path)
    assert main(["ccmatrix", "--params", str(params), "-q", "--averages", str(tmp_path / "averages.h5"),
                 "--out", str(tmp_path / "cc.h5"), "--metrics", str(tmp_path / "cc.json")]) == 0
    ccf = read_ccmatrix(tmp_path / "cc.h5")
    assert ccf.usable.tolist() == [i not in (3, 5) for i in range(m)]
    assert np.all(ccf.cc[3, np.arange(m) != 3] == 0) and ccf.cc[3, 3] == 1
    assert json.loads((tmp_path / "cc.json").read_text())["n_unusable_averages"] == 2
    # nuisance diagnostics need the frame assignments and photons
    frames = pd.DataFrame({"frame_id": np.arange(4 * m), "run": 0, "average_id": np.repeat(np.arange(m), 4)})
    frames.to_parquet(tmp_path / "frames.parquet")
    with h5py.File(tmp_path / "frames.h5", "w") as h5:
        h5["frames/frame_id"] = np.arange(4 * m)
        h5["frames/photons"] = np.repeat(np.arange(m) * 10 + 100, 4)
    assert main(["embed", "--params", str(params), "-q", "--ccmatrix", str(tmp_path / "cc.h5"),
                 "--part", str(tmp_path / "embed.parquet"), "--out", str(tmp_path / "emb.h5"),
                 "--metrics", str(tmp_path / "embed.json"), "--frames-table", str(tmp_path / "frames.parquet"),
                 "--frames", str(tmp_path / "frames.h5")]) == 0
    table = pd.read_parquet(tmp_path / "embed.parquet")
    assert table.landscape_usable.tolist() == ccf.usable.tolist()
    assert np.isfinite(table.pc_1).all()                       # projected into CLPCA space
    assert table.isomap_1.isna().tolist() == (~ccf.usable).tolist() and (table.cluster[~ccf.usable] == -1).all()
    # the fit ignores the flagged averages: same pcs for the rest as a fit without them
    from spicompute.landscape.embedding import clpca

    u = np.flatnonzero(ccf.usable)
    ref = clpca(ccf.cc[np.ix_(u, u)], 3, seed=0).coords
    np.testing.assert_allclose(table.loc[ccf.usable, ["pc_1", "pc_2", "pc_3"]].to_numpy(), ref, atol=1e-9)
    metrics = json.loads((tmp_path / "embed.json").read_text())
    assert set(metrics["nuisance_spearman"]["pc_1"]) == {"n_frames", "mean_photons", "run"}
    assert metrics["n_unusable"] == 2 and isinstance(metrics["nuisance_warnings"], list)
    # one bootstrap run: the stability halves are alternate averages, and say so
    stability = metrics["component_stability"]
    assert stability["split"] == "averages" and sum(stability["n_half"]) == int(ccf.usable.sum())
    assert set(stability["components"]) == {"pc_1", "pc_2", "pc_3"}


def test_smoothing_denoises_observed_points_without_bleeding_from_masked_ones():
    from spicompute.landscape.commonlines import smooth_averages

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE // 2
    r = np.hypot(yy, xx)
    truth = (200.0 / (1 + (r / 4) ** 2) * (1.2 + np.cos(r / 2.0))).astype(np.float32)   # fringes every ~12 px
    valid = np.broadcast_to(r > 3, (4, SIZE, SIZE)).copy()
    valid[:, SIZE // 2 - 1:SIZE // 2 + 2, :] = False                                       # a panel gap
    noisy = rng.poisson(np.broadcast_to(truth, (4, SIZE, SIZE))).astype(np.float32)
    noisy[~valid] = 1e6                                                                    # what the gap must not leak
    smooth = smooth_averages(noisy, valid, 1.0)
    assert np.all(smooth[~valid] == 0)
    assert smooth[valid].max() < 1e4
    outer = valid[0] & (r > 12)   # a few photons per pixel: where the common lines are shot noise
    err = lambda img: np.sqrt(np.mean((img - truth)[outer] ** 2))  # noqa: E731
    assert err(smooth[0]) < 0.7 * err(noisy[0])
    # a constant stays constant up to the mask's edge (normalised convolution)
    flat = smooth_averages(np.full((1, SIZE, SIZE), 5.0, np.float32), valid[:1], 2.0)
    np.testing.assert_allclose(flat[valid[:1]], 5.0, rtol=1e-5)
    np.testing.assert_array_equal(smooth_averages(noisy, valid, 0.0)[valid], noisy[valid])


def test_the_stage_smooths_in_physical_units_and_names_a_bad_width(averages_file, tmp_path, capsys):
    import json

    folder, avg = averages_file
    runs = {}
    for q in (0.0, 0.06):
        params = write_params(tmp_path, ccmatrix__smooth_q_nm=q)
        assert main(["ccmatrix", "--params", str(params), "-q", "--averages", str(folder / "averages.h5"),
                     "--out", str(tmp_path / f"cc{q}.h5"), "--metrics", str(tmp_path / f"cc{q}.json")]) == 0
        runs[q] = (read_ccmatrix(tmp_path / f"cc{q}.h5"), json.loads((tmp_path / f"cc{q}.json").read_text()))
    assert runs[0.06][1]["smooth_px"] == pytest.approx(0.06 / 0.04)   # sigma in grid steps of this grid
    assert runs[0.0][1]["smooth_px"] == 0.0
    np.testing.assert_array_equal(runs[0.0][0].q_nm, runs[0.06][0].q_nm)   # the q range is read unsmoothed
    assert not np.allclose(runs[0.0][0].cc, runs[0.06][0].cc)
    params = write_params(tmp_path, ccmatrix__smooth_q_nm=-0.01)
    rc = main(["ccmatrix", "--params", str(params), "-q", "--averages", str(folder / "averages.h5"),
               "--out", str(tmp_path / "bad.h5"), "--metrics", str(tmp_path / "bad.json")])
    assert rc == 2 and not (tmp_path / "bad.h5").exists()
    assert "ccmatrix.smooth_q_nm" in capsys.readouterr().err
