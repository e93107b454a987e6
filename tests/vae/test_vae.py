"""The VAE: slicer = orientation-fit slicer and = an analytic anisotropic function at R^T q,
preprocessing on two geometries, the fitted per-average scale (the exact cube fits its own
slices, a sphere does not), the Poisson likelihood, memory-sized batches, learning a melt
series (and losing it with shuffled orientations), determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from spicompute.errors import InputError
from spicompute.geometry import grid_q
from spicompute.io.averages import AverageSet
from spicompute.orient.fit import best_slices, volume_reference
from spicompute.vae.data import model_inputs, plan_preprocessing
from spicompute.vae.model import PRESETS, VAE, architecture
from spicompute.vae.slicer import slice_volumes
from spicompute.vae.train import (TensorData, TrainConfig, decode_volumes, encode, kl_beta,
                                  reconstruction_loss, slice_loss, train_vae)
from tests.melt_series import melt_averages, melt_volumes
from spicompute.orient.quaternions import random_quaternions, rotation_matrices


def test_slicer_matches_the_orientation_fit(rng):
    vols = melt_volumes(np.array([0.0, 0.6]), size=33, dq_nm=0.06)
    n, dq, lam = 31, 0.05, 0.2066
    quats = random_quaternions(6, rng)
    q = grid_q(n, dq, lam).reshape(-1, 3)
    avg = AverageSet(np.ones((6, n, n)), np.ones((6, n, n)), np.arange(6), np.zeros(6), np.arange(6),
                     np.ones(6), dq, lam)
    for v in vols:
        ref = best_slices(avg, volume_reference(v, 0.06), quats).reshape(6, -1)
        ours = slice_volumes(torch.from_numpy(np.repeat(v[None], 6, 0)), 0.06, torch.from_numpy(q).float(),
                             torch.from_numpy(rotation_matrices(quats))).numpy()
        for a, b in zip(ref, ours):
            assert np.corrcoef(a, b)[0, 1] >= 0.99
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * a.max())


def test_slicer_samples_an_anisotropic_function_at_the_rotated_points():
    # V(q) = exp(-q.A q), A diagonal with three widths: no symmetry maps R^T onto R
    size, dq, lam = 41, 0.05, 0.2066
    widths = np.array([0.35, 0.55, 0.8])  # rad/nm: 7 to 16 voxels, smooth for trilinear interpolation

    def v(qm):
        return np.exp(-((qm / widths) ** 2).sum(-1))

    axis = (np.arange(size) - size // 2) * dq
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    vol = torch.from_numpy(v(grid)[None].astype(np.float32))
    q = grid_q(31, 0.05, lam).reshape(-1, 3)  # Ewald points up to 1.06 rad/nm (inside the grid)
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_rotvec(0.9 * np.array([1.0, 2.0, 3.0]) / np.sqrt(14)).as_matrix()  # model->lab
    ours = slice_volumes(vol, dq, torch.from_numpy(q).float(), torch.from_numpy(rot[None]).float())[0].numpy()
    right = v(q @ rot)  # rows R^T q
    wrong = v(q @ rot.T)  # rows R q
    err = np.abs(ours - right).max()
    assert err < 0.012  # trilinear: h^2 / 8 x the curvature (0.005 at 7 voxels per width)
    assert np.abs(ours - wrong).max() > 10 * err
    assert np.abs(right - wrong).max() > 0.1  # the two orientations differ where the slice is bright


def test_slicer_passes_gradients_to_the_volume():
    vol = torch.ones(1, 9, 9, 9, requires_grad=True)
    q = torch.tensor([[0.1, 0.0, 0.0]])
    slice_volumes(vol, 0.1, q, torch.eye(3)[None]).sum().backward()
    assert vol.grad[0, 5, 4, 4] == pytest.approx(1.0)  # q = +1 voxel along x


@pytest.mark.parametrize("grid,dq", [(41, 0.045), (65, 0.02)])
def test_preprocessing_follows_the_geometry(grid, dq):
    avg, t, quats, _, _ = melt_averages(12, seed=1, grid=grid, dq_nm=dq, photons=1e5)
    idx = np.arange(12)
    prep = plan_preprocessing(avg, idx, input_size=27, volume_size=27)
    radius = (grid // 2) * dq
    assert prep.q_max_nm <= radius + 1e-9
    assert prep.q_min_nm >= 2 * dq - 1e-9  # the beamstop (2 px) is excluded
    assert prep.dq3_nm == pytest.approx(prep.q_max_nm / 13)
    inputs = model_inputs(avg, prep, quats, np.ones(12))
    obs = inputs.observed
    assert obs.shape == (12, 27, 27) and obs.any() and not obs[:, 13, 13].any()  # beamstop unobserved
    means = (inputs.x * obs).sum((1, 2)) / obs.sum((1, 2))
    # one data-set-wide constant: the median average has mean 1, each keeps its own scale
    assert np.median(means) == pytest.approx(1.0, rel=1e-5) and means.max() / means.min() > 1.2
    np.testing.assert_allclose(inputs.input_scale, means, rtol=1e-5)
    # photons: x * p * count_scale summed over a model pixel = the members' photons there
    n_model = prep.input_size
    axis = (np.arange(n_model) - n_model // 2) * prep.dq2_nm
    p2 = prep.profile_at(np.hypot(axis[:, None], axis[None, :]))
    photons = (inputs.x * p2 * obs).sum((1, 2)) * inputs.count_scale
    raw = (avg.intensity * avg.valid).sum((1, 2)) * avg.n_frames
    np.testing.assert_allclose(photons / raw, np.median(photons / raw), rtol=0.1)
    assert np.median(photons / raw) == pytest.approx(1.0, rel=0.15)
    # a particle-size bound tightens q_max: Nyquist for 120 nm at 27^3 is 13 pi / 120
    tight = plan_preprocessing(avg, idx, input_size=27, volume_size=27, particle_size_nm=120.0)
    assert tight.q_max_nm == pytest.approx(min(prep.q_max_nm, 13 * np.pi / 120))
    # asking for more photons per pixel pulls q_max in, to where the profile still has them
    dim = plan_preprocessing(avg, idx, input_size=27, volume_size=27, min_counts=30)
    assert prep.q_min_nm < dim.q_max_nm < prep.q_max_nm
    from spicompute.qrange import radial_profile

    q_axis, prof, _ = radial_profile(avg, avg.dq_nm)
    inside = (q_axis > prep.q_min_nm) & (q_axis < dim.q_max_nm)
    assert (prof[inside] * 200 >= 30).all()
    with pytest.raises(InputError, match="averages/intensity: usable q-range"):
        plan_preprocessing(avg, idx, input_size=27, volume_size=27, min_counts=1e6)


@pytest.mark.parametrize("grid,dq", [(185, 0.017), (129, 0.03)])
def test_binned_resampling_keeps_photons_and_fringe_minima(grid, dq):
    """``vae.resample: bin`` is the mean over each model pixel's area: a flat image stays flat, a
    model pixel equals the mean of the source pixels whose q lies in its square (checked by q on a
    random image), a half-masked image is observed only where at least half a model pixel was, and
    a sphere's fringe minima stay deeper than after the default's Gaussian pre-filter (what the
    option is for).  Two detector grids."""
    from dataclasses import replace

    from spicompute.shapes import sphere_intensity
    from spicompute.vae.data import resample_averages

    q = grid_q(grid, dq, 0.2066)
    radius_nm = 26.9
    sphere = sphere_intensity(q, radius_nm)
    valid = (np.linalg.norm(q[..., :2], axis=-1) >= 2 * dq).astype(np.float32)
    flat = np.ones_like(sphere)
    half = valid.copy()
    half[:, : grid // 2 + 5] = 0.0    # the left half (and a few columns more) unobserved
    avg = AverageSet(np.stack([sphere * valid, flat * valid, flat * half]).astype(np.float32),
                     np.stack([valid, valid, half]), np.arange(3), np.zeros(3), np.arange(3), np.full(3, 100.0), dq,
                     0.2066)
    prep = plan_preprocessing(avg, np.arange(2), input_size=27, volume_size=27, q_max_nm=0.5,
                              particle_size_nm=2 * radius_nm)
    binned, obs_b = resample_averages(avg, replace(prep, resample="bin"))
    gauss, obs_g = resample_averages(avg, prep)
    narrow, _ = resample_averages(avg, replace(prep, prefilter_px=0.25))
    np.testing.assert_allclose(binned[1][obs_b[1]], 1.0, rtol=1e-6)
    # half-masked: observed model pixels only right of the mask edge, never across it
    n, c = 27, 13
    edge_col = (np.arange(n) - c) * prep.dq2_nm / dq + avg.center
    assert not obs_b[2][:, edge_col < grid // 2 + 5 - 1].any() and obs_b[2][:, edge_col > grid // 2 + 6].any()
    # each model pixel is the mean of the source pixels whose q lies in its square (checked by q, not by index)
    axis = (np.arange(n) - c) * prep.dq2_nm
    noise = np.random.default_rng(0).random(sphere.shape).astype(np.float32)
    rand = AverageSet(noise[None], valid[None], np.arange(1), np.zeros(1), np.arange(1), np.full(1, 100.0), dq, 0.2066)
    binned_noise, obs_noise = resample_averages(rand, replace(prep, resample="bin"))
    for k, m in [(13, 20), (5, 13), (20, 7), (9, 16)]:
        inside = ((np.abs(q[..., 1] - axis[k]) < prep.dq2_nm / 2) & (np.abs(q[..., 0] - axis[m]) < prep.dq2_nm / 2)
                  & (valid > 0))
        assert obs_noise[0, k, m] and binned_noise[0, k, m] == pytest.approx(noise[inside].mean(), rel=1e-5)
    # the first two fringe minima of the sphere (q R = 4.49, 7.73): deeper when binned
    qn = np.hypot(axis[:, None], axis[None, :])
    for x in (4.493, 7.725):
        ring = obs_b[0] & obs_g[0] & (np.abs(qn * radius_nm - x) < 0.6 * prep.dq2_nm * radius_nm)
        assert binned[0][ring].mean() < 0.8 * gauss[0][ring].mean()
        assert narrow[0][ring].mean() < 0.9 * gauss[0][ring].mean()   # vae.prefilter_px: a narrower pre-filter


def test_presets_end_on_odd_centred_grids():
    for name in PRESETS:
        arch = architecture(name, 2)
        assert arch.volume_size % 2 == 1
        assert arch.volume_size == {"demo": 27, "low": 81, "intermediate": 161, "high": 243}[name]
    model = VAE(architecture("demo", 2))
    vol, mu, logvar = model(torch.zeros(3, 2, 27, 27), torch.zeros(3, 5), torch.zeros(3, 2))
    assert vol.shape == (3, 27, 27, 27) and (vol >= 0).all() and mu.shape == (3, 2)


@pytest.mark.parametrize("preset", ["demo", "low"])
def test_decoder_skips_onednn_only_on_the_upsampling_and_output_layers(preset, monkeypatch):
    """The decoder's CPU kernel rule: the same volumes as all-oneDNN up to float rounding, the layers
    it names are the non-overlapping upsampling (stride 3 = kernel) and 1-channel ones, and the
    global oneDNN flag is left as it was."""
    from spicompute.vae.model import native_deconv, onednn_off

    decoder = VAE(architecture(preset, 1)).decoder
    convs = [m for m in decoder.deconv if isinstance(m, torch.nn.ConvTranspose3d)]
    assert [native_deconv(m) for m in convs] == [m.stride[0] == 3 or m.out_channels == 1 for m in convs]
    overlapping = torch.nn.ConvTranspose3d(16, 8, 3, stride=2, padding=1)    # the paper presets' stride 2
    assert not native_deconv(overlapping)
    assert native_deconv(convs[-1]) and not native_deconv(convs[0])      # output layer / first (stride 1)
    z = torch.tensor([[-1.0], [0.5]])
    was = torch.backends.mkldnn.enabled
    with torch.no_grad():
        mixed = decoder(z)
        assert torch.backends.mkldnn.enabled == was
        monkeypatch.setattr("spicompute.vae.model.native_deconv", lambda layer: False)
        all_onednn = decoder(z)
    torch.testing.assert_close(mixed, all_onednn, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError), onednn_off():                     # restored on an error too
        raise RuntimeError("inside")
    assert torch.backends.mkldnn.enabled == was


def test_reconstruction_losses_vanish_for_a_perfect_fit_at_any_scale():
    x = torch.rand(4, 50) + 0.1
    obs = torch.rand(4, 50) > 0.3
    k = torch.full((4,), 100.0)
    prof = torch.rand(50) + 0.5
    shape = torch.linspace(0.5, 2.0, 50)
    for kind in ("mse_log", "poisson"):
        # each average's overall scale is a fitted parameter, not an error
        loss, s = reconstruction_loss(x, x * torch.tensor([[0.3], [1.0], [2.0], [7.0]]), obs, k, kind, 0.1, prof)
        assert loss.abs().max() < 1e-5
        np.testing.assert_allclose(s.numpy(), [0.3, 1.0, 2.0, 7.0], rtol=1e-4)
        assert (reconstruction_loss(x * shape, x, obs, k, kind, 0.1, prof)[0] > 1e-3).all()
    # unobserved pixels do not count
    y = x.clone()
    y[~obs] = 100.0
    assert reconstruction_loss(y, x, obs, k, "mse_log", 0.1)[0].abs().max() < 1e-6
    assert kl_beta(TrainConfig(kl_weight=0.1, kl_warmup_epochs=4), 1) == pytest.approx(0.05)


def test_fitted_scale_minimises_mse_log():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 200, generator=gen) + 0.05
    target = (torch.rand(3, 200, generator=gen) + 0.05) * torch.tensor([[0.2], [1.0], [5.0]])
    obs = torch.ones(3, 200, dtype=torch.bool)
    k, prof = torch.ones(3), torch.ones(200)
    loss, s = reconstruction_loss(pred, target, obs, k, "mse_log", 0.1, prof)
    for f in (0.97, 1.03):  # any other scale fits worse
        d = torch.log(pred * s[:, None] * f + 0.1) - torch.log(target + 0.1)
        assert ((d * d).mean(1) > loss).all()


def _slices_at_random_orientations(volume, dq3, n, dq, lam, m, rng):
    """Noiseless averages (photons/pixel/frame) of ``volume`` on an n x n grid of step dq, with
    different fluences and member counts, a 2-pixel beamstop; and their quaternions."""
    from spicompute.orient.slicing import VolumeSampler

    quats = random_quaternions(m, rng)
    q = grid_q(n, dq, lam).reshape(-1, 3)
    fluence = np.exp(rng.uniform(0.0, np.log(20.0), m)) * 1e-6
    inten = VolumeSampler(volume, dq3).slices(q, quats) * fluence[:, None]
    valid = np.broadcast_to((np.linalg.norm(q[:, :2], axis=1) >= 2 * dq).reshape(n, n), (m, n, n))
    frames = rng.integers(50, 500, m).astype(float)
    avg = AverageSet(inten.reshape(m, n, n), valid.astype(np.float32), np.arange(m), np.zeros(m), np.arange(m),
                     frames, dq, lam)
    return avg, quats


@pytest.mark.slow
def test_the_exact_cube_volume_fits_its_own_slices_and_a_sphere_does_not(rng):
    from spicompute.shapes import cube_intensity, sphere_intensity
    from spicompute.vae.train import slice_loss

    n, dq, lam, edge, m = 27, 0.045, 0.2066, 42.0, 48
    axis = (np.arange(n) - n // 2) * dq
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    cube = cube_intensity(grid, edge)
    avg, quats = _slices_at_random_orientations(cube, dq, n, dq, lam, m, rng)
    prep = plan_preprocessing(avg, np.arange(m), input_size=n, volume_size=n, q_max_nm=(n // 2) * dq,
                              particle_size_nm=52.0, log_floor=0.1)
    assert prep.dq3_nm == pytest.approx(dq)
    inputs = model_inputs(avg, prep, quats, np.ones(m))
    data = TensorData(inputs, prep, torch.device("cpu"))
    p3 = prep.profile_at(prep.volume_q_norm())
    radius = (3 / (4 * np.pi)) ** (1 / 3) * edge  # a sphere of the cube's volume
    volumes = {name: torch.from_numpy(np.repeat((v / p3)[None], m, 0).astype(np.float32))
               for name, v in (("cube", cube), ("sphere", sphere_intensity(grid, radius)))}
    idx = torch.arange(m)
    scores = {(kind, name): slice_loss(v, data, idx, kind)[0].mean().item()
              for kind in ("mse_log", "poisson") for name, v in volumes.items()}
    assert scores["mse_log", "cube"] <= 0.01 * 0.128
    assert scores["mse_log", "sphere"] >= 10 * max(scores["mse_log", "cube"], 0.01 * 0.128)
    assert scores["poisson", "cube"] <= 1e-2  # deviance per pixel of noiseless counts
    assert scores["poisson", "sphere"] >= 100.0
    # control: a per-average normalisation to mean 1 (the target no longer carries the
    # average's scale) leaves the exact volume far from its own slices at every global scale
    obs = data.observed
    target = data.target / ((data.target * obs).sum(1) / obs.sum(1))[:, None]
    pred = slice_volumes(volumes["cube"] * data.profile3, data.dq3, data.q_lab, data.rotations) / data.profile
    pred = pred / pred[obs].mean()
    best = min(((obs * (torch.log(c * pred + 0.1) - torch.log(target + 0.1)) ** 2).sum(1) / obs.sum(1)).mean().item()
               for c in np.exp(np.linspace(-3, 3, 121)))
    assert best >= 0.05


def test_poisson_loss_is_the_likelihood_of_the_members_photons(rng):
    from spicompute.shapes import cube_intensity, sphere_intensity
    from spicompute.vae.train import slice_loss

    n, dq, lam, edge, m = 27, 0.045, 0.2066, 42.0, 16
    axis = (np.arange(n) - n // 2) * dq
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    cube = cube_intensity(grid, edge)
    avg, quats = _slices_at_random_orientations(cube, dq, n, dq, lam, m, rng)
    truth = avg.intensity.copy()
    counts = rng.poisson(truth * avg.n_frames[:, None, None])  # the members' photons
    noisy = AverageSet(counts / avg.n_frames[:, None, None], avg.weight, avg.average_id, avg.run, avg.model,
                       avg.n_frames, dq, lam)
    prep = plan_preprocessing(noisy, np.arange(m), input_size=n, volume_size=n, q_max_nm=(n // 2) * dq,
                              particle_size_nm=52.0, log_floor=0.1)
    inputs = model_inputs(noisy, prep, quats, np.ones(m))
    data = TensorData(inputs, prep, torch.device("cpu"))
    p3 = prep.profile_at(prep.volume_q_norm())
    vol = torch.from_numpy(np.repeat((cube / p3)[None], m, 0).astype(np.float32))
    idx = torch.arange(m)
    loss, scale = slice_loss(vol, data, idx, "poisson")
    # the scale's minimum sits at the true one: fluence x members relative to the model
    pred = slice_volumes(vol * data.profile3, data.dq3, data.q_lab, data.rotations) / data.profile
    k = data.count_scale[:, None] * data.profile[None]
    mu_true = torch.from_numpy(truth.reshape(m, -1)[:, data.target_index] * avg.n_frames[:, None]).float()
    true_scale = ((mu_true * data.observed).sum(1) / (pred * k * data.observed).sum(1))
    np.testing.assert_allclose(scale.numpy(), true_scale.numpy(), rtol=0.02)
    for f in (0.9, 1.1):
        worse = reconstruction_loss(pred * f, data.target, data.observed, data.count_scale, "poisson", 0.1,
                                    data.profile)[0]
        np.testing.assert_allclose(worse.numpy(), loss.numpy(), rtol=1e-4)  # re-fitted: scale-free
        y, k = data.target.double() * k.double(), k.double()
        mu = (pred * scale[:, None] * f).double() * k + 1e-6
        dev = 2 * (data.observed * (mu - y + torch.where(y > 0, y * torch.log(y / mu), 0 * y))).sum(1)
        assert (dev / data.observed.sum(1) > loss).all()
    # Poisson noise alone: about one unit of deviance per pixel where counts are high
    assert 0.3 < loss.mean().item() < 3.0
    radius = (3 / (4 * np.pi)) ** (1 / 3) * edge
    sphere = torch.from_numpy(np.repeat((sphere_intensity(grid, radius) / p3)[None], m, 0).astype(np.float32))
    assert (slice_loss(sphere, data, idx, "poisson")[0] > 3 * loss).all()


@pytest.mark.slow
def test_encode_and_decode_in_batches_sized_for_the_memory():
    from spicompute.vae.train import decoder_bytes_per_volume, volume_batch

    inter = architecture("intermediate", 1)
    per = decoder_bytes_per_volume(inter, training=False)
    assert 0.3e9 < per < 3e9  # one 161^3 volume: 17 MB of output, ~1 GB of decoder temporaries
    # half of a free 32 GB GPU decodes a batch of 161^3 volumes, never all 256 at once
    assert 4 <= volume_batch(inter, torch.device("cpu"), budget_bytes=15 * 2**30) <= 32
    assert volume_batch(inter, torch.device("cpu"), budget_bytes=per - 1) == 1
    assert volume_batch(architecture("demo", 1), torch.device("cpu")) == 256
    assert decoder_bytes_per_volume(inter, training=True) > per
    # the Fourier interpolation before slicing (vae.volume_upsample) is counted: ~3 floats per fine voxel
    extra = decoder_bytes_per_volume(inter, training=False, upsample=2) - per
    assert 3 * 4 * 321 ** 3 <= extra <= 4 * 3 * 4 * 321 ** 3   # with the measured overhead factor
    assert volume_batch(inter, torch.device("cpu"), budget_bytes=15 * 2**30, upsample=2) < \
        volume_batch(inter, torch.device("cpu"), budget_bytes=15 * 2**30)
    # the batch changes nothing but the memory
    avg, t, quats, vols, levels, idx, arch, prep, inputs = _setup(n=10)
    torch.manual_seed(0)
    model = VAE(arch)
    data = TensorData(inputs, prep, torch.device("cpu"))
    for a, b in zip(encode(model, data), encode(model, data, batch=3)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    z = np.linspace(-1, 1, 5)[:, None]
    gen = decode_volumes(model, z, prep)
    np.testing.assert_allclose(gen, decode_volumes(model, z, prep, batch=2), rtol=1e-5, atol=1e-7)
    # generated volumes: shape (mean 1 of I/p over the observed shell) times the profile
    shell = prep.volume_observed()
    p3 = prep.profile_at(prep.volume_q_norm())
    np.testing.assert_allclose((gen / p3)[:, shell].mean(1), 1.0, rtol=1e-4)


def _setup(n=120, seed=0, latent=1, photons=2e5):
    avg, t, quats, vols, levels = melt_averages(n, seed=seed, photons=photons)
    idx = np.arange(n)
    arch = architecture("demo", latent)
    prep = plan_preprocessing(avg, idx, input_size=arch.input_size, volume_size=arch.volume_size,
                              log_floor=0.1)
    inputs = model_inputs(avg, prep, quats, np.ones(n))
    return avg, t, quats, vols, levels, idx, arch, prep, inputs


def _one_thread(fn):
    # one thread: the float summation order (and so the trajectory) is the same on every machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def _train_melt(shuffle_orientations: bool = False):
    """Train the demo VAE on the 120-average melt series: (t, mu, history, model, prep, vols)."""
    torch.manual_seed(0)
    avg, t, quats, vols, levels, idx, arch, prep, inputs = _setup()
    if shuffle_orientations:  # every average keeps its pattern but gets another's orientation
        perm = np.random.default_rng(1).permutation(len(quats))
        inputs = model_inputs(avg, prep, quats[perm], np.ones(len(quats)))
    model = VAE(arch)
    data = TensorData(inputs, prep, torch.device("cpu"))
    history = train_vae(model, data, idx, TrainConfig(epochs=40, batch_size=16, kl_weight=0.01, seed=0))
    mu, _, _ = encode(model, data)
    return t, mu, history, model, prep, vols


@pytest.mark.slow
@pytest.mark.slow
def test_latent_follows_the_melt_and_volumes_match_the_ends():
    # measured (seed 0, 40 epochs, one thread): recon 0.70 -> 0.070, Spearman 0.978 over 0.1 < t < 0.9
    _one_thread(_check_melt_latent)


@pytest.mark.slow
@pytest.mark.slow
def test_shuffled_orientations_fit_worse_and_lose_the_melt():
    # negative control of the test above: the same patterns at the wrong orientations
    # (measured: recon 0.54 against 0.070, Spearman 0.23)
    t, mu, history, *_ = _one_thread(lambda: _train_melt(shuffle_orientations=True))
    assert history[-1]["recon"] > 3 * 0.070
    mid = (t > 0.1) & (t < 0.9)
    assert abs(spearmanr(mu[mid, 0], t[mid])[0]) < 0.6


def _check_melt_latent():
    t, mu, history, model, prep, vols = _train_melt()
    assert history[-1]["recon"] < 0.2 * history[0]["recon"]
    mid = (t > 0.1) & (t < 0.9)
    rho = spearmanr(mu[mid, 0], t[mid])[0]
    assert abs(rho) >= 0.93, rho
    # generated volumes at the two ends of z vs the true cube and sphere intensities
    z_cube, z_sphere = (mu[:, 0].min(), mu[:, 0].max()) if rho > 0 else (mu[:, 0].max(), mu[:, 0].min())
    gen = decode_volumes(model, np.array([[z_cube], [z_sphere]]), prep)
    from spicompute.orient.slicing import VolumeSampler

    c = prep.volume_size // 2
    axis = (np.arange(prep.volume_size) - c) * prep.dq3_nm
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    truth = [VolumeSampler(vols[i], 0.03)(grid) for i in (0, -1)]
    obs = prep.volume_observed().ravel()

    def cc(a, b):
        return np.corrcoef(np.log(a.ravel()[obs] + 1e-3 * a.max()), np.log(b[obs] + 1e-3 * b.max()))[0, 1]

    assert cc(gen[0], truth[0]) > cc(gen[0], truth[1])
    assert cc(gen[1], truth[1]) > cc(gen[1], truth[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_training_matches_cpu_at_the_first_step(amp):
    avg, t, quats, vols, levels, idx, arch, prep, inputs = _setup(n=32)
    losses = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = VAE(arch).to(device)
        data = TensorData(inputs, prep, torch.device(device))
        hist = train_vae(model, data, idx, TrainConfig(epochs=2, batch_size=16, amp=amp and device == "cuda"))
        losses[device] = [h["loss"] for h in hist]
        mu, _, _ = encode(model, data)
        assert np.isfinite(mu).all()
    # same initial weights and batches: the first epoch's loss agrees to float/AMP precision
    assert losses["cuda"][0] == pytest.approx(losses["cpu"][0], rel=0.05 if amp else 1e-3)


def test_particle_size_from_the_radial_profile():
    from spicompute.qrange import radial_profile
    from spicompute.emc2d.particle_size import estimate_particle_size

    q = np.linspace(0.02, 1.0, 200)
    x = q * 25.0
    sphere = (3 * (np.sin(x) - x * np.cos(x)) / x**3) ** 2
    assert estimate_particle_size(q, sphere, 0.05) == pytest.approx(50.0, rel=0.1)
    # cubes of 42 nm (volume-equivalent sphere: 52 nm) on two geometries
    for grid, dq in ((41, 0.045), (65, 0.02)):
        avg, t, *_ = melt_averages(40, seed=1, grid=grid, dq_nm=dq)
        qa, prof, _ = radial_profile(avg, index=np.flatnonzero(t < 0.2))
        assert estimate_particle_size(qa, prof, 2 * dq) == pytest.approx(52.0, rel=0.15)
    # a featureless Porod decay has no size
    assert estimate_particle_size(q, q**-4.0, 0.05) is None


@pytest.mark.slow
def test_class_blur_forward_model_explains_blurred_averages_and_not_sharp_ones(rng):
    """``vae.class_blur_deg``: averages made (by the orient stage's sampler, an independent path) as
    the mean of a cube's slices over +-8 deg turns about the detector axes are fitted far better by
    the exact cube when the loss renders the same spread; sharp averages (negative control) are
    fitted worse with it than without."""
    from scipy.spatial.transform import Rotation

    from spicompute.orient.slicing import VolumeSampler
    from spicompute.shapes import cube_intensity
    from spicompute.vae.train import class_blur_rotations, slice_loss

    n, dq, lam, edge, m, blur = 27, 0.045, 0.2066, 42.0, 24, 8.0
    axis = (np.arange(n) - n // 2) * dq
    cube = cube_intensity(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1), edge)
    sharp, quats = _slices_at_random_orientations(cube, dq, n, dq, lam, m, rng)
    # the same averages, each the mean over the 7 lab-frame turns (scalar-first quaternions)
    q = grid_q(n, dq, lam).reshape(-1, 3)
    base = Rotation.from_quat(np.roll(quats, -1, axis=1))
    turns = [np.zeros(3)] + [s * np.deg2rad(blur) * e for e in np.eye(3) for s in (1, -1)]
    fluence = sharp.intensity.reshape(m, -1).sum(1) / VolumeSampler(cube, dq).slices(q, quats).sum(1)
    mean = np.mean([VolumeSampler(cube, dq).slices(q, np.roll((Rotation.from_rotvec(t) * base).as_quat(), 1, axis=1))
                    for t in turns], axis=0) * fluence[:, None]
    blurred = AverageSet(mean.reshape(m, n, n).astype(np.float32), sharp.weight, sharp.average_id, sharp.run,
                         sharp.model, sharp.n_frames, dq, lam)
    scores = {}
    for name, avg in (("sharp", sharp), ("blurred", blurred)):
        prep = plan_preprocessing(avg, np.arange(m), input_size=n, volume_size=n, q_max_nm=(n // 2) * dq,
                                  particle_size_nm=52.0, log_floor=0.1)
        data = TensorData(model_inputs(avg, prep, quats, np.ones(m)), prep, torch.device("cpu"))
        vol = torch.from_numpy(np.repeat((cube / prep.profile_at(prep.volume_q_norm()))[None], m, 0)
                               .astype(np.float32))
        for model_blur in (0.0, blur):
            scores[name, model_blur] = slice_loss(vol, data, torch.arange(m), "mse_log",
                                                  class_blur_rotations(model_blur))[0].mean().item()
    assert class_blur_rotations(0.0) is None and class_blur_rotations(blur).shape == (7, 3, 3)
    assert scores["blurred", blur] < 0.2 * scores["blurred", 0.0]
    assert scores["sharp", 0.0] < 0.2 * scores["sharp", blur]


@pytest.mark.slow
@pytest.mark.parametrize("edge_nm, dq", [(42.0, 0.045), (60.0, 0.03)])
def test_size_spread_forward_model_explains_size_dispersed_averages_and_not_sharp_ones(edge_nm, dq):
    """``vae.size_spread``: cube averages made by the orient stage's sampler (an independent path) as
    the mean of ``a^6 I(a q)`` over a Gaussian spread of sizes (4 % rms, 41 sizes) are fitted far
    better by the exact one-size cube when the loss renders the spread with its 3-point rule;
    sharp averages (negative control) are fitted worse with it than without.  Two particle sizes
    and grid steps."""
    from spicompute.orient.slicing import slice_volume
    from spicompute.shapes import cube_intensity
    from spicompute.vae.train import size_spread_kernel, slice_loss

    n, lam, m, spread = 27, 0.2066, 24, 0.04
    quats = random_quaternions(m, np.random.default_rng(3))
    axis = (np.arange(n) - n // 2) * dq
    exact = cube_intensity(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1), edge_nm)
    q = grid_q(n, dq, lam).reshape(-1, 3)
    sizes = 1 + spread * np.linspace(-3, 3, 41)
    weights = np.exp(-0.5 * ((sizes - 1) / spread) ** 2)
    dispersed = sum(w * slice_volume(exact, dq, q, quats, np.full(m, a)) for a, w in zip(sizes, weights))
    dispersed /= weights.sum()
    valid = np.broadcast_to((np.linalg.norm(q[:, :2], axis=1) >= 2 * dq).reshape(n, n), (m, n, n))
    scores = {}
    for name, image in (("sharp", slice_volume(exact, dq, q, quats)), ("dispersed", dispersed)):
        avg = AverageSet(image.reshape(m, n, n) * valid, valid.astype(np.float32), np.arange(m), np.zeros(m),
                         np.arange(m), np.full(m, 100.0), dq, lam)
        prep = plan_preprocessing(avg, np.arange(m), input_size=n, volume_size=n, q_max_nm=(n // 2) * dq,
                                  particle_size_nm=1.24 * edge_nm, log_floor=0.1)
        data = TensorData(model_inputs(avg, prep, quats, np.ones(m)), prep, torch.device("cpu"))
        vol = torch.from_numpy(np.repeat((exact / prep.profile_at(prep.volume_q_norm()))[None], m, 0)
                               .astype(np.float32))
        for model_spread in (0.0, spread):
            scores[name, model_spread] = slice_loss(vol, data, torch.arange(m), "mse_log",
                                                    size_spread=model_spread)[0].mean().item()
    assert size_spread_kernel(0.0) == ()
    (a0, w0), (a1, w1), (a2, w2) = size_spread_kernel(spread)
    assert w0 + w1 + w2 == pytest.approx(1.0)
    assert w1 * (a1 - 1) ** 2 + w2 * (a2 - 1) ** 2 == pytest.approx(spread ** 2)   # the spread's variance
    assert scores["dispersed", spread] < 0.2 * scores["dispersed", 0.0]
    assert scores["sharp", 0.0] < 0.2 * scores["sharp", spread]


@pytest.mark.slow
@pytest.mark.parametrize("edge_nm, dq3, finer", [(42.0, 0.045, 4), (60.0, 0.03, 3)])
def test_detector_target_and_fourier_slicing_let_the_exact_volume_fit_its_closed_form_averages(edge_nm, dq3, finer):
    """Averages of a cube made from the closed form at the Ewald q of a detector grid 3-4x finer than
    the model's (not by any slicer).  The exact cube on the 27^3 grid fits them (mse_log, fitted scale):
    - with a finer target (``target_oversample: 2``) > 2x better when the volume is interpolated by its
      Fourier transform (``volume_upsample: 2``) than trilinearly, and > 2x better than by default;
    - at the averages' own pixels (``loss_target: detector``, nothing resampled) 2.5x better with
      ``volume_upsample: 2`` than trilinearly, better still with 3;
    - a wrong volume (a sphere of the same volume) stays far off every way (negative control).
    Two particle sizes and grid steps."""
    from spicompute.orient.quaternions import rotation_matrices
    from spicompute.shapes import cube_intensity, sphere_intensity

    n, lam, m = 27, 0.2066, 16
    quats = random_quaternions(m, np.random.default_rng(3))
    size2, dq2 = (n - 1) * finer + 1, dq3 / finer
    images = cube_intensity(grid_q(size2, dq2, lam) @ rotation_matrices(quats)[:, None], edge_nm)
    valid = np.broadcast_to(np.linalg.norm(grid_q(size2, dq2)[..., :2], axis=-1) >= 2 * dq3, (m, size2, size2))
    avg = AverageSet((images * valid).astype(np.float32), valid.astype(np.float32), np.arange(m), np.zeros(m),
                     np.arange(m), np.full(m, 100.0), dq2, lam)
    axis = (np.arange(n) - n // 2) * dq3
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    scores = {}
    variants = {"default": {}, "finer grid": {"target_oversample": 2},
                "finer grid f2": {"target_oversample": 2, "volume_upsample": 2},
                "detector": {"loss_target": "detector"},
                "detector f2": {"loss_target": "detector", "volume_upsample": 2},
                "detector f3": {"loss_target": "detector", "volume_upsample": 3}}
    for name, options in variants.items():
        prep = plan_preprocessing(avg, np.arange(m), input_size=n, volume_size=n, q_max_nm=(n // 2) * dq3,
                                  particle_size_nm=1.24 * edge_nm, log_floor=0.1, **options)
        inputs = model_inputs(avg, prep, quats, np.ones(m))
        assert inputs.x.shape == (m, n, n)   # the encoder keeps its grid
        if name == "finer grid":
            assert inputs.target.shape == (m, (2 * n - 1) ** 2)
            np.testing.assert_allclose(inputs.target_q_lab, prep.q_lab(target=True))
        if name == "default":   # the encoder's grid is the target, with its geometry
            assert np.shares_memory(inputs.target, inputs.x) and inputs.target.shape == (m, n * n)
            np.testing.assert_allclose(inputs.target_q_lab, grid_q(n, prep.dq2_nm, lam).reshape(-1, 3), rtol=1e-5,
                                       atol=1e-6)
        if name.startswith("detector"):   # every source pixel in the q range, its own q
            q_in = np.hypot(*avg.q_grid()[..., :2].transpose(2, 0, 1))
            inside = (q_in >= prep.q_min_nm) & (q_in <= prep.q_max_nm)
            assert inputs.target.shape == (m, inside.sum())
            np.testing.assert_allclose(inputs.target_q_lab, grid_q(size2, dq2, lam)[inside], rtol=1e-5, atol=1e-6)
        data = TensorData(inputs, prep, torch.device("cpu"))
        p3 = prep.profile_at(prep.volume_q_norm())
        for shape, vol in (("cube", cube_intensity(grid, edge_nm)),
                           ("sphere", sphere_intensity(grid, (3 / (4 * np.pi)) ** (1 / 3) * edge_nm))):
            v = torch.from_numpy(np.repeat((vol / p3)[None], m, 0).astype(np.float32))
            scores[name, shape] = slice_loss(v, data, torch.arange(m), "mse_log")[0].mean().item()
    # the band-limited interpolation, not the finer target alone, is what lets the exact volume fit
    assert scores["finer grid f2", "cube"] < 0.5 * min(scores["finer grid", "cube"], scores["default", "cube"])
    assert scores["detector f2", "cube"] < 0.4 * scores["detector", "cube"]
    assert scores["detector f3", "cube"] < 0.6 * scores["detector f2", "cube"]
    best = min(scores[name, "cube"] for name in variants)
    for name in variants:
        assert scores[name, "sphere"] > 20 * best and scores[name, "sphere"] > 3 * scores[name, "cube"]


@pytest.mark.parametrize("factor", [2, 3])
def test_fourier_upsampling_is_exact_for_a_band_limited_intensity(factor):
    """A sphere's intensity sampled at 1.4x its Nyquist step (the default bright set's grid: dq 0.041
    rad/nm, diameter 52 nm) is band-limited in the grid's box: zero-padding its transform gives the
    closed form between the grid points (mean |log error| < 0.005 inside 0.8 q_max), where linear
    midpoints fill the fringe minima (> 20x worse).  Negative control: a particle too large for the
    box (sampled below Nyquist) is not recovered.  The grid points are kept; an even edge is refused."""
    from spicompute.shapes import sphere_intensity
    from spicompute.vae.train import upsample_fourier

    n, dq = 27, 0.041

    def sampled(step, radius):
        axis = (np.arange(step) - step // 2) * dq * (n - 1) / (step - 1)
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
        return sphere_intensity(grid, radius), np.linalg.norm(grid, axis=-1)

    def log_error(radius):
        coarse, _ = sampled(n, radius)
        fine_truth, q = sampled(factor * (n - 1) + 1, radius)
        up = upsample_fourier(torch.from_numpy(coarse)[None], factor)[0].numpy()
        np.testing.assert_allclose(up[::factor, ::factor, ::factor], coarse, atol=1e-12 * coarse.max())
        inside = q < 0.8 * (n // 2) * dq
        floor = 1e-4 * coarse.max()
        return up, np.abs(np.log(up + floor) - np.log(fine_truth + floor))[inside].mean(), coarse, inside, fine_truth

    up, err, coarse, inside, truth = log_error(26.0)
    assert up.shape == (factor * (n - 1) + 1,) * 3 and err < 0.005
    if factor == 2:   # linear midpoints along the first axis, the others on grid points
        linear = 0.5 * (coarse[:-1] + coarse[1:])
        floor = 1e-4 * coarse.max()
        mid = np.abs(np.log(linear + floor) - np.log(truth[1::2, ::2, ::2] + floor))[inside[1::2, ::2, ::2]].mean()
        fourier_mid = np.abs(np.log(up[1::2, ::2, ::2] + floor)
                             - np.log(truth[1::2, ::2, ::2] + floor))[inside[1::2, ::2, ::2]].mean()
        assert mid > 20 * fourier_mid
    assert log_error(26.0 * 2.5)[1] > 10 * err   # undersampled: the transform aliases
    with pytest.raises(ValueError, match="odd"):
        upsample_fourier(torch.zeros(1, 8, 8, 8))


@pytest.mark.parametrize("edge_nm", [42.0, 60.0])
def test_auto_oversampling_follows_the_grid_step_against_the_particle_size(edge_nm):
    """``auto`` interpolates 2x where the grid samples the particle's intensity < 3x finer than pi / D
    (the 27^3 grid with q_max at the particle's Nyquist bound: 1x), and not on a fine grid (61^3 over
    a q range a third as wide, ~6x); a detector target resolves to 1; explicit values are kept and a
    wrong one names the parameter.  The particle size is estimated from the averages (two sizes)."""
    from spicompute.errors import ParameterError
    from spicompute.orient.quaternions import rotation_matrices
    from spicompute.shapes import cube_intensity
    from spicompute.vae.data import sampling_ratio

    m, size2, dq2, lam = 24, 129, 0.012, 0.2066
    quats = random_quaternions(m, np.random.default_rng(5))
    images = 1e4 * cube_intensity(grid_q(size2, dq2, lam) @ rotation_matrices(quats)[:, None], edge_nm)
    valid = np.broadcast_to(np.linalg.norm(grid_q(size2, dq2)[..., :2], axis=-1) >= 3 * dq2, (m, size2, size2))
    avg = AverageSet((images * valid).astype(np.float32), valid.astype(np.float32), np.arange(m), np.zeros(m),
                     np.arange(m), np.full(m, 100.0), dq2, lam)

    def plan(volume_size, q_max="auto", **options):
        return plan_preprocessing(avg, np.arange(m), input_size=volume_size, volume_size=volume_size,
                                  q_max_nm=q_max, log_floor=0.1, **options)

    coarse = plan(27, target_oversample="auto", volume_upsample="auto")
    assert sampling_ratio(coarse.dq3_nm, coarse.particle_size_nm) < 3
    assert (coarse.target_oversample, coarse.volume_upsample) == (2, 2)
    fine = plan(61, q_max=coarse.q_max_nm / 3, target_oversample="auto", volume_upsample="auto")
    assert sampling_ratio(fine.dq3_nm, fine.particle_size_nm) > 3
    assert (fine.target_oversample, fine.volume_upsample) == (1, 1)
    detector = plan(27, target_oversample="auto", volume_upsample="auto", loss_target="detector")
    assert (detector.target_oversample, detector.volume_upsample) == (1, 2)
    assert plan(27, target_oversample=1, volume_upsample=3).volume_upsample == 3
    with pytest.raises(ParameterError, match="vae.volume_upsample"):
        plan(27, volume_upsample=4)


@pytest.mark.parametrize("n,factor", [(9, 2), (11, 3)])
def test_separable_fourier_upsampling_equals_zero_padding_the_3d_transform(n, factor):
    """The three axis products of :func:`upsample_fourier` are the 3D zero-padding of the centred
    transform (computed here with numpy's FFT, independently), including off-axis (mixed) terms."""
    from spicompute.vae.train import upsample_fourier

    rng = np.random.default_rng(3)
    volume = rng.random((n, n, n)) ** 3     # no symmetry: the mixed frequencies are tested
    spectrum = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(volume)))
    big = factor * n
    lo = big // 2 - n // 2
    padded = np.zeros((big,) * 3, complex)
    padded[lo:lo + n, lo:lo + n, lo:lo + n] = spectrum
    fine = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(padded))) * factor ** 3
    assert np.abs(fine.imag).max() < 1e-12 * np.abs(fine).max()     # symmetric band: a real interpolant
    first = big // 2 - factor * (n // 2)
    keep = slice(first, first + factor * (n - 1) + 1)
    expected = np.clip(fine.real[keep, keep, keep], 0, None)
    got = upsample_fourier(torch.from_numpy(volume)[None], factor)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * expected.max())
    assert not np.allclose(got[1::factor, 1::factor, 1::factor],   # not a trivial (nearest) copy
                           volume[:-1, :-1, :-1], atol=1e-3)


