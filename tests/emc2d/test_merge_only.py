"""Dragonfly's "merge only" pixels (detector mask 1): merged into the 2D models, not fitted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from spicompute.emc2d.steps import Shard, build_rotation_grid, m_step, shard_step
from spicompute.emc2d.run import EMCConfig, initial_models, run_bootstrap, usable_counts
from spicompute.io.dragonfly import read_dragonfly_detector, write_dragonfly_detector
from spicompute.io.frames import FrameSet, read_frames, write_frames
from tests.conftest import INTEROP
from tests.emc2d.test_emc2d_data import make_frames


@pytest.fixture(scope="module")
def merge_data():
    """Frames of three templates; a quarter of the good pixels marked merge-only."""
    fs, labels, _, _ = make_frames(n_frames=240, photons=600.0, seed=4)
    det = fs.detector
    rng = np.random.default_rng(0)
    merge = det.mask & (rng.random(det.n_pixels) < 0.25)
    det2 = dataclasses.replace(det, mask=det.mask & ~merge, merge_only=merge, extra={})
    return FrameSet(fs.counts, fs.frame_id, det2), labels


def test_merge_only_survives_dragonfly_and_frames_files(merge_data, tmp_path):
    fs, _ = merge_data
    det = fs.detector
    assert det.merge_only is not None and not np.any(det.merge_only & det.mask)
    write_dragonfly_detector(tmp_path / "det.h5", det)
    back = read_dragonfly_detector(tmp_path / "det.h5", det.wavelength_nm)
    assert np.array_equal(back.merge_only, det.merge_only)
    assert np.array_equal(back.mask, det.mask)
    write_frames(tmp_path / "frames.h5", fs)
    again = read_frames(tmp_path / "frames.h5").detector
    assert np.array_equal(again.merge_only, det.merge_only)


def test_merge_only_pixels_are_merged_but_not_fitted(merge_data):
    fs, _ = merge_data
    det = fs.detector
    merged = build_rotation_grid(det, 12)
    dropped = build_rotation_grid(det, 12, merge_only=False)
    assert merged.size == dropped.size and merged.n_pix > dropped.n_pix
    assert merged.fit is not None and merged.fit.sum() == dropped.n_pix
    counts_m, photons_m = usable_counts(fs, merged)
    counts_d, photons_d = usable_counts(fs, dropped)
    assert np.allclose(photons_m, photons_d)          # scales and beta see fitted photons only
    models = initial_models(dropped, counts_d, photons_d, 3, np.random.default_rng(1))
    phi = photons_d / photons_d.mean()
    beta = np.full(fs.n_frames, 0.5)
    for engine in ("sparse", "dense"):
        a = shard_step(Shard.from_counts(counts_m, 100, merged.fit), merged, models, phi, beta,
                       True, engine=engine)
        b = shard_step(Shard.from_counts(counts_d, 100), dropped, models, phi, beta, True,
                       engine=engine)
        # the likelihood is the same: same posteriors, scales and log-likelihood ...
        assert np.array_equal(a.best, b.best)
        assert np.allclose(a.phi, b.phi, rtol=1e-5)
        assert a.loglik == pytest.approx(b.loglik, rel=1e-5)
        # ... but the merge-only photons reach the models
        assert a.num.sum() > b.num.sum() * 1.1
        wa, wb = m_step(merged, a)[1], m_step(dropped, b)[1]
        assert np.all(wa >= wb - 1e-9) and wa.sum() > wb.sum()


def test_classify2d_merges_the_corners_unless_told_to_drop_them():
    """Dragonfly's typical use: the corners beyond the fitted q range are merge-only."""
    fs, labels, _, _ = make_frames(n_frames=240, photons=600.0, seed=4)
    det = fs.detector
    radius = np.linalg.norm(det.q_perp, axis=1)
    corners = det.mask & (radius > 0.8 * radius[det.mask].max())
    fs = FrameSet(fs.counts, fs.frame_id,
                  dataclasses.replace(det, mask=det.mask & ~corners, merge_only=corners, extra={}))
    cfg = dict(n_models=3, n_rot=24, n_runs=1, subset_fraction=1.0, max_iter=20, min_iter=5,
               tol=1e-4, device="cpu", background="none")
    merged = run_bootstrap(fs, EMCConfig(**cfg))
    dropped = run_bootstrap(fs, EMCConfig(**cfg, merge_only=False))
    assert merged.grid.fit is not None and dropped.grid.fit is None
    # the templates are still recovered (class labels agree with the truth up to a relabelling)
    for res in (merged, dropped):
        fr = res.frames[0]
        table = np.zeros((3, 3))
        np.add.at(table, (fr["model"], labels[fr["index"]]), 1)
        assert table.max(axis=1).sum() / table.sum() > 0.9, table
    # the merged models reach into the corners the dropped run never observes
    assert merged.grid.size > dropped.grid.size
    assert (merged.weight > 0).sum() > 1.2 * (dropped.weight > 0).sum()


@pytest.mark.skipif(not (INTEROP / "dragonfly" / "det_sim.h5").exists(),
                    reason="interop samples absent")
def test_real_dragonfly_detector_mask_one_pixels_are_merge_only():
    det = read_dragonfly_detector(INTEROP / "dragonfly" / "det_sim.h5", 0.2)
    import h5py

    with h5py.File(INTEROP / "dragonfly" / "det_sim.h5") as h5:
        mask = h5["mask"][()]
    assert np.array_equal(det.merge_only, mask == 1)
    assert np.array_equal(det.mask, mask == 0)
    assert int(det.merge_only.sum()) == int((mask == 1).sum()) > 0
