"""Training the VAE: loss, deterministic mini-batches, checkpoints, resume, DDP.

Determinism: every epoch draws its batch order and reparameterisation noise
from a generator seeded by ``(seed, epoch)``, so an epoch's trajectory depends
only on the weights and optimiser state at its start.  A checkpoint written
after every epoch (weights, Adam state, history; atomically) therefore
resumes to exactly the run that was not interrupted (on CPU).  A checkpoint
is used only when its fingerprint -- every parameter and input that shapes
the trajectory -- matches, and never when it lies past the requested end.

Several processes (``torchrun``; gloo on CPU, NCCL on GPUs) split each global
batch into equal shares; each process scales its summed loss by
``world / global batch`` so that DistributedDataParallel's gradient mean
equals the single-process gradient of the same batch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from spicompute.vae.data import Preprocessing, VaeInputs
from spicompute.vae.model import VAE, Architecture
from spicompute.vae.slicer import slice_volumes

log = logging.getLogger("spicompute.vae")

LOSSES = ("mse_log", "poisson")


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 1e-3
    kl_weight: float = 0.01
    kl_warmup_epochs: int = 10
    loss: str = "mse_log"
    seed: int = 0
    amp: bool = False
    class_blur_deg: tuple[float, float] = (0.0, 0.0)   # (out of plane, in plane)
    size_spread: float = 0.0   # relative rms size spread of a class's members (0.03: 3 %)
    size_fit: float = 0.0      # half range of each average's fitted relative size (0.08: 0.92..1.08; 0: off)

    def fingerprint_fields(self) -> dict:
        d = asdict(self)
        d.pop("epochs")  # more epochs continue the same trajectory
        if not any(d["class_blur_deg"]):
            d.pop("class_blur_deg")  # checkpoints of runs before the parameter existed stay valid
        else:
            d["class_blur_deg"] = [float(v) for v in d["class_blur_deg"]]
        if not d["size_spread"]:
            d.pop("size_spread")
        if not d["size_fit"]:
            d.pop("size_fit")
        return d


def kl_beta(config: TrainConfig, epoch: int) -> float:
    """KL weight at ``epoch`` (0-based): linear warm-up to ``kl_weight``."""
    if config.kl_warmup_epochs <= 0:
        return config.kl_weight
    return config.kl_weight * min(1.0, (epoch + 1) / config.kl_warmup_epochs)


def fitted_scale(pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor, profile: torch.Tensor,
                 kind: str, log_floor: float, iterations: int = 6) -> torch.Tensor:
    """Each average's overall scale s (fluence x members relative to the model), (B,), detached.

    pred, target : (B, P) intensities / p (model slice, data); observed : (B, P) bool;
    profile : (P,) the radial profile p at the pixels.
    ``poisson``: the maximum-likelihood scale ``sum(x p) / sum(x_hat p)`` over observed pixels
    (exact).  ``mse_log``: the minimiser of ``mean (log(s x_hat + f) - log(x + f))^2`` over
    ``log s``, by Gauss-Newton steps from the Poisson estimate (the floor makes it
    non-linear; six steps converge to float precision for any realistic misfit).
    The scale is a minimiser of the loss, so the loss's gradient through it vanishes
    (envelope theorem): detaching it gives the same gradient, without a backward pass
    through the iterations.
    """
    with torch.no_grad():
        m = observed.to(pred.dtype)
        p = profile.to(pred.dtype)[None]
        s = (m * target * p).sum(1).clamp_min(1e-30) / (m * pred * p).sum(1).clamp_min(1e-30)
        if kind == "mse_log":
            u = torch.log(s)
            log_t = torch.log(target + log_floor)
            n = m.sum(1).clamp_min(1.0)
            for _ in range(iterations):
                sp = torch.exp(u)[:, None] * pred
                r = torch.log(sp + log_floor) - log_t
                a = sp / (sp + log_floor)  # d r / d log s
                grad = (m * r * a).sum(1) / n
                curv = (m * a * a).sum(1) / n
                u = u - grad / curv.clamp_min(1e-12)
            s = torch.exp(u)
    return s.detach()


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor,
                        count_scale: torch.Tensor, kind: str, log_floor: float,
                        profile: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-average loss over observed pixels at the fitted scale: (loss (B,), scale (B,)).

    pred : (B, P) the model's slices (normalised units: intensity / p); target : (B, P) the
    data in the same units, each average at its own overall scale; observed : (B, P) bool;
    count_scale : (B,) members' photons per model pixel per unit of ``x p``; profile : (P,)
    the data set's radial profile p at the pixels (mean photons per detector pixel per frame;
    default 1).  The scale s of each average is fitted in closed form (:func:`fitted_scale`).

    ``mse_log``: mean over observed pixels of ``(log(s x_hat + f) - log(x + f))^2``.
    ``poisson``: the Poisson deviance ``2 sum [mu - y + y log(y / mu)]`` of the observed
    counts ``y = k p x`` (the members' photons in each model pixel, k = count_scale) given
    the expected counts ``mu = k p s x_hat``, divided by the number of observed pixels:
    the log-likelihood of the photons with no weighting beyond Poisson (a bright average
    weighs more), about 1 per pixel for a perfect model at high counts, 0 for a noiseless fit.
    """
    with torch.autocast(pred.device.type, enabled=False):  # logs, sums, float64: never in half precision
        return _reconstruction_loss(pred.float(), target.float(), observed, count_scale, kind, log_floor, profile)