@pytest.mark.parametrize("edge_nm, dq", [(42.0, 0.045), (60.0, 0.03)])
def test_size_search_recovers_each_averages_particle_size(edge_nm, dq):
    """``vae.size_fit``: cube averages made by the orient stage's sampler (an independent path) of
    particles 0.94-1.06 times the volume's size are each given back their size to 0.5 %
    (the grid step is 2 %: the parabola refines it); averages of one size get one size (the
    negative control: no spread is invented).  Two particle sizes and grid steps."""
    from spicompute.orient.slicing import slice_volume
    from spicompute.shapes import cube_intensity
    from spicompute.vae.train import best_size_factors

    n, lam, m = 27, 0.2066, 16
    quats = random_quaternions(m, np.random.default_rng(5))
    axis = (np.arange(n) - n // 2) * dq
    exact = cube_intensity(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1), edge_nm)
    q = grid_q(n, dq, lam).reshape(-1, 3)
    valid = np.broadcast_to((np.linalg.norm(q[:, :2], axis=1) >= 2 * dq).reshape(n, n), (m, n, n))
    true = np.random.default_rng(6).uniform(0.94, 1.06, m)
    for sizes in (true, np.ones(m)):
        image = slice_volume(exact, dq, q, quats, sizes).reshape(m, n, n)
        avg = AverageSet(image * valid, valid.astype(np.float32), np.arange(m), np.zeros(m), np.arange(m),
                         np.full(m, 100.0), dq, lam)
        prep = plan_preprocessing(avg, np.arange(m), input_size=n, volume_size=n, q_max_nm=(n // 2) * dq,
                                  particle_size_nm=1.24 * edge_nm, log_floor=0.1)
        data = TensorData(model_inputs(avg, prep, quats, np.ones(m)), prep, torch.device("cpu"))
        vol = torch.from_numpy(np.repeat((exact / prep.profile_at(prep.volume_q_norm()))[None], m, 0)
                               .astype(np.float32))
        found = best_size_factors(vol, data, torch.arange(m), 0.08, "mse_log").numpy()
        np.testing.assert_allclose(found, sizes, atol=0.005)


def test_sizes_are_relative_to_the_averages_near_them_along_the_latent():
    """A real trend of the size along z stays with the volumes (the local median removes it from
    the sizes); the scatter at one z stays with the sizes; a single odd average does not move
    its neighbours' reference."""
    from spicompute.vae.train import size_along_latent

    rng = np.random.default_rng(0)
    z = np.sort(rng.normal(size=(400, 1)), axis=0)
    trend = 0.03 * z[:, 0]                      # log size grows 3 % per unit of z
    scatter = rng.normal(0, 0.02, 400)
    log_sizes = trend + scatter
    relative = log_sizes - size_along_latent(z, log_sizes, z)
    assert spearmanr(z[:, 0], log_sizes)[0] > 0.6
    assert abs(spearmanr(z[:, 0], relative)[0]) < 0.1
    assert np.corrcoef(relative, scatter)[0, 1] > 0.9
    odd = log_sizes.copy()
    odd[200] += 0.5
    moved = size_along_latent(z, odd, z) - size_along_latent(z, log_sizes, z)
    assert np.abs(moved).max() < 0.005
    # and in 2-D: the trend along one axis, none along the other
    z2 = rng.normal(size=(400, 2))
    log2 = 0.03 * z2[:, 0] + rng.normal(0, 0.02, 400)
    rel2 = log2 - size_along_latent(z2, log2, z2)
    assert abs(spearmanr(z2[:, 0], rel2)[0]) < 0.1 and abs(spearmanr(z2[:, 1], rel2)[0]) < 0.1


def test_a_checkpoint_of_other_training_code_is_not_resumed(tmp_path, monkeypatch):
    """The checkpoint fingerprint covers the VAE package's source: a checkpoint written by other
    training code would continue another trajectory, so it is not resumed; the same code resumes."""
    from spicompute.vae import train
    from spicompute.vae.train import fingerprint, load_checkpoint

    avg, t, quats, vols, levels, idx, arch, prep, inputs = _setup(n=16)
    config = TrainConfig(epochs=1, batch_size=8)
    fp = fingerprint(arch, prep, config, inputs, idx)
    ckpt = tmp_path / "last.pt"
    _one_thread(lambda: train_vae(VAE(arch), TensorData(inputs, prep, torch.device("cpu")), idx, config,
                                  checkpoint=ckpt, fp=fp))
    assert load_checkpoint(ckpt, fingerprint(arch, prep, config, inputs, idx), 2) is not None
    monkeypatch.setattr(train, "code_digest", lambda: "edited-code")
    other = fingerprint(arch, prep, config, inputs, idx)
    assert other != fp and load_checkpoint(ckpt, other, 2) is None


@pytest.mark.parametrize("radius_nm, dq3", [(26.9, 0.041), (34.0, 0.032)])
def test_filtered_slices_let_the_exact_sphere_fit_prefiltered_averages(radius_nm, dq3):
    """Averages of a sphere made from the closed form at a detector grid finer than the loss target,
    taken to the target grid through the Gaussian pre-filter (which fills the fringe minima).  With
    ``filter_slices`` the exact sphere's slices go through the same filter and fit them several times
    better than unfiltered (measured 7.5x); a wrong volume (a cube of the same volume) stays far off
    (negative control).  Two sphere sizes and grid steps.  Where the target grid is not coarser than
    the detector (no pre-filter in the data) the option changes nothing."""
    from spicompute.shapes import cube_intensity, sphere_intensity

    n, lam, m, finer = 27, 0.2066, 12, 1.7
    quats = random_quaternions(m, np.random.default_rng(4))
    dq_det = dq3 / 2 / finer              # detector pixels 1.7x finer than the 2x target grid
    size_det = int(np.ceil((n // 2) * dq3 / dq_det)) * 2 + 5
    q_det = grid_q(size_det, dq_det, lam)
    images = np.broadcast_to(sphere_intensity(q_det, radius_nm), (m, size_det, size_det))
    valid = np.broadcast_to(np.linalg.norm(q_det[..., :2], axis=-1) >= 2 * dq3, (m, size_det, size_det))
    avg = AverageSet((images * valid).astype(np.float32), valid.astype(np.float32), np.arange(m), np.zeros(m),
                     np.arange(m), np.full(m, 100.0), dq_det, lam)
    axis = (np.arange(n) - n // 2) * dq3
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    exact = sphere_intensity(grid, radius_nm)
    wrong = cube_intensity(grid, (4 * np.pi / 3) ** (1 / 3) * radius_nm)
    scores = {}
    for filtered in (False, True):
        prep = plan_preprocessing(avg, np.arange(m), input_size=n, volume_size=n, q_max_nm=(n // 2) * dq3,
                                  particle_size_nm=2 * radius_nm, log_floor=0.1, target_oversample=2,
                                  volume_upsample=2, filter_slices=filtered)
        inputs = model_inputs(avg, prep, quats, np.ones(m))
        assert inputs.target_filter_px == pytest.approx(prep.prefilter_px)
        data = TensorData(inputs, prep, torch.device("cpu"))
        assert (data.target_filter is not None) == filtered
        p3 = prep.profile_at(prep.volume_q_norm())
        for name, vol in (("exact", exact), ("wrong", wrong)):
            v = torch.from_numpy(np.repeat((vol / p3)[None], m, 0).astype(np.float32))
            scores[filtered, name] = slice_loss(v, data, torch.arange(m), "mse_log")[0].mean().item()
    assert scores[True, "exact"] < 0.35 * scores[False, "exact"], scores
    assert scores[True, "wrong"] > 10 * scores[True, "exact"] and scores[False, "wrong"] > 2 * scores[False, "exact"]
    # a target no coarser than the detector: nothing was filtered, nothing is
    fine = AverageSet(avg.intensity, avg.weight, avg.average_id, avg.run, avg.model, avg.n_frames, dq3, lam)
    prep = plan_preprocessing(fine, np.arange(m), input_size=n, volume_size=n, q_max_nm=(n // 2) * dq3,
                              particle_size_nm=2 * radius_nm, log_floor=0.1, target_oversample=2, filter_slices=True)
    assert model_inputs(fine, prep, quats, np.ones(m)).target_filter_px == 0.0


def test_target_filter_keeps_a_constant_and_is_masked():
    from spicompute.vae.train import TargetFilter

    size = 9
    seen = np.flatnonzero((np.arange(size * size) % 7) != 0)   # some points never observed
    f = TargetFilter(0.5, size, seen, torch.device("cpu"))
    ones = torch.ones(3, seen.size)
    torch.testing.assert_close(f(ones), ones)              # normalised by the filtered mask
    spike = torch.zeros(1, seen.size)
    spike[0, seen.size // 2] = 1.0
    out = f(spike)[0]
    assert out[seen.size // 2] < 1.0 and (out >= 0).all() and out.sum() > 0.9   # spread to neighbours
