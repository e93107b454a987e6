"""Preprocessing of 2D class averages for the VAE (paper appendix B.1).

1. **Crop and resample.**  Every average (on its square (qx, qy) grid, step
   ``dq``) is resampled onto the model's ``n x n`` grid of step
   ``q_max / (n // 2)``: a normalised (masked) Gaussian pre-filter of width
   half the new step against aliasing (``vae.prefilter_px``), then bilinear
   interpolation of ``I * w`` and ``w`` (``w`` = observed 0/1), divided; or
   (``vae.resample: bin``) the mean over each model pixel's area.  A model pixel is
   observed when at least half of its interpolation weight was observed and
   ``|q| <= q_max`` (the circle: the volume covers the sphere of radius q_max).
2. **Radial normalisation.**  Divide by the data set's mean radial profile
   ``p(|q|)`` (stored, multiplied back when generating volumes) and by one
   data-set-wide constant (the median over the averages of their mean over
   observed pixels), so values are O(1) and the steep fall-off does not
   dominate the loss.  Each average keeps its own overall scale (fluence x
   members): the loss fits it per average (:mod:`spicompute.vae.train`), so
   that one Oh-symmetric volume can fit every orientation of an anisotropic
   particle.  (A per-average normalisation to mean 1 would depend on the
   orientation: 0.4--2 for a cube, which no single volume can match.)
3. **Conditioning.**  The encoder sees each average scaled to mean 1 over its
   observed pixels (input conditioning only, not the loss target), the
   orientation quaternion (scalar first, model->lab) and ``log(gain)`` from
   the orientation fit; the rotation matrix goes to the slicer.

``q_max`` (``auto``) is the smallest of the limits of
:func:`spicompute.qrange.resolve_q_range` (grid radius, coverage, and the
radius where the expected photon count per pixel of a typical average drops
below ``min_counts``: beyond it the pattern is shot noise) and the Nyquist
limit of the volume grid for the particle size ``D`` (``q_max <= c * pi / D``
with ``c = L // 2``: a real-space box of at least twice the particle).  ``D``
(``auto``) is the diameter of the sphere whose (size-smeared) form factor best
fits the mean radial profile (:func:`spicompute.emc2d.particle_size.estimate_particle_size`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from spicompute.emc2d.particle_size import estimate_particle_size
from spicompute.errors import InputError, ParameterError
from spicompute.geometry import grid_q
from spicompute.io.averages import AverageSet
from spicompute.qrange import radial_profile, resolve_q_range


@dataclass
class Preprocessing:
    """Everything needed to map averages to model inputs and volumes back to intensities.

    input_size : n, model 2D grid edge (odd)
    volume_size : L, volume grid edge (odd)
    q_max_nm, q_min_nm : modelled q-range, rad/nm (q_min: beamstop edge)
    dq2_nm : 2D model grid step; dq3_nm : volume voxel step (rad/nm)
    wavelength_nm : for the Ewald-sphere q of the 2D grid
    profile_q_nm, profile : the mean radial profile p(|q|) (mean photons/pixel, unit fluence)
    particle_size_nm : D used for the Nyquist bound
    log_floor : floor added before the log in the loss and encoder input
    resample : how averages reach the model grid (:data:`RESAMPLING`, :func:`resample_averages`)
    prefilter_px : ``gauss`` pre-filter sigma in model pixels (0: bilinear only)
    target_oversample : k = 1 or 2: the loss compares slices with the averages on a grid k times finer
        than the encoder's (the pre-filter shrinks with it)
    loss_target : ``grid`` (the loss compares slices with the averages resampled onto a 2D grid) or
        ``detector`` (with each average's own pixels in the q range: no resampling, no pre-filter;
        the slices are taken at those pixels' Ewald q)
    volume_upsample : f = 1, 2 or 3: the volume is interpolated onto a grid f times finer by
        zero-padding its Fourier transform (:func:`spicompute.vae.train.upsample_fourier`) before the
        trilinear slicing
    filter_slices : the model's slices go through the pre-filter the averages went through on their
        way to the loss target (the same Gaussian, :attr:`VaeInputs.target_filter_px`), so that a
        sharp volume can fit averages whose fringe minima the pre-filter filled
    """

    input_size: int
    volume_size: int
    q_max_nm: float
    q_min_nm: float
    dq2_nm: float
    dq3_nm: float
    wavelength_nm: float
    profile_q_nm: list
    profile: list
    particle_size_nm: float | None
    log_floor: float
    q_max_limits: dict
    resample: str = "gauss"
    prefilter_px: float = 0.5
    target_oversample: int = 1
    loss_target: str = "grid"
    volume_upsample: int = 1
    filter_slices: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        # models (and checkpoints) of runs before these options stay valid
        for key, default in (("resample", "gauss"), ("prefilter_px", 0.5), ("target_oversample", 1),
                             ("loss_target", "grid"), ("volume_upsample", 1), ("filter_slices", False)):
            if d[key] == default:
                d.pop(key)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def profile_at(self, q_nm: np.ndarray) -> np.ndarray:
        """p(|q|) by linear interpolation (constant beyond the ends)."""
        return np.interp(q_nm, self.profile_q_nm, self.profile).astype(np.float32)

    @property
    def target_size(self) -> int:
        """Edge of the loss target's 2D grid: ``(n - 1) k + 1`` for ``target_oversample`` k (same q range)."""
        return (self.input_size - 1) * self.target_oversample + 1

    @property
    def dq_target_nm(self) -> float:
        """Step of the loss target's 2D grid, rad/nm."""
        return self.dq2_nm / self.target_oversample

    def grid_shape(self, target: bool = False) -> tuple[int, float]:
        """(edge, step rad/nm) of the encoder's 2D grid, or of the loss target's (``target``)."""
        return (self.target_size, self.dq_target_nm) if target else (self.input_size, self.dq2_nm)

    def q_lab(self, target: bool = False) -> np.ndarray:
        """(n*n, 3) lab-frame Ewald q of the 2D model grid (or the loss target's), rad/nm."""
        n, dq = self.grid_shape(target)
        return grid_q(n, dq, self.wavelength_nm).reshape(-1, 3).astype(np.float32)

    def grid_q_norm(self, target: bool = False) -> np.ndarray:
        """(n, n) in-plane |q| of the 2D model grid (or the loss target's), rad/nm."""
        n, dq = self.grid_shape(target)
        axis = (np.arange(n) - n // 2) * dq
        return np.sqrt(axis[:, None] ** 2 + axis[None, :] ** 2)

    def volume_q_norm(self) -> np.ndarray:
        """(L, L, L) |q| of the volume voxels, rad/nm."""
        c = self.volume_size // 2
        axis = (np.arange(self.volume_size) - c) * self.dq3_nm
        return np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)

    def volume_observed(self) -> np.ndarray:
        """(L, L, L) bool: voxels the data constrain (q_min <= |q| <= q_max)."""
        qn = self.volume_q_norm()
        return (qn >= self.q_min_nm) & (qn <= self.q_max_nm)


@dataclass
class VaeInputs:
    """Model inputs of M averages.

    x : (M, n, n) float32 intensity / (p(|q|) * norm), the loss target (0 where unobserved);
        dimensionless, O(1): each average keeps its own overall scale
    observed : (M, n, n) bool
    rotations : (M, 3, 3) float32 model->lab
    condition : (M, 5) float32 [qw, qx, qy, qz, log gain]
    count_scale : (M,) float32 photons per model pixel per unit of ``x * p`` (p in mean photons per
        detector pixel per frame): ``n_frames * (model pixel area / detector pixel area) * norm``,
        so ``x * p * count_scale`` are the members' photons in a model pixel (Poisson loss)
    input_scale : (M,) float32 mean of ``x`` over the observed pixels: the encoder sees ``x / input_scale``
    average_id : (M,) int64
    norm : the data-set-wide constant, mean photons per detector pixel per frame per unit of p
    target, target_observed : (M, P) float32 / bool, what the loss compares the slices with, in the
        units of ``x``: the encoder's grid itself (P = n², a view of ``x``), the finer grid
        (``target_oversample`` 2, P = n_t²) or the averages' own pixels in the q range
        (``loss_target: detector``); ``count_scale`` is per target pixel
    target_q_lab, target_profile : (P, 3) float32 lab-frame Ewald q (rad/nm) of the target's pixels and
        (P,) float32 p(|q|) there: the loss target's geometry, one place for every kind of target
    target_filter_px : sigma (target-grid pixels) of the Gaussian pre-filter the averages went through
        on their way to the target grid (0: none -- a ``bin`` or ``detector`` target, or a target grid
        no coarser than the detector's pixels, where :func:`resample_averages` does not filter)
    anisotropy : (M,) float64 each average's centrosymmetric angular contrast on the encoder's grid
        (:func:`spicompute.vae.orientations.angular_anisotropy`): whether it holds an orientation
    """

    x: np.ndarray
    observed: np.ndarray
    rotations: np.ndarray
    condition: np.ndarray
    count_scale: np.ndarray
    input_scale: np.ndarray
    average_id: np.ndarray
    target: np.ndarray
    target_observed: np.ndarray
    target_q_lab: np.ndarray
    target_profile: np.ndarray
    norm: float = 1.0
    target_filter_px: float = 0.0
    anisotropy: np.ndarray | None = None


def plan_preprocessing(averages: AverageSet, train_index: np.ndarray, *, input_size: int, volume_size: int,
                       q_max_nm="auto", particle_size_nm="auto", min_counts: float = 1.0,
                       log_floor: float = 0.01, source: str = "averages", resample: str = "gauss",
                       prefilter_px: float = 0.5, target_oversample: int | str = 1, loss_target: str = "grid",
                       volume_upsample: int | str = 1, filter_slices: bool = False) -> Preprocessing:
    """Choose the q-range and grids from the data (see the module docstring)."""
    for name, size in (("vae.input_size", input_size), ("vae.volume_size", volume_size)):
        if size < 5 or size % 2 == 0:
            raise ParameterError(name, f"must be odd and >= 5, got {size}")
    qr = resolve_q_range(averages, "auto", q_max_nm, min_counts=min_counts, index=train_index,
                         section="vae", source=source)
    q_axis, prof, _ = radial_profile(averages, index=train_index)
    if particle_size_nm == "auto":
        # the flat floor is not the particle's: its fringes are sized above it
        size = estimate_particle_size(q_axis, prof - qr.floor, qr.q_min_nm, qr.q_max_nm)
    else:
        size = float(particle_size_nm)
        if not size > 0:
            raise ParameterError("vae.particle_size_nm", f"must be > 0 or auto, got {particle_size_nm!r}")
    limits = dict(qr.limits)
    q_max = qr.q_max_nm
    if size is not None:
        limits["nyquist_nm"] = (volume_size // 2) * np.pi / size
        q_max = min(q_max, limits["nyquist_nm"])
    q_max = float(q_max)
    if loss_target == "detector" and target_oversample == "auto":
        target_oversample = 1   # the detector's own pixels: no 2D grid to refine
    target_oversample = resolve_oversampling("vae.target_oversample", target_oversample,
                                             q_max / (input_size // 2), size)
    volume_upsample = resolve_oversampling("vae.volume_upsample", volume_upsample, q_max / (volume_size // 2),
                                           size)
    if q_max <= qr.q_min_nm + 2 * averages.dq_nm:
        raise InputError(source, "averages/intensity",
                         f"usable q-range {qr.q_min_nm:.3f}..{q_max:.3f} rad/nm is too narrow (limits {limits})")
    dq = averages.dq_nm
    good = np.isfinite(prof) & (q_axis <= q_max + 2 * dq)
    pq, pv = q_axis[good], np.maximum(prof[good], np.nanmax(prof[good]) * 1e-9)
    return Preprocessing(input_size=int(input_size), volume_size=int(volume_size), q_max_nm=float(q_max),
                         q_min_nm=qr.q_min_nm, dq2_nm=float(q_max / (input_size // 2)),
                         dq3_nm=float(q_max / (volume_size // 2)), wavelength_nm=averages.wavelength_nm,
                         profile_q_nm=pq.tolist(), profile=pv.tolist(), particle_size_nm=size,
                         log_floor=float(log_floor), q_max_limits={k: float(v) for k, v in limits.items()},
                         resample=str(resample), prefilter_px=float(prefilter_px),
                         target_oversample=int(target_oversample), loss_target=str(loss_target),
                         volume_upsample=int(volume_upsample), filter_slices=bool(filter_slices))


RESAMPLING = ("gauss", "bin")

#: ``auto`` interpolates finer where a grid samples the particle's intensity less than this many times
#: finer than its Nyquist step pi / D (docs/vae_volumes.md, "vae -- training")
FINE_SAMPLING = 3.0


def sampling_ratio(dq_nm: float, particle_size_nm: float | None) -> float:
    """How many times finer than the particle's Nyquist step (pi / D, rad/nm) a grid of step ``dq_nm``
    samples its intensity; inf when D is unknown."""
    return np.inf if not particle_size_nm else float(np.pi / particle_size_nm / dq_nm)


#: the factors each interpolation option takes besides ``auto``
OVERSAMPLING = {"vae.target_oversample": (1, 2), "vae.volume_upsample": (1, 2, 3)}


def check_oversampling(name: str, value):
    """``value`` of the option ``name`` (a key of :data:`OVERSAMPLING`) as ``"auto"`` or an int, else a
    one-line :class:`ParameterError` naming it."""
    if value == "auto":
        return value
    allowed = OVERSAMPLING[name]
    if isinstance(value, bool) or value not in allowed:
        raise ParameterError(name, f"must be auto or one of {list(allowed)}, got {value!r}")
    return int(value)


def resolve_oversampling(name: str, value, dq_nm: float, particle_size_nm: float | None) -> int:
    """The interpolation factor ``value`` or, for ``auto``, 2 where the grid samples the particle's
    intensity < :data:`FINE_SAMPLING` times finer than its Nyquist step, else 1.

    Why 3: a fringe of period 2 pi / D sampled r times finer than pi / D is filled by linear interpolation
    by ~(pi / 2r)^2 / 2 of its depth (0.6 at r = 1.4, the bright demo set; 0.14 at r = 3), which the
    log loss reads as a less melted shape.  Measured on both photon levels (r 1.4 and 2.8): a factor 2
    of both the 2D target and the volume brings the phased volumes within 10 % of the truth at 42-46 of
    48 line points against 21 (docs/validation.md).
    """
    value = check_oversampling(name, value)
    if value == "auto":
        return 2 if sampling_ratio(dq_nm, particle_size_nm) < FINE_SAMPLING else 1
    return value


def resample_averages(averages: AverageSet, prep: Preprocessing, *, target: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Averages on the model grid: (intensity (M, n, n) float32, observed (M, n, n) bool).

    ``target``: on the loss target's grid instead (:attr:`Preprocessing.target_size`, step
    :attr:`Preprocessing.dq_target_nm`; the same grid when ``target_oversample`` is 1).

    ``prep.resample``: ``gauss`` -- a masked Gaussian pre-filter of ``prep.prefilter_px`` model
    pixels (default half a pixel), then bilinear interpolation (smooth, low noise); ``bin`` -- every source pixel to its nearest
    model pixel, the mean over each model pixel's area (the detector's own integration: less
    blur of fringe minima, a model pixel averages fewer source pixels).  A model pixel is
    observed when at least half of its area was and ``|q| <= q_max``.
    """
    n, dq = prep.grid_shape(target)
    if prep.resample == "bin":
        out, seen = _binned(averages, n, dq)
    else:
        out, seen = _gauss_bilinear(averages, n, dq, prep.prefilter_px)
    observed = (seen >= 0.5) & (prep.grid_q_norm(target) <= prep.q_max_nm)[None]
    return np.where(observed, out, 0.0).astype(np.float32), observed


def prefilter_sigma_px(prefilter_px: float, dq_model_nm: float, dq_source_nm: float) -> float:
    """Sigma (model pixels) of the ``gauss`` pre-filter that takes averages of pixel step ``dq_source_nm``
    onto a model grid of step ``dq_model_nm``: ``prefilter_px`` where the model grid is coarser, else 0
    (no filter for a step of 1 that rounding made 1 + 1 ulp)."""
    return float(prefilter_px) if dq_model_nm / dq_source_nm > 1 + 1e-6 else 0.0


def _gauss_bilinear(averages: AverageSet, n: int, dq: float, prefilter_px: float) -> tuple[np.ndarray, np.ndarray]:
    c = n // 2
    step = dq / averages.dq_nm  # source pixels per model pixel
    coords = (np.arange(n) - c) * step + averages.center
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    sigma = prefilter_sigma_px(prefilter_px, dq, averages.dq_nm) * step   # in source pixels
    out = np.zeros((averages.n_averages, n, n), np.float32)
    seen = np.zeros((averages.n_averages, n, n), np.float32)
    valid = averages.valid   # a property computed over all M averages: once, not per average
    for i in range(averages.n_averages):  # M is small (<= 10^4) and each call is a C loop over the grid
        w = valid[i].astype(np.float64)
        iw = averages.intensity[i] * w
        if sigma:
            w_f, iw_f = ndimage.gaussian_filter(w, sigma), ndimage.gaussian_filter(iw, sigma)
        else:
            w_f, iw_f = w, iw
        ws = ndimage.map_coordinates(w_f, [rows, cols], order=1, mode="constant", cval=0.0)
        ivs = ndimage.map_coordinates(iw_f, [rows, cols], order=1, mode="constant", cval=0.0)
        out[i] = np.where(ws > 1e-6, ivs / np.maximum(ws, 1e-12), 0.0)
        seen[i] = ws
    return out, seen


def _binned(averages: AverageSet, n: int, dq: float) -> tuple[np.ndarray, np.ndarray]:
    c = n // 2
    step = dq / averages.dq_nm
    # the model pixel of every source row / column; outside the model grid: dropped
    j = np.rint((np.arange(averages.intensity.shape[1]) - averages.center) / step + c).astype(np.int64)
    inside = (j >= 0) & (j < n)
    keep = inside[:, None] & inside[None, :]
    target = (j[:, None] * n + j[None, :])[keep]
    area = np.bincount(target, minlength=n * n).astype(np.float64)
    out = np.zeros((averages.n_averages, n * n), np.float32)
    seen = np.zeros_like(out)
    valid = averages.valid   # a property computed over all M averages: once, not per average
    for i in range(averages.n_averages):
        w = valid[i][keep].astype(np.float64)
        weight = np.bincount(target, w, n * n)
        out[i] = np.bincount(target, w * averages.intensity[i][keep], n * n) / np.maximum(weight, 1e-12)
        seen[i] = weight / np.maximum(area, 1.0)
    return out.reshape(-1, n, n), seen.reshape(-1, n, n)


def model_inputs(averages: AverageSet, prep: Preprocessing, quaternions: np.ndarray,
                 gain: np.ndarray, train_index: np.ndarray | None = None) -> VaeInputs:
    """Model inputs of every average (see the module docstring).

    The data-set-wide constant is the median, over the averages of ``train_index``
    (default: all), of each average's mean of ``I / p`` over its observed pixels.
    """
    from spicompute.orient.quaternions import rotation_matrices
    from spicompute.vae.orientations import angular_anisotropy

    intensity, observed = resample_averages(averages, prep)
    x = np.where(observed, intensity / prep.profile_at(prep.grid_q_norm())[None], 0.0)
    n_obs = observed.sum(axis=(1, 2))
    mean = x.sum(axis=(1, 2)) / np.maximum(n_obs, 1)
    sel = np.arange(len(x)) if train_index is None else np.asarray(train_index)
    positive = mean[sel][mean[sel] > 0]
    norm = float(np.median(positive)) if positive.size else 1.0
    x = (x / norm).astype(np.float32)
    input_scale = np.where(mean > 0, mean / norm, 1.0).astype(np.float32)
    # a model pixel spans (dq2 / dq)^2 detector pixels: photons per model pixel = that x photons per pixel
    area = (prep.dq2_nm / averages.dq_nm) ** 2
    g = np.asarray(gain, np.float64)
    log_gain = np.log(np.where(np.isfinite(g) & (g > 0), g, 1.0))
    quats = np.asarray(quaternions, np.float64)
    cond = np.concatenate([quats, log_gain[:, None]], axis=1).astype(np.float32)
    m = len(x)
    if prep.loss_target == "detector":   # the averages' own pixels in the q range, same data-set constant
        q = averages.q_grid()
        q_in = np.hypot(q[..., 0], q[..., 1])
        pixels = (q_in >= prep.q_min_nm) & (q_in <= prep.q_max_nm)
        target_observed = averages.valid[:, pixels]
        target_profile = prep.profile_at(q_in[pixels])
        target = (np.where(target_observed, averages.intensity[:, pixels] / target_profile[None], 0.0)
                  / norm).astype(np.float32)
        target_q_lab = q[pixels].astype(np.float32)
        area = 1.0
    elif prep.target_oversample > 1:   # the loss target on the finer grid, same data-set constant
        t_int, t_observed = resample_averages(averages, prep, target=True)
        t_profile = prep.profile_at(prep.grid_q_norm(target=True))
        target = (np.where(t_observed, t_int / t_profile[None], 0.0) / norm).astype(np.float32).reshape(m, -1)
        target_observed, target_q_lab = t_observed.reshape(m, -1), prep.q_lab(target=True)
        target_profile = t_profile.ravel()
        area = (prep.dq_target_nm / averages.dq_nm) ** 2
    else:   # the encoder's grid itself
        target, target_observed = x.reshape(m, -1), observed.reshape(m, -1)
        target_q_lab, target_profile = prep.q_lab(), prep.profile_at(prep.grid_q_norm()).ravel()
    filter_px = (prefilter_sigma_px(prep.prefilter_px, prep.dq_target_nm, averages.dq_nm)
                 if prep.loss_target == "grid" and prep.resample == "gauss" else 0.0)
    return VaeInputs(x=x, observed=observed, rotations=rotation_matrices(quats).astype(np.float32),
                     condition=cond, count_scale=(averages.n_frames * area * norm).astype(np.float32),
                     input_scale=input_scale, average_id=averages.average_id.copy(), norm=norm,
                     target=target, target_observed=target_observed, target_q_lab=target_q_lab,
                     target_profile=target_profile, target_filter_px=float(filter_px),
                     anisotropy=angular_anisotropy(x, observed))