def _reconstruction_loss(pred, target, observed, count_scale, kind, log_floor, profile):
    m = observed.to(pred.dtype)
    n = m.sum(1).clamp_min(1.0)
    prof = torch.ones(pred.shape[1], dtype=pred.dtype, device=pred.device) if profile is None else profile
    s = fitted_scale(pred, target, observed, prof, kind, log_floor)
    fit = pred * s[:, None]
    if kind == "mse_log":
        d = torch.log(fit + log_floor) - torch.log(target + log_floor)
        return (m * d * d).sum(1) / n, s
    # float64: with 10^4 photons in a pixel, mu - y + y log(y / mu) cancels to O(1)
    k = count_scale.double()[:, None] * prof.double()[None]
    mu, y = fit.double() * k + 1e-6, target.double() * k
    dev = mu - y + torch.where(y > 0, y * torch.log(y.clamp_min(1e-30) / mu), torch.zeros_like(y))
    return (2.0 * (m.double() * dev).sum(1) / n.double()).to(pred.dtype), s


@functools.lru_cache(maxsize=8)   # called every batch: made once per angle pair
def class_blur_rotations(out_deg: float, in_deg: float | None = None) -> torch.Tensor | None:
    """(7, 3, 3) lab-frame rotations -- the identity, +-``out_deg`` about the detector x and y axes and
    +-``in_deg`` (default ``out_deg``) about the beam (z) axis -- or None when both are 0.

    A class average is the mean of its members' patterns, whose orientations spread around the
    average's fitted one (the in-plane step of the 2D EMC, the out-of-plane patch a class
    covers).  Slicing the volume at these 7 orientations and averaging renders that spread, so the
    decoder is fitted to the averages as they were made (a forward model of the class average),
    instead of being asked for a volume whose sharp slices look blurred.  The variance along each
    axis is ``2 b^2 / 7``.
    """
    in_deg = out_deg if in_deg is None else in_deg
    if not out_deg and not in_deg:
        return None
    from scipy.spatial.transform import Rotation

    from spicompute.orient.class_blur import kernel_rotvecs   # the kernel the orient stage measures b with

    return torch.from_numpy(Rotation.from_rotvec(kernel_rotvecs(out_deg, in_deg)).as_matrix())


@functools.lru_cache(maxsize=16)
def fourier_interpolation_matrix(n: int, factor: int) -> np.ndarray:
    """(factor (n - 1) + 1, n) float64: the 1D band-limited interpolation of n samples (odd n) onto a grid
    ``factor`` times finer, ``A[a, i] = D(a / factor - i)`` with the periodic Dirichlet kernel
    ``D(x) = (1 / n) sum_k cos(2 pi k x / n)``, k = -(n - 1) / 2 ... (n - 1) / 2.

    It is the map of zero-padding the centred discrete transform (frequencies kept symmetric, so the
    interpolant is real); rows at integer positions are the identity."""
    k = np.arange(n) - n // 2
    offsets = np.arange(factor * (n - 1) + 1)[:, None] / factor - np.arange(n)[None, :]
    return np.cos(2.0 * np.pi / n * offsets[..., None] * k).sum(-1) / n


