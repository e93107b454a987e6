"""2D EMC: recovery of rotated templates, sparse == dense, Dask == in-process,
resume == uninterrupted, bad inputs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from test_emc2d_data import best_rotation_cc, make_detector, make_frames, pixel_xy  # noqa: E402

from spicompute.emc2d.steps import Shard, bilinear_matrix, build_rotation_grid, rotated_models, shard_step
from spicompute.emc2d.run import EMCConfig, initial_models, run_bootstrap, usable_counts
from spicompute.errors import ParameterError
from spicompute.io.frames import FrameSet


sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def data():
    return make_frames(n_frames=300, photons=500.0, seed=1)


def small_cfg(**kw):
    base = dict(n_models=3, n_rot=24, n_runs=1, subset_fraction=1.0, max_iter=20, min_iter=5,
                tol=1e-4, device="cpu")
    base.update(kw)
    return EMCConfig(**base)


def test_bilinear_matrix_is_exact_for_linear_functions():
    L = 9
    pts = np.random.default_rng(0).uniform(0, L - 1, size=(50, 2))
    S = bilinear_matrix(pts, L)
    yy, xx = np.mgrid[0:L, 0:L]
    f = 2.0 * xx - 3.0 * yy + 1.0
    np.testing.assert_allclose(S @ f.ravel(), 2 * pts[:, 0] - 3 * pts[:, 1] + 1, rtol=1e-5)
    assert np.all(np.diff(S.indptr) <= 4)
    np.testing.assert_allclose(np.asarray(S.sum(axis=1)).ravel(), 1.0, rtol=1e-6)


def test_rotated_models_turn_the_model_counter_clockwise():
    det = make_detector(41)
    grid = build_rotation_grid(det, 4, use_correction=False)
    L, c = grid.size, grid.size // 2
    yy, xx = np.mgrid[0:L, 0:L] - c
    model = np.exp(-((xx - 8.0) ** 2 + yy**2) / 8.0).reshape(1, -1)  # blob on +qx
    W = rotated_models(grid, model).transpose(1, 0, 2)                # (R, P, 1)
    x, y = pixel_xy(det)
    x, y = x[grid.pixels], y[grid.pixels]
    for r, ang in enumerate(grid.angles):
        p = np.argmax(W[r, :, 0])
        assert np.hypot(x[p] - 8 * np.cos(ang), y[p] - 8 * np.sin(ang)) < 1.5


@pytest.mark.slow
def test_recovers_templates_and_assignments(data):
    fs, labels, angles, fluence = data
    res = run_bootstrap(fs, small_cfg())
    K = 3
    cc = np.array([[best_rotation_cc(res.models[0, k], res.weight[0, k], t, radius=19)
                    for t in range(3)] for k in range(K)])
    # every template matched by a model with CC >= 0.95 after the best rotation
    assert cc.max(axis=0).min() >= 0.95, cc
    mapping = cc.argmax(axis=1)
    fr = res.frames[0]
    accuracy = np.mean(mapping[fr["model"]] == labels[fr["index"]])
    assert accuracy >= 0.9
    # fluence scales follow the true fluence (up to normalisation)
    assert np.corrcoef(fr["scale"], fluence[fr["index"]])[0, 1] > 0.9
    np.testing.assert_allclose(fr["scale"].mean(), 1.0, rtol=1e-6)
    # in-plane angles: recovered rotation differs from truth by a per-model constant
    for k in range(K):
        sel = fr["model"] == k
        d = np.angle(np.exp(1j * (np.radians(fr["rotation_deg"][sel]) - angles[fr["index"]][sel])))
        spread = np.abs(np.angle(np.exp(1j * (d - np.angle(np.mean(np.exp(1j * d)))))))
        assert np.median(spread) < np.radians(15)
    assert res.histories[0][-1]["mutual_info"] > res.histories[0][0]["mutual_info"]


def _one_step_inputs(data, n_models=3, n_rot=12):
    fs = data[0]
    grid = build_rotation_grid(fs.detector, n_rot)
    counts, photons = usable_counts(fs, grid)
    models = initial_models(grid, counts, photons, n_models, np.random.default_rng(3))
    phi = photons / photons.mean()
    beta = np.full(fs.n_frames, 0.3)
    return grid, counts, models, phi, beta


def test_sparse_and_dense_paths_agree(data):
    grid, counts, models, phi, beta = _one_step_inputs(data)
    shard = Shard.from_counts(counts, block_frames=70)  # several blocks, last one partial
    a = shard_step(shard, grid, models, phi, beta, True, engine="sparse")
    b = shard_step(shard, grid, models, phi, beta, True, engine="dense")
    np.testing.assert_allclose(a.num, b.num, rtol=2e-4, atol=1e-6 * np.abs(b.num).max())
    np.testing.assert_allclose(a.wsum, b.wsum, rtol=2e-4, atol=1e-6 * b.wsum.max())
    np.testing.assert_allclose(a.occupancy, b.occupancy, rtol=2e-4, atol=1e-4)
    np.testing.assert_allclose(a.phi, b.phi, rtol=2e-4)
    np.testing.assert_allclose(a.loglik, b.loglik, rtol=1e-4)
    np.testing.assert_allclose(a.mutual_info, b.mutual_info, rtol=1e-3)
    assert np.mean(a.best == b.best) > 0.98


def test_shard_partial_sums_add_up(data):
    grid, counts, models, phi, beta = _one_step_inputs(data)
    whole = shard_step(Shard.from_counts(counts), grid, models, phi, beta)
    cut = [0, 120, 300]
    parts = [shard_step(Shard.from_counts(counts[a:b]), grid, models, phi[a:b], beta[a:b])
             for a, b in zip(cut[:-1], cut[1:])]
    from spicompute.emc2d.steps import PartialSums

    tot = PartialSums.combine(parts)
    np.testing.assert_allclose(tot.num, whole.num, rtol=1e-4, atol=1e-7 * whole.num.max())
    np.testing.assert_allclose(tot.phi, whole.phi, rtol=1e-5)
    np.testing.assert_array_equal(tot.best, whole.best)


def test_dask_equals_in_process(data):
    distributed = pytest.importorskip("distributed")
    fs = data[0]
    cfg = small_cfg(max_iter=4, min_iter=4, n_runs=2, subset_fraction=0.8)
    ref = run_bootstrap(fs, cfg)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        got = run_bootstrap(fs, cfg, client=client)
    np.testing.assert_allclose(got.models, ref.models, rtol=1e-4,
                               atol=1e-5 * ref.models.max())
    np.testing.assert_allclose(got.occupancy, ref.occupancy, rtol=1e-4, atol=1e-3)
    for a, b in zip(got.frames, ref.frames):
        np.testing.assert_array_equal(a["index"], b["index"])
        assert np.mean(a["model"] == b["model"]) > 0.99


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted(data, tmp_path):
    fs = data[0]
    full = run_bootstrap(fs, small_cfg(max_iter=6, min_iter=6))
    ck = tmp_path / "ck"

    class Killed(Exception):
        pass

    def kill_after_3(rec):  # the checkpoint of iteration 3 is written before this is called
        if rec["iteration"] == 3:
            raise Killed

    with pytest.raises(Killed):
        run_bootstrap(fs, small_cfg(max_iter=6, min_iter=6), checkpoint_dir=ck, on_iteration=kill_after_3)
    seen = []
    resumed = run_bootstrap(fs, small_cfg(max_iter=6, min_iter=6), checkpoint_dir=ck,
                            on_iteration=seen.append)
    assert [r.get("resumed", False) for r in seen] == [True] * 3 + [False] * 3
    np.testing.assert_allclose(resumed.models, full.models, rtol=1e-5,
                               atol=1e-6 * full.models.max())
    np.testing.assert_array_equal(resumed.frames[0]["model"], full.frames[0]["model"])
    assert len(resumed.histories[0]) == 6
    # a finished checkpoint is reused without iterating again
    again = []
    run_bootstrap(fs, small_cfg(max_iter=6, min_iter=6), checkpoint_dir=ck,
                  on_iteration=again.append)
    assert all(r.get("resumed") for r in again) and len(again) == 6
    # a lower max_iter never resumes from a longer run's checkpoint
    fresh3 = run_bootstrap(fs, small_cfg(max_iter=3, min_iter=3))
    short = run_bootstrap(fs, small_cfg(max_iter=3, min_iter=3), checkpoint_dir=ck)
    np.testing.assert_array_equal(short.models, fresh3.models)
    assert len(short.histories[0]) == 3


def test_a_checkpoint_of_other_emc_code_is_recomputed_not_resumed(data, tmp_path, monkeypatch):
    """The EMC package's source digest is part of the checkpoint key: after a code change the run
    starts afresh (DVC re-runs the stage; resuming would hand it the old code's iterations)."""
    import spicompute.emc2d.run as emc_run

    digest = emc_run.kernel_digest()
    assert len(digest) == 40 and digest == emc_run.kernel_digest()
    fs, ck = data[0], tmp_path / "ck"
    cfg = small_cfg(max_iter=3, min_iter=3)
    run_bootstrap(fs, cfg, checkpoint_dir=ck)
    same = []
    run_bootstrap(fs, cfg, checkpoint_dir=ck, on_iteration=same.append)
    assert len(same) == 3 and all(r.get("resumed") for r in same)
    monkeypatch.setattr(emc_run, "kernel_digest", lambda: "0" * 40)
    other = []
    run_bootstrap(fs, cfg, checkpoint_dir=ck, on_iteration=other.append)
    assert len(other) == 3 and not any(r.get("resumed") for r in other)


def test_bootstrap_subsets_are_seeded_and_distinct(data):
    fs = data[0]
    cfg = small_cfg(max_iter=1, min_iter=1, n_runs=2, subset_fraction=0.8)
    a = run_bootstrap(fs, cfg)
    b = run_bootstrap(fs, cfg)
    assert a.frames[0]["index"].size == round(0.8 * 300)
    assert not np.array_equal(a.frames[0]["index"], a.frames[1]["index"])
    np.testing.assert_array_equal(a.frames[1]["index"], b.frames[1]["index"])
    np.testing.assert_array_equal(a.models, b.models)


def test_empty_and_fully_masked_frames_are_excluded(data, caplog):
    fs = data[0]
    counts = fs.counts.tolil()
    counts[5, :] = 0                                    # no photon at all
    masked = np.flatnonzero(~fs.detector.mask)[:3]
    counts[7, :] = 0
    counts[7, masked] = 4                               # photons only on masked pixels
    bad = FrameSet(sp.csr_matrix(counts), fs.frame_id, fs.detector)
    with caplog.at_level(logging.WARNING):
        res = run_bootstrap(bad, small_cfg(max_iter=2, min_iter=2))
    np.testing.assert_array_equal(res.excluded, [5, 7])
    assert "no photon" in caplog.text
    assert 5 not in res.frames[0]["index"] and 7 not in res.frames[0]["index"]
    assert np.all(np.isfinite(res.models))


def test_min_photons_leaves_weak_hits_out_and_records_them(data):
    fs = data[0]
    photons = np.asarray(fs.counts.sum(axis=1)).ravel()
    cut = float(np.percentile(photons, 30))
    res = run_bootstrap(fs, small_cfg(max_iter=1, min_iter=1, min_photons=cut))
    weak = res.excluded
    assert res.resolved["n_weak_frames"] == weak.size > 0.2 * len(photons)
    # counted on the fitted pixels, so never more than the frame's total
    assert np.all(photons[weak] < cut)
    assert not np.isin(weak, res.frames[0]["index"]).any()
    assert res.frames[0]["index"].size == len(photons) - weak.size   # small_cfg: subset_fraction 1
    # the default cut (0) changes nothing and keeps the old trajectory key
    plain = small_cfg(max_iter=1, min_iter=1)
    assert "min_photons" not in plain.trajectory_key()
    assert "min_photons" in small_cfg(min_photons=cut).trajectory_key()
    with pytest.raises(ParameterError, match="classify2d.min_photons.*most any frame has"):
        run_bootstrap(fs, small_cfg(max_iter=1, min_iter=1, min_photons=10 * photons.max()))
    # auto: half the median photons per frame, resolved from the data and recorded
    auto = run_bootstrap(fs, small_cfg(max_iter=1, min_iter=1, min_photons="auto"))
    half = 0.5 * np.median(photons[photons > 0])
    assert auto.resolved["min_photons"] == pytest.approx(half, rel=0.05)   # fitted pixels ~ all here
    assert auto.resolved["min_photons_source"].startswith("auto")
    np.testing.assert_array_equal(np.sort(auto.excluded), np.flatnonzero(
        np.asarray(fs.counts[:, auto.grid.pixels].sum(axis=1)).ravel() < auto.resolved["min_photons"]))


@pytest.mark.parametrize("kw, name", [
    (dict(min_photons=-1.0), "min_photons"),
    (dict(min_photons="sometimes"), "min_photons"),
    (dict(n_models=400), "n_models"),
    (dict(n_rot=0), "n_rot"),
    (dict(subset_fraction=0.0), "subset_fraction"),
    (dict(subset_fraction=1.5), "subset_fraction"),
    (dict(beta=-1.0), "beta"),
    (dict(engine="magic"), "engine"),
])
def test_bad_parameters_are_named(data, kw, name):
    with pytest.raises(ParameterError, match=name):
        run_bootstrap(data[0], small_cfg(**kw))


def test_unknown_parameter_is_an_error():
    with pytest.raises(ParameterError, match="n_modles"):
        EMCConfig.from_params({"n_modles": 3})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu(data):
    grid, counts, models, phi, beta = _one_step_inputs(data)
    shard = Shard.from_counts(counts)
    a = shard_step(shard, grid, models, phi, beta, device="cpu")
    b = shard_step(shard, grid, models, phi, beta, device="cuda")
    np.testing.assert_allclose(a.num, b.num, rtol=1e-3, atol=1e-6 * a.num.max())
    np.testing.assert_allclose(a.phi, b.phi, rtol=1e-4)


def test_scheduler_strings():
    from spicompute.execution import dask_client, worker_threads

    with dask_client("", "classify2d.scheduler") as client:
        assert client is None
    for bad in ("local:many", "local:0", "local:", "not an address"):
        with pytest.raises(ParameterError, match="classify2d.scheduler"):
            with dask_client(bad, "classify2d.scheduler"):
                pass
    assert worker_threads("local:1") >= 1 and worker_threads("tcp://x:8786") == 0


@pytest.mark.slow
def test_sparse_posterior_m_step_equals_dense(data, monkeypatch):
    """With sharp posteriors (beta 1) only a few (frame, column) pairs survive prob_min; the
    M-step from the kept pairs equals the dense float64 reference with the same truncation and
    the dense-kernel numerator, and differs from the untruncated sums by very little."""
    import spicompute.emc2d.steps as emc

    fs = data[0]
    grid = build_rotation_grid(fs.detector, 12)
    counts, photons = usable_counts(fs, grid)
    res = run_bootstrap(fs, small_cfg(max_iter=8, min_iter=8, n_rot=12))
    models = res.models[0].reshape(3, -1).astype(np.float64)
    phi = photons / photons.mean()
    beta = np.ones(fs.n_frames)
    shard = Shard.from_counts(counts, block_frames=70)
    sparse_ = shard_step(shard, grid, models, phi, beta, True, engine="sparse", prob_min=1e-6)
    ref = shard_step(shard, grid, models, phi, beta, True, engine="dense", prob_min=1e-6)
    monkeypatch.setattr(emc, "SPARSE_FRAC", 0.0)     # force the dense-kernel numerator
    dense_kernel = shard_step(shard, grid, models, phi, beta, True, engine="sparse",
                              prob_min=1e-6)
    full = shard_step(shard, grid, models, phi, beta, True, engine="dense", prob_min=0.0)
    for other in (ref, dense_kernel):
        np.testing.assert_allclose(sparse_.num, other.num, rtol=2e-4,
                                   atol=1e-6 * np.abs(other.num).max())
        np.testing.assert_allclose(sparse_.wsum, other.wsum, rtol=2e-4, atol=1e-6 * other.wsum.max())
        np.testing.assert_allclose(sparse_.phi, other.phi, rtol=2e-4)
    # the truncation is negligible: numerators within 1e-3 of the untruncated ones
    np.testing.assert_allclose(sparse_.num, full.num, atol=1e-3 * np.abs(full.num).max())
    np.testing.assert_allclose(sparse_.loglik, full.loglik, rtol=1e-4)


def test_scattered_numerator_equals_the_dense_product(data):
    """The kept-entry numerator (entries in no order, 1-3 per frame, some frames with none),
    transposed to (P, R*K) and projected by ``numerator_bag``, equals B^T (K^T P / corr)
    computed densely in float64 (the test detector's correction differs from 1 by up to 5e-4,
    far above the tolerance); the torch path (other devices) adds the same numbers in the same
    order, and the counts are left untouched."""
    from spicompute.emc2d.steps import _add_rows_torch, scatter_numerator, transpose_into

    fs = data[0]
    grid = build_rotation_grid(fs.detector, 8)
    counts, _ = usable_counts(fs, grid)
    counts = sp.csr_matrix(counts[:120], dtype=np.float32)
    before = counts.copy()
    n, P = counts.shape
    R, K = grid.n_rot, 5
    rng = np.random.default_rng(3)
    entries = rng.integers(1, 4, size=n)          # 1-3 entries per frame ...
    entries[::7] = 0                              # ... and some frames with none
    rows = np.repeat(np.arange(n), entries)
    cols = rng.integers(0, R * K, size=rows.size)
    vals = rng.random(rows.size).astype(np.float32)
    perm = rng.permutation(rows.size)             # entries in no particular order
    rows, cols, vals = rows[perm], cols[perm], vals[perm]
    acc = torch.zeros((R * K, P), dtype=torch.float32)
    scatter_numerator(acc, counts, rows, cols, vals)
    assert (counts != before).nnz == 0
    index, offsets, weights = grid.numerator_bag()
    table = transpose_into(acc, chunk=7)          # (P, R*K), chunks that do not divide P
    assert torch.equal(table, acc.T)
    got = torch.nn.functional.embedding_bag(index, table.reshape(P * R, K), offsets, mode="sum",
                                            per_sample_weights=weights).T.numpy()
    post = np.zeros((n, R * K))
    np.add.at(post, (rows, cols), vals.astype(np.float64))
    ktp = counts.T.astype(np.float64) @ post / grid.corr[:, None]            # (P, R*K), j = r K + k
    ktp = ktp.reshape(P, R, K).reshape(P * R, K)                            # row p R + r
    want = (grid.ST.astype(np.float64) @ ktp).T
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    # the accumulator is the per-column K^T P itself: row j holds column j's frame sums
    sel = cols == cols[0]
    direct = np.asarray(counts.T @ sp.csr_matrix((vals[sel], (rows[sel], np.zeros(sel.sum(), int))),
                                                 shape=(n, 1)).toarray()).ravel()
    np.testing.assert_allclose(acc[cols[0]].numpy(), direct, rtol=1e-5, atol=1e-6 * direct.max())
    # in passes of a few photons (a column's entries split between passes): the same sums bit for bit
    import spicompute.emc2d.steps as steps
    passes = torch.zeros_like(acc)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(steps, "SCATTER_PHOTONS", 97)
        scatter_numerator(passes, counts, rows, cols, vals)
    assert torch.equal(passes, acc)
    # the torch path: the same sums bit for bit
    order = np.lexsort((rows, cols))
    picked = counts[rows[order]]
    indptr = picked.indptr[np.searchsorted(cols[order], np.arange(R * K + 1))]
    other = torch.zeros_like(acc)
    _add_rows_torch(other, indptr, picked.indices, picked.data, vals[order], np.diff(picked.indptr))
    assert torch.equal(other, acc)


@pytest.mark.slow
def test_sparsity_does_not_worsen_the_fit(data):
    fs = data[0]
    a = run_bootstrap(fs, small_cfg(prob_min=0.0, max_iter=12, min_iter=12))
    b = run_bootstrap(fs, small_cfg(prob_min=1e-6, max_iter=12, min_iter=12))
    la, lb = a.histories[0][-1]["loglik"], b.histories[0][-1]["loglik"]
    assert lb >= la - 1e-4 * abs(la), (la, lb)
    np.testing.assert_array_equal(a.frames[0]["model"], b.frames[0]["model"])


def test_friedel_models_are_centrosymmetric_and_recover_templates(data):
    fs, labels, angles, fluence = data
    res = run_bootstrap(fs, small_cfg(friedel=True, n_rot=12, max_iter=12))
    assert res.grid.friedel and np.isclose(res.grid.angles[-1], np.pi * 11 / 12)
    m = res.models[0]
    np.testing.assert_allclose(m, m[:, ::-1, ::-1], rtol=1e-5, atol=1e-6 * m.max())
    # the templates are not centrosymmetric, but their classes still separate: each model's
    # frames come from one template
    fr = res.frames[0]
    truth = labels[fr["index"]]
    purity = sum(np.bincount(truth[fr["model"] == k], minlength=3).max() for k in range(3))
    assert purity / truth.size >= 0.9
    assert len(set(fr["model"].tolist())) == 3


# ----------------------------------------------------------------------------- E-step pruning
def _with_background(grid, level=0.02):
    return np.full(grid.n_pix, level)


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("density", [0.05, 0.6, "mixed"])
def test_pruned_e_step_equals_the_dense_reference_with_the_same_candidates(data, background, density):
    """The sparse kernel computes exactly the candidate pairs -- by the compact posterior over the
    candidates when they are few (density 0.05), by the full product masked when they are many
    (0.6), block by block when both occur (mixed): all equal the dense float64 reference given the
    same candidates, with and without the background term."""
    grid, counts, models, phi, beta = _one_step_inputs(data, n_models=4, n_rot=12)
    bg = _with_background(grid) if background else None
    rng = np.random.default_rng(5)
    n = counts.shape[0]
    share = np.where(np.arange(n) // 70 % 2 == 0, 0.05, 0.6) if density == "mixed" else density
    cand = rng.random((n, 4)) < np.reshape(share, (-1, 1))
    cand[np.arange(counts.shape[0]), rng.integers(0, 4, counts.shape[0])] = True   # >= 1 per frame
    shard = Shard.from_counts(counts, block_frames=70)
    a = shard_step(shard, grid, models, phi, beta, True, engine="sparse", background=bg,
                   candidates=cand, prune_mass=1e-6)
    b = shard_step(shard, grid, models, phi, beta, True, engine="dense", background=bg,
                   candidates=cand, prune_mass=1e-6)
    np.testing.assert_allclose(a.num, b.num, rtol=2e-4, atol=1e-6 * np.abs(b.num).max())
    np.testing.assert_allclose(a.phi, b.phi, rtol=2e-4)
    np.testing.assert_allclose(a.loglik, b.loglik, rtol=1e-4)
    np.testing.assert_allclose(a.mutual_info, b.mutual_info, rtol=1e-3, atol=1e-3 * n)
    np.testing.assert_allclose(a.wsum, b.wsum, rtol=2e-4, atol=1e-6 * b.wsum.max())
    np.testing.assert_allclose(a.occupancy, b.occupancy, rtol=2e-4, atol=1e-6 * n)
    np.testing.assert_allclose(a.pmax, b.pmax, rtol=2e-3, atol=1e-4)
    assert np.mean(a.best == b.best) > 0.98
    assert np.mean(a.candidates == b.candidates) > 0.98
    # no probability outside the candidates, and the returned candidates are a subset of them
    assert np.all(cand[np.arange(cand.shape[0]), a.best % 4])
    assert not np.any(a.candidates & ~cand)
    assert a.pairs == pytest.approx(cand.mean() * cand.shape[0])
    # the candidates' likelihoods gathered in passes of a few photons: the same bits
    import spicompute.emc2d.steps as steps
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(steps, "PAIR_PHOTONS", 500)
        small = shard_step(shard, grid, models, phi, beta, True, engine="sparse", background=bg,
                           candidates=cand, prune_mass=1e-6)
    for field in ("num", "phi", "wsum", "pmax", "best", "candidates"):
        np.testing.assert_array_equal(getattr(small, field), getattr(a, field))
    # all-True candidates take the full product: identical to no pruning
    full = shard_step(shard, grid, models, phi, beta, True, engine="sparse", background=bg)
    allc = shard_step(shard, grid, models, phi, beta, True, engine="sparse", background=bg,
                      candidates=np.ones_like(cand))
    np.testing.assert_array_equal(allc.num, full.num)


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("pruned", [False, True])
def test_kept_entry_numerator_in_the_step_equals_the_dense_reference(data, monkeypatch, background, pruned):
    """With every block taking the kept-entry numerator (``SPARSE_FRAC`` 1; on these small R*K the
    dense gather is cheaper and would be chosen), a sharp full step and a pruned step give the
    dense float64 reference's numerator, with and without the background term."""
    import spicompute.emc2d.steps as emc

    grid, counts, models, phi, _ = _one_step_inputs(data, n_models=4, n_rot=12)
    beta = np.ones(counts.shape[0])
    bg = _with_background(grid) if background else None
    rng = np.random.default_rng(9)
    n = counts.shape[0]
    cand = None
    if pruned:
        cand = rng.random((n, 4)) < 0.3
        cand[np.arange(n), rng.integers(0, 4, n)] = True
    shard = Shard.from_counts(counts, block_frames=70)
    kw = dict(background=bg, candidates=cand, prune_mass=1e-6 if pruned else 0.0, prob_min=1e-4)
    monkeypatch.setattr(emc, "SPARSE_FRAC", 1.0)
    calls = []
    original = emc.scatter_numerator
    monkeypatch.setattr(emc, "scatter_numerator", lambda *a: calls.append(1) or original(*a))
    a = shard_step(shard, grid, models, phi, beta, True, engine="sparse", **kw)
    assert len(calls) == len(shard.blocks)
    b = shard_step(shard, grid, models, phi, beta, True, engine="dense", **kw)
    np.testing.assert_allclose(a.num, b.num, rtol=2e-4, atol=1e-6 * np.abs(b.num).max())
    np.testing.assert_allclose(a.wsum, b.wsum, rtol=2e-4, atol=1e-6 * b.wsum.max())


@pytest.mark.parametrize("pruned", [False, True])
def test_exp_floor_changes_nothing_where_small_probabilities_are_cut(data, monkeypatch, pruned):
    """Clamping the posterior exponents at EXP_FLOOR (exp's fast path) and zeroing what falls below
    EXP_ZERO gives the same bits as the plain exp once ``prob_min`` cuts small probabilities, at
    beta 1 where most exponents underflow, and keeps the non-candidate pairs at exactly 0."""
    import spicompute.emc2d.steps as emc

    grid, counts, models, phi, _ = _one_step_inputs(data, n_models=4, n_rot=12)
    beta = np.ones(counts.shape[0])
    rng = np.random.default_rng(2)
    cand = None
    if pruned:
        cand = rng.random((counts.shape[0], 4)) < 0.3
        cand[np.arange(counts.shape[0]), rng.integers(0, 4, counts.shape[0])] = True
    shard = Shard.from_counts(counts, block_frames=70)
    kw = dict(candidates=cand, prune_mass=1e-6, prob_min=1e-6)
    a = shard_step(shard, grid, models, phi, beta, True, engine="sparse", **kw)
    monkeypatch.setattr(emc, "EXP_FLOOR", -np.inf)
    monkeypatch.setattr(emc, "EXP_ZERO", 0.0)
    b = shard_step(shard, grid, models, phi, beta, True, engine="sparse", **kw)
    for key in ("num", "wsum", "occupancy", "phi", "pmax", "best", "candidates"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.loglik == b.loglik


@pytest.mark.parametrize("update_scale, prob_min", [(False, 0.0), (True, 0.0), (False, 1e-3)])
def test_compact_pruned_step_without_scale_update_or_truncation(data, update_scale, prob_min):
    """The compact path with fixed scales and with the full (untruncated) or a coarse truncation of
    the posterior: still the dense reference, and the scales untouched when not updated."""
    grid, counts, models, phi, beta = _one_step_inputs(data, n_models=5, n_rot=12)
    rng = np.random.default_rng(8)
    n = counts.shape[0]
    cand = rng.random((n, 5)) < 0.1
    cand[np.arange(n), rng.integers(0, 5, n)] = True
    shard = Shard.from_counts(counts, block_frames=50)
    kw = dict(candidates=cand, prune_mass=1e-6, prob_min=prob_min)
    a = shard_step(shard, grid, models, phi, beta, update_scale, engine="sparse", **kw)
    b = shard_step(shard, grid, models, phi, beta, update_scale, engine="dense", **kw)
    np.testing.assert_allclose(a.num, b.num, rtol=2e-4, atol=1e-6 * np.abs(b.num).max())
    np.testing.assert_allclose(a.wsum, b.wsum, rtol=2e-4, atol=1e-6 * b.wsum.max())
    np.testing.assert_allclose(a.loglik, b.loglik, rtol=1e-4)
    if not update_scale:
        np.testing.assert_array_equal(a.phi, phi)
    assert np.mean(a.best == b.best) > 0.98


@pytest.mark.slow
def test_pruned_run_keeps_the_fit_and_skips_most_pairs(data):
    """Pruning with full refreshes: the same classes, a likelihood not worse, and most
    (frame, model) likelihoods skipped in the pruned iterations."""
    cfg = dict(max_iter=12, min_iter=12, n_models=4)
    full = run_bootstrap(data[0], small_cfg(prune_mass=0.0, **cfg))
    pruned = run_bootstrap(data[0], small_cfg(prune_mass=1e-6, prune_refresh=4, **cfg))
    la, lb = full.histories[0][-1]["loglik"], pruned.histories[0][-1]["loglik"]
    assert lb >= la - 1e-4 * abs(la), (la, lb)
    assert np.mean(full.frames[0]["model"] == pruned.frames[0]["model"]) > 0.99
    np.testing.assert_allclose(pruned.models, full.models, rtol=1e-2, atol=1e-3 * full.models.max())
    shares = [r["e_step_share"] for r in pruned.histories[0]]
    assert [shares[i] for i in (0, 4, 8)] == [1.0] * 3, shares    # the first and the refreshes
    assert shares[-1] < 0.5 and min(shares) < 0.5, shares
    assert [r["e_step_share"] for r in full.histories[0]] == [1.0] * 12


@pytest.mark.parametrize("with_offset", [False, True])
def test_log_blocks_are_the_whole_array_formula_bit_for_bit(monkeypatch, with_offset):
    """log_blocks writes log(max(W + offset, floor)) block by block and slab by slab; the same bits as
    the whole-array formula, the padding columns of the last block 0."""
    import spicompute.emc2d.steps as emc

    monkeypatch.setattr(emc, "SLAB_ELEMENTS", 64 * 7)        # several slabs per block, a short last one
    rng = np.random.default_rng(0)
    W = torch.from_numpy(rng.exponential(1.0, (50, 3 * emc.COL_BLOCK + 5)).astype(np.float32))
    W[W < 0.05] = 0.0                                        # below the floor
    offset = torch.from_numpy(rng.uniform(0.0, 0.3, 50).astype(np.float32)) if with_offset else None
    got = emc.log_blocks(W, 0.02, offset)
    X = W + offset[:, None] if with_offset else W.clone()
    expect = emc.to_blocks(torch.log(torch.clamp(X, min=0.02)))
    assert got.shape == (4, 50, emc.COL_BLOCK)
    assert torch.equal(got, expect)
    assert torch.all(got[-1, :, 5:] == 0.0)