def upsample_fourier(volumes: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """(B, L, L, L) -> (B, f (L - 1) + 1, ...) for odd L and f = ``factor``: band-limited (Fourier)
    interpolation onto a grid ``factor`` times finer over the same q range.

    A particle's intensity is the Fourier transform of its autocorrelation, which vanishes beyond
    the particle's diameter D: on a grid of step dq <= pi / D it is band-limited, and zero-padding
    its discrete transform (the autocorrelation on the grid's real-space box 2 pi / dq) gives the
    values between grid points exactly, up to the truncation at the grid's edge.  Cubic or
    trilinear interpolation fill a sphere's fringe minima at 1.4x that sampling (mean |log error|
    0.12 against 0.001 here, tests/vae).  The grid points are kept (to rounding); negative ringing
    next to zeros is clipped (an intensity).

    The zero-padding is separable, so it runs as three small matrix products along the axes
    (:func:`fourier_interpolation_matrix`): ~0.1 GFLOP for 16 volumes of 27^3 at f = 2, where the
    padded 3D FFTs and their shifts took 3x the rest of a training step on a CPU.
    """
    n = volumes.shape[-1]
    if n % 2 == 0:
        raise ValueError(f"upsample_fourier: the volume edge must be odd (a centred grid), got {n}")
    factor = int(factor)
    if factor == 1:
        return volumes
    a = torch.from_numpy(fourier_interpolation_matrix(n, factor)).to(volumes)
    fine = torch.einsum("ck,bijk->bijc", a, volumes)
    fine = torch.einsum("bj,nijc->nibc", a, fine)
    fine = torch.einsum("ai,nibc->nabc", a, fine)
    return fine.clamp_min(0.0)


@functools.lru_cache(maxsize=8)
def size_spread_kernel(spread: float) -> tuple[tuple[float, float], ...]:
    """((size factor a, weight), ...) of a class's members' relative size spread ``spread`` (rms), or ().

    Three-point Gauss-Hermite rule (a = 1, 1 +- sqrt(3) spread; weights 2/3, 1/6, 1/6): exact for the
    mean and the variance of a Gaussian spread.  A member a times larger scatters
    ``I_a(q) = a^6 I(a q)`` (F scales with the volume a^3, and its features move to q / a), so the
    class average of a size-dispersed population is the weighted mean of ``a^6 I(a q)``.
    """
    if not spread:
        return ()
    step = np.sqrt(3.0) * float(spread)
    return ((1.0, 2.0 / 3.0), (1.0 - step, 1.0 / 6.0), (1.0 + step, 1.0 / 6.0))


def predicted_slices(volumes: torch.Tensor, data: "TensorData", rotations: torch.Tensor,
                     size_spread: float = 0.0) -> torch.Tensor:
    """Slices (B, T, P) of volumes (B, L, L, L) at T rotations each, (B, T, 3, 3), in the averages' units.

    The volumes are in normalised units (I / p).  They are sliced as intensities (times the
    profile on the 3D grid, interpolated, divided by the profile at the 2D pixels): the
    intensity is smooth on the grid (sampled at the particle's Nyquist step), while I / p is
    not where the profile has fringe minima, so interpolating I / p directly would misplace
    a slice of the exact volume by factors of 2 between voxels.  A rotation times s slices
    the particle s times larger (up to the s^6 that a fitted scale absorbs).  ``size_spread``
    (relative rms): each slice is the mean over the members' sizes (:func:`size_spread_kernel`).
    """
    scaled = volumes * data.profile3
    dq3 = data.dq3
    if data.volume_upsample > 1:   # band-limited interpolation before the trilinear slicing
        scaled, dq3 = upsample_fourier(scaled, data.volume_upsample), dq3 / data.volume_upsample
    pred = 0.0
    for factor, weight in size_spread_kernel(size_spread) or ((1.0, 1.0),):
        # a^6 I(a q): the lab points scaled by a; past the grid's faces (a > 1 at the rim) the border value
        q = data.q_lab if factor == 1.0 else data.q_lab * factor
        pad = "zeros" if factor <= 1.0 and not data.sizes_fitted else "border"
        pred = pred + (weight * factor ** 6) * slice_volumes(scaled, dq3, q, rotations, padding=pad)
    if data.target_filter is not None:   # the averages' own pre-filter (vae.filter_slices)
        pred = data.target_filter(pred)
    return pred / data.profile


def slice_loss(volumes: torch.Tensor, data: "TensorData", idx: torch.Tensor,
               kind: str, blur: torch.Tensor | None = None,
               size_spread: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (B,) and fitted scale (B,) of volumes (B, L, L, L) against the averages ``idx`` (B,).

    The forward model of a class average (:func:`predicted_slices`; all optional, all means over
    its members): ``blur`` (n, 3, 3) lab-frame turns render the spread of the members'
    orientations (``vae.class_blur_deg``); ``size_spread`` (relative rms) renders the spread of
    their sizes (``vae.size_spread``, :func:`size_spread_kernel`), which fills a sphere's fringe
    minima in the data -- without it the decoder has to return a volume with filled minima,
    one that reads as a less melted shape; each average is sliced at its own particle size
    ``data.size_factor`` (``vae.size_fit``, :func:`fit_size_factors`).
    """
    # each average's particle size s: its pattern samples s^6 I(s q), a rotation times s
    rot = data.rotations[idx] * data.size_factor[idx][:, None, None]
    # (B, T, 3, 3): the T turns of the class blur, all sliced in one call
    turns = rot[:, None] if blur is None else torch.matmul(blur.to(rot)[None], rot[:, None])
    pred = predicted_slices(volumes, data, turns, size_spread).mean(1)
    return reconstruction_loss(pred, data.target[idx], data.observed[idx], data.count_scale[idx], kind,
                               data.floor, data.profile)


SIZE_STEP = 0.02   # the size search's grid step (relative); a parabola through the best 3 refines it


@torch.no_grad()
def best_size_factors(volumes: torch.Tensor, data: "TensorData", idx: torch.Tensor, half_range: float,
                      loss_kind: str, size_spread: float = 0.0) -> torch.Tensor:
    """The relative particle size s (B,) at which volume b (B, L, L, L) best fits average ``idx[b]``.

    A particle s times larger scatters s^6 I(s q): its fringes sit at q / s.  s runs over
    1 +- ``half_range`` in steps of ``SIZE_STEP`` (loss at the fitted scale, which absorbs s^6;
    no class blur, which does not move a fringe) and is refined by a parabola through the best
    grid point and its neighbours, within the grid.
    """
    grid = 1.0 + np.arange(-half_range, half_range + 1e-9, SIZE_STEP)
    factors = torch.as_tensor(grid, dtype=data.rotations.dtype, device=volumes.device)
    data.sizes_fitted = True   # from now on slices may reach past the grid's faces (s > 1): border values
    # (B, S, 3, 3): every size of the search sliced in one call
    pred = predicted_slices(volumes, data, data.rotations[idx][:, None] * factors[None, :, None, None],
                            size_spread)
    b, n = pred.shape[:2]
    each = lambda t: t.repeat_interleave(n, 0)   # noqa: E731 -- the averages' rows, once per size
    losses = reconstruction_loss(pred.reshape(b * n, -1), each(data.target[idx]), each(data.observed[idx]),
                                 each(data.count_scale[idx]), loss_kind, data.floor,
                                 data.profile)[0].double().view(b, n).cpu()
    best = losses.argmin(1).clamp(1, len(grid) - 2)
    rows = torch.arange(len(idx))
    lm, l0, lp = losses[rows, best - 1], losses[rows, best], losses[rows, best + 1]
    curvature = lm - 2 * l0 + lp
    shift = torch.where(curvature > 0, 0.5 * (lm - lp) / curvature.clamp_min(1e-30), torch.zeros_like(l0))
    return (torch.as_tensor(grid)[best] + SIZE_STEP * shift.clamp(-1, 1)).clamp(grid[0], grid[-1])


def size_along_latent(z: np.ndarray, ref_log_sizes: np.ndarray, ref_z: np.ndarray) -> np.ndarray:
    """The trend of the log size along the latent at each z (N, d) -> (N,).

    A linear fit of the reference averages' log sizes ``ref_log_sizes`` (R,) against their z
    ``ref_z`` (R, d), local to the k = max(16, 10 %) references nearest to each point, with the
    points past 3 robust standard deviations dropped once: it follows a real trend of the size
    along z to the ends of the latent (a running median would lag there), not one average's
    scatter.
    """
    from scipy.spatial import cKDTree

    z, ref_z = np.asarray(z, np.float64), np.asarray(ref_z, np.float64)
    k = int(min(len(ref_z), max(16, np.ceil(0.1 * len(ref_z)))))
    _, nearest = cKDTree(ref_z).query(z, k=k)
    nearest = np.asarray(nearest).reshape(len(z), k)
    design = np.concatenate([np.ones((len(z), k, 1)), ref_z[nearest] - z[:, None, :]], axis=2)  # (N, k, d+1)
    y = np.asarray(ref_log_sizes, np.float64)[nearest]
    keep = np.ones_like(y)
    ridge = 1e-9 * np.eye(design.shape[2])
    for _ in range(2):
        aw = design * keep[..., None]
        beta = np.linalg.solve(aw.transpose(0, 2, 1) @ design + ridge, (aw * y[..., None]).sum(1)[..., None])[..., 0]
        resid = y - (design @ beta[..., None])[..., 0]
        mad = np.median(np.abs(resid), axis=1, keepdims=True)
        keep = (np.abs(resid) <= 3 * 1.4826 * mad + 1e-12).astype(np.float64)
    return beta[:, 0]


@torch.no_grad()
def fit_size_factors(model: VAE, data: "TensorData", index: np.ndarray, half_range: float, loss_kind: str,
                     size_spread: float = 0.0, reference: np.ndarray | None = None,
                     batch: int | None = None) -> torch.Tensor:
    """Each average's particle size (len(index),) relative to the averages near it along the latent.

    :func:`best_size_factors` per average, its volume the decoder's at its latent mean, divided
    by :func:`size_along_latent` over ``reference`` (default: ``index``, the trained averages).
    The sizes and the volume's own size are one degree of freedom: fixing the local trend of the
    log size along z to 0 leaves any trend of the size along z to the volumes (the particle volume
    against z shows it), and only the scatter of the sizes at one z to the sizes, so the latent
    need not spend itself on that scatter.  ``index`` is sorted (``reference`` is looked up in it).
    """
    model.eval()
    device = data.target.device
    batch = batch or volume_batch(model.arch, device, upsample=data.volume_upsample)
    index = np.asarray(index)
    sizes = np.empty(len(index))
    z = np.empty((len(index), model.arch.latent_dim))
    for s in range(0, len(index), batch):
        idx = torch.as_tensor(index[s:s + batch], device=device)
        mu, _ = model.encoder(data.image[idx], data.condition[idx])
        z[s:s + len(idx)] = mu.double().cpu().numpy()
        sizes[s:s + len(idx)] = best_size_factors(model.decoder(mu), data, idx, half_range, loss_kind,
                                                  size_spread).numpy()
    ref = np.arange(len(index)) if reference is None else np.searchsorted(index, reference)
    log_sizes = np.log(sizes)
    local = size_along_latent(z, log_sizes[ref], z[ref])
    return torch.from_numpy(np.exp(log_sizes - local))


WIDE_POSTERIOR_SD = 1.5     # a posterior this much wider than the prior: the decoder ignores z there
MAX_WIDE_SHARE = 0.10       # ... for more than this share of the trained averages: a collapsed run
MAX_RESTARTS = 2            # fresh starts (seed + 1, + 2) after a collapsed run


def wide_posterior_share(logvar: np.ndarray) -> float:
    """Share of averages (rows of ``logvar`` (N, d)) whose posterior is wider than ``WIDE_POSTERIOR_SD``
    prior standard deviations on some axis.

    A posterior wider than the prior means the decoder's output does not change over that span of
    z: the run has given up part of the latent.  Measured on a bright set (2026-12-06): one seed put
    the cube half of the family at sd 2.0-2.3 with the whole line squeezed into 0.4 of z (final loss
    0.237); the next seed trained normally (sd 0.1-0.35 everywhere, loss 0.194).
    """
    lv = np.asarray(logvar, np.float64)
    if lv.size == 0:
        return 0.0
    return float(np.mean((lv > 2 * np.log(WIDE_POSTERIOR_SD)).any(axis=1)))


@dataclass
class TrainedVae:
    """What :func:`train_until_uncollapsed` returns: the kept model, its history, fingerprint and
    config (seed included), its wide-posterior share and every attempt's summary."""

    model: VAE
    history: list[dict]
    fp: str
    config: TrainConfig
    wide_share: float
    attempts: list[dict]


def train_until_uncollapsed(arch: Architecture, prep: Preprocessing, inputs: VaeInputs, data: "TensorData",
                            train_index: np.ndarray, config: TrainConfig, device: torch.device, *,
                            checkpoint: Path | None = None, dist: "Distributed" = None,
                            on_epoch: Callable[[int, dict], None] | None = None,
                            kill_after_epoch: int | None = None) -> TrainedVae:
    """:func:`train_vae` from ``config.seed``, and afresh from the next seed (at most ``MAX_RESTARTS``
    times) while more than ``MAX_WIDE_SHARE`` of the trained averages have a posterior wider than the
    prior (:func:`wide_posterior_share`); if every attempt collapses, the least collapsed is kept.

    ``on_epoch(attempt, row)`` sees every attempt's epochs.  Each attempt starts from the model
    initialised after ``torch.manual_seed(seed)`` and from unit size factors, so the kept weights
    equal a plain run at that seed.
    """
    from dataclasses import replace

    dist = dist or Distributed()
    attempts: list[dict] = []
    best: TrainedVae | None = None
    for attempt in range(MAX_RESTARTS + 1):
        cfg = replace(config, seed=config.seed + attempt)
        torch.manual_seed(cfg.seed)
        model = VAE(arch).to(device)
        data.size_factor.fill_(1.0)
        data.sizes_fitted = False
        fp = fingerprint(arch, prep, cfg, inputs, train_index)
        history = train_vae(model, data, train_index, cfg, checkpoint=checkpoint, fp=fp, dist=dist,
                            on_epoch=None if on_epoch is None else functools.partial(on_epoch, attempt),
                            kill_after_epoch=kill_after_epoch)
        wide = wide_posterior_share(encode(model, data, cfg.loss)[1][np.asarray(train_index)])
        attempts.append({"seed": cfg.seed, "final_loss": history[-1]["loss"] if history else None,
                         "wide_posterior_share": round(wide, 4)})
        if best is None or wide < best.wide_share:   # each attempt trains its own model object
            best = TrainedVae(model, history, fp, cfg, wide, attempts)
        if wide <= MAX_WIDE_SHARE:
            break
        log.warning("vae: %.0f %% of the trained averages have a posterior wider than %.1f x the prior (seed %d): "
                    "that part of the latent collapsed%s", 100 * wide, WIDE_POSTERIOR_SD, cfg.seed,
                    "; training afresh from the next seed" if attempt < MAX_RESTARTS else
                    "; keeping the least collapsed run")
    return best


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per average, (B,)."""
    return -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum(1)


class TargetFilter:
    """The averages' pre-filter, applied to the model's slices on the loss target's grid.

    The averages reach the target grid through a masked Gaussian of ``sigma_px`` target pixels
    (:func:`spicompute.vae.data.resample_averages`): it fills a sphere's fringe minima.  Unless the
    slices go through the same filter, only a volume with filled minima -- a less melted-looking
    shape -- can fit them.  Masked like the data (normalised by the filtered mask of the points some
    average observes); separable, over the full (n, n) target grid.
    """

    def __init__(self, sigma_px: float, size: int, seen: np.ndarray, device):
        radius = max(1, int(np.ceil(3 * sigma_px)))
        x = np.arange(-radius, radius + 1)
        k = np.exp(-0.5 * (x / sigma_px) ** 2)
        self.kernel = torch.as_tensor(k / k.sum(), dtype=torch.float32, device=device)
        self.size, self.radius = int(size), radius
        self.seen = torch.as_tensor(seen, dtype=torch.long, device=device)
        mask = torch.zeros(self.size * self.size, dtype=torch.float32, device=device)
        mask[self.seen] = 1.0
        self.norm = self._blur(mask[None])[0, self.seen].clamp_min(1e-12)

    def _blur(self, flat):
        img = flat.reshape(-1, 1, self.size, self.size)
        kx = self.kernel.to(img.dtype).view(1, 1, 1, -1)
        img = F.conv2d(F.pad(img, (self.radius, self.radius, 0, 0)), kx)
        img = F.conv2d(F.pad(img, (0, 0, self.radius, self.radius)), kx.transpose(2, 3))
        return img.reshape(flat.shape[0], -1)

    def __call__(self, values):
        """values (..., P_seen) on the seen target points -> the same, filtered."""
        lead = values.shape[:-1]
        flat = values.reshape(-1, values.shape[-1])
        full = torch.zeros(flat.shape[0], self.size * self.size, dtype=flat.dtype, device=flat.device)
        full[:, self.seen] = flat
        out = self._blur(full)[:, self.seen] / self.norm.to(flat.dtype)
        return out.reshape(*lead, -1)


class TensorData:
    """Model inputs as tensors on one device."""

    def __init__(self, inputs: VaeInputs, prep: Preprocessing, device: torch.device):
        floor = prep.log_floor
        x = torch.from_numpy(inputs.x.reshape(len(inputs.x), -1))
        obs = torch.from_numpy(inputs.observed.reshape(len(inputs.x), -1))
        x_in = x / torch.from_numpy(inputs.input_scale)[:, None]  # encoder input: mean 1 per average
        img = torch.stack([torch.where(obs, torch.log(x_in + floor) - np.log(1 + floor), torch.zeros_like(x)),
                           obs.float()], 1).view(len(x), 2, prep.input_size, prep.input_size)
        self.image = img.to(device)
        # the loss target and its geometry (model_inputs: the encoder's grid, a finer grid or the
        # averages' own detector pixels), restricted to the points that some average observes: the
        # others (the grid's corners past q_max, the beamstop) weigh 0 in every loss, so slicing
        # them would only cost time (a quarter of a 2D grid's points)
        seen = np.asarray(inputs.target_observed).any(axis=0)
        self.target_index = np.flatnonzero(seen)   # (P_seen,) into the inputs' P target points
        self.target = torch.from_numpy(np.ascontiguousarray(inputs.target[:, seen])).to(device)
        self.observed = torch.from_numpy(np.ascontiguousarray(inputs.target_observed[:, seen])).to(device)
        self.condition = torch.from_numpy(inputs.condition).to(device)
        self.rotations = torch.from_numpy(inputs.rotations).to(device)
        self.size_factor = torch.ones(len(self.rotations), dtype=self.rotations.dtype, device=device)
        self.sizes_fitted = False
        self.count_scale = torch.from_numpy(inputs.count_scale).to(device)
        self.q_lab = torch.from_numpy(np.ascontiguousarray(inputs.target_q_lab[seen], np.float32)).to(device)
        self.profile = torch.from_numpy(np.ascontiguousarray(inputs.target_profile[seen], np.float32)).to(device)
        self.profile3 = torch.from_numpy(prep.profile_at(prep.volume_q_norm())).to(device)
        self.dq3 = prep.dq3_nm
        self.volume_upsample = prep.volume_upsample
        self.floor = floor
        self.target_filter = None
        if prep.filter_slices and inputs.target_filter_px > 0:
            self.target_filter = TargetFilter(inputs.target_filter_px, prep.target_size, self.target_index, device)

    def __len__(self):
        return len(self.target)


def batch_loss(model, data: TensorData, idx: torch.Tensor, noise: torch.Tensor, config: TrainConfig,
               beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of total losses, sum of reconstruction losses, sum of KL) over the batch ``idx``."""
    volumes, mu, logvar = model(data.image[idx], data.condition[idx], noise)
    rec, _ = slice_loss(volumes, data, idx, config.loss, class_blur_rotations(*config.class_blur_deg),
                        config.size_spread)
    kl = kl_divergence(mu, logvar)
    return (rec + beta * kl).sum(), rec.detach().sum(), kl.detach().sum()


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Hash of the VAE package's source (``spicompute/vae/*.py``).

    Part of the checkpoint fingerprint: a checkpoint written by other training code continues
    another trajectory, so resuming it would give outputs that neither version makes from
    scratch (DVC re-runs the stage when the code changes, but the checkpoint would survive).
    """
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(arch: Architecture, prep: Preprocessing, config: TrainConfig, inputs: VaeInputs,
                train_index: np.ndarray) -> str:
    """Hash of everything that shapes the training trajectory, the training code included."""
    h = hashlib.sha256()
    h.update(json.dumps([arch.to_dict(), prep.to_dict(), config.fingerprint_fields()], sort_keys=True).encode())
    h.update(code_digest().encode())
    arrays = [inputs.x, inputs.observed, inputs.condition, inputs.rotations, inputs.count_scale,
              inputs.input_scale, np.asarray(train_index)]
    if prep.target_oversample > 1 or prep.loss_target == "detector":   # a target that is not x itself
        arrays += [inputs.target, inputs.target_observed]
    for arr in arrays:
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def _save_checkpoint(path: Path, state: dict) -> None:
    from spicompute.io.storage import save_torch

    save_torch(path, state)


def load_checkpoint(path: Path, fp: str, max_epoch: int) -> dict | None:
    """The checkpoint's state if it matches ``fp`` and ends at or before ``max_epoch``."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: start afresh, never crash
        log.warning("ignoring unreadable checkpoint %s (%s)", path, exc)
        return None
    if state.get("fingerprint") != fp:
        log.info("checkpoint %s is for other parameters, inputs or training code; starting afresh", path)
        return None
    if int(state.get("epoch", 0)) > max_epoch:
        log.info("checkpoint %s is past the requested %d epochs; starting afresh", path, max_epoch)
        return None
    return state


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size())


SIZE_FIT_EVERY = 10   # epochs between two fits of the averages' sizes (vae.size_fit)


def size_fit_epoch(config: TrainConfig, epoch: int) -> bool:
    """Whether the averages' sizes are fitted before ``epoch`` (0-based): at the end of the KL
    warm-up (before it the volumes are too blurred to place a fringe) and every
    ``SIZE_FIT_EVERY`` epochs after."""
    start = max(1, config.kl_warmup_epochs)
    return bool(config.size_fit) and epoch >= start and (epoch - start) % SIZE_FIT_EVERY == 0


def train_vae(model: VAE, data: TensorData, train_index: np.ndarray, config: TrainConfig, *,
              checkpoint: Path | None = None, fp: str = "", dist: Distributed = Distributed(),
              on_epoch: Callable[[dict], None] | None = None, kill_after_epoch: int | None = None) -> list[dict]:
    """Train ``model`` in place on ``data[train_index]``; returns the per-epoch history.

    ``kill_after_epoch`` (tests only) makes the process SIGKILL itself right
    after that epoch's checkpoint is written.
    """
    device = data.target.device
    train_index = torch.as_tensor(np.asarray(train_index), dtype=torch.long)
    optim = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    history: list[dict] = []
    start_epoch = 0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, fp, config.epochs)
        if state is not None:
            model.load_state_dict(state["model"])
            if "size_factor" in state:
                data.size_factor.copy_(state["size_factor"].to(data.size_factor))
                data.sizes_fitted = bool(config.size_fit)
            optim.load_state_dict(state["optim"])
            history = json.loads(state["history"])
            start_epoch = int(state["epoch"])
            log.info("resuming after epoch %d from %s", start_epoch, checkpoint)
            if on_epoch is not None and dist.main:  # replay, so per-epoch logs (dvclive) stay complete
                for row in history:
                    on_epoch(row)
    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    n = len(train_index)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        if size_fit_epoch(config, epoch):
            sizes = fit_size_factors(model, data, train_index.numpy(), config.size_fit, config.loss,
                                     config.size_spread)
            data.size_factor[train_index.to(device)] = sizes.to(data.size_factor)
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = train_index[torch.randperm(n, generator=gen)]
        beta = kl_beta(config, epoch)
        totals = torch.zeros(3, dtype=torch.float64)
        model.train()
        # near-equal batches (none smaller than half a batch, so every process gets a share)
        for idx in torch.tensor_split(order, max(1, -(-n // config.batch_size))):
            noise = torch.randn(len(idx), model.arch.latent_dim, generator=gen)
            share = np.array_split(np.arange(len(idx)), dist.world)[dist.rank]
            local_idx = idx[share].to(device)
            local_noise = noise[share].to(device)
            optim.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=config.amp and device.type == "cuda"):
                loss, rec, kl = batch_loss(net, data, local_idx, local_noise, config, beta)
            scaler.scale(loss * (dist.world / len(idx))).backward()
            scaler.step(optim)
            scaler.update()
            totals += torch.stack([loss.detach(), rec, kl]).double().cpu()
        if dist.world > 1:
            import torch.distributed as tdist

            tdist.all_reduce(totals)
        row = {"epoch": epoch + 1, "loss": float(totals[0] / n), "recon": float(totals[1] / n),
               "kl": float(totals[2] / n), "kl_beta": beta, "seconds": round(time.perf_counter() - t0, 3)}
        history.append(row)
        if on_epoch is not None and dist.main:
            on_epoch(row)
        if checkpoint is not None and dist.main:
            _save_checkpoint(checkpoint, {"model": model.state_dict(), "optim": optim.state_dict(),
                                          "epoch": epoch + 1, "fingerprint": fp, "history": json.dumps(history),
                                          "size_factor": data.size_factor.cpu()})
        if kill_after_epoch is not None and epoch + 1 == kill_after_epoch:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        log.info("epoch %d/%d loss %.4f (recon %.4f, kl %.3f, beta %.3g) %.1f s", epoch + 1, config.epochs,
                 row["loss"], row["recon"], row["kl"], beta, row["seconds"])
    return history


CPU_MEMORY_BUDGET = 2 * 2**30  # bytes a CPU encode/decode may use for volumes
# measured peak / the tensor count below, decoder alone on CPU (demo, low, intermediate):
# inference 2.7-3.0 (the transposed convolutions' column buffers), training 1.2-2.2
_OVERHEAD = {False: 3.0, True: 2.0}


def decoder_bytes_per_volume(arch: Architecture, training: bool, upsample: int = 1) -> int:
    """Peak memory of the decoder per volume, bytes (an upper estimate, float32).

    The tensors counted: in inference (no graph) the input and output of the largest
    transposed convolution, or the last layer plus the Oh symmetrisation's temporaries
    (softplus, three flip sums, the stack of 6 axis permutations and their mean:
    ~12 L^3), whichever is larger; in training every layer's output and its ReLU
    (kept for the backward pass) plus the same ~12 L^3.  Times a measured overhead
    (``_OVERHEAD``).  161^3 (``intermediate``): ~1.0 GB inference, ~1.1 GB training.
    ``upsample`` f > 1 (``vae.volume_upsample``) adds the Fourier interpolation before the
    slicing (three axis products): ~3 floats per fine voxel, the last product's output, its
    clamp and a permuted copy (measured peak 2.0 for one 161^3 volume at f = 2, 0.26 GB;
    counted 0.4 GB before the overhead factor).
    """
    sizes = [arch.base_channels * arch.base_size ** 3]
    edge = arch.base_size
    for channels, stride in arch.decoder:
        edge = {1: edge, 2: 2 * edge - 1, 3: 3 * edge}[stride]
        sizes.append(channels * edge ** 3)
    sym = 12 * arch.volume_size ** 3
    if training:
        floats = 2 * sum(sizes) + sym
    else:
        floats = max(max(a + b for a, b in zip(sizes[:-1], sizes[1:])), sizes[-2] + sym)
    if upsample > 1:
        floats += 3 * (upsample * arch.volume_size) ** 3
    return int(4 * floats * _OVERHEAD[training])


def volume_batch(arch: Architecture, device: torch.device, *, training: bool = False,
                 budget_bytes: int | None = None, max_batch: int = 256, upsample: int = 1) -> int:
    """Volumes to decode (and, with ``upsample`` > 1, interpolate) at once so that they fit in memory,
    1..max_batch.

    budget_bytes : memory the volumes may use; default: on CUDA half of the free
    memory (``torch.cuda.mem_get_info``: the rest for fragmentation, the slicer and
    other processes), on CPU :data:`CPU_MEMORY_BUDGET`.
    """
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = free // 2
        else:
            budget_bytes = CPU_MEMORY_BUDGET
    per_volume = decoder_bytes_per_volume(arch, training, upsample)
    return int(max(1, min(max_batch, budget_bytes // per_volume)))


@torch.no_grad()
def encode(model: VAE, data: TensorData, loss_kind: str = "mse_log",
           batch: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent mean, log variance and reconstruction loss (at z = mean, fitted scale) of every average.

    batch : averages decoded at once (default: :func:`volume_batch` for the device).
    Returns mu (M, d), logvar (M, d), recon (M,).
    """
    model.eval()
    device = data.target.device
    batch = batch or volume_batch(model.arch, device, upsample=data.volume_upsample)
    mus, lvs, recs = [], [], []
    for s in range(0, len(data), batch):
        idx = torch.arange(s, min(s + batch, len(data)), device=device)
        mu, logvar = model.encoder(data.image[idx], data.condition[idx])
        rec, _ = slice_loss(model.decoder(mu), data, idx, loss_kind)
        mus.append(mu.cpu()), lvs.append(logvar.cpu()), recs.append(rec.cpu())
    return torch.cat(mus).numpy(), torch.cat(lvs).numpy(), torch.cat(recs).numpy()


@torch.no_grad()
def decode_volumes(model: VAE, z: np.ndarray, prep: Preprocessing, batch: int | None = None) -> np.ndarray:
    """Intensity volumes (P, L, L, L) float32 at latent points z (P, d).

    The model's overall scale is free (each average's scale is fitted in the loss), so each
    volume is fixed to a mean of 1 over the observed shell (q_min <= |q| <= q_max) in
    normalised units and the radial profile p is multiplied back: mean photons per
    detector pixel per frame of the data set's typical average.
    batch : volumes decoded at once (default: :func:`volume_batch` for the device).
    """
    model.eval()
    device = next(model.parameters()).device
    batch = batch or volume_batch(model.arch, device)
    profile = torch.from_numpy(prep.profile_at(prep.volume_q_norm())).to(device)
    shell = torch.from_numpy(prep.volume_observed()).to(device)
    out = []
    for s in range(0, len(z), batch):
        zz = torch.as_tensor(np.asarray(z[s:s + batch], np.float32), device=device)
        vol = model.decoder(zz)
        mean = (vol * shell).sum((1, 2, 3)) / shell.sum().clamp_min(1)
        out.append((vol / mean.clamp_min(1e-30)[:, None, None, None] * profile).cpu())
    return torch.cat(out).numpy().astype(np.float32)
