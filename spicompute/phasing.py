"""Iterative phase retrieval of 3D (and 2D) diffraction intensities.

Difference map (Elser 2003) followed by error reduction, with a shrink-wrap
support (Marchesini et al. 2003) and a real, non-negative density.  The
measured Fourier modulus ``sqrt(I)`` is imposed only where the intensity was
observed; elsewhere (beamstop region around q = 0, beyond ``q_max``) the
current estimate floats.  Several random starts are aligned to the best one
(integer-voxel translation by FFT cross-correlation, and the centro-inversion
twin ``rho(-x)``) and averaged; their phase agreement gives the phase
retrieval transfer function (PRTF, Chapman et al. 2006) and a resolution.

Conventions
-----------
* Grids are ``L`` points per axis, ``ndim`` = 2 or 3 axes.  In the *centred*
  layout (files, the outside world) q = 0 / x = 0 is at index ``L // 2``;
  internally arrays are in *FFT order* (origin at index 0, ``ifftshift``).
* ``q = 2 pi / d``; grid step ``dq_nm`` (rad/nm).  Real-space voxel edge
  ``dx_nm = 2 pi / (L dq_nm)`` (the field of view is ``2 pi / dq_nm``).
* A real density has a centrosymmetric intensity (Friedel's law); the input
  is symmetrised, ``I(q) <- (I(q) + I(-q)) / 2`` and ``observed <- observed(q)
  and observed(-q)``, which lets every FFT be a real one.

All functions are vectorised over a leading batch axis of random starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.fft

from spicompute.errors import ParameterError

log = logging.getLogger("spicompute.phase")


def check_sampling(vol: dict, path) -> list[int]:
    """Refuse volumes whose grid holds less than twice the particle (no 2x oversampling).

    With the particle size the VAE measured (``@particle_size_nm`` of the volumes file)
    the box ``2 pi / dq`` must hold twice it; volumes whose autocorrelation still fills
    the box are then speckled, not too large: a warning, and their indices are returned.
    Without a size the autocorrelation alone decides.

    The autocorrelation of each intensity volume spans twice the particle; when
    it does not fall off before the faces of the ``2 pi / dq`` box
    (:func:`spicompute.phasing.autocorrelation_extent`) the particle is about
    half the box or more, phase retrieval has too few constraints and the
    support wraps.  One line naming the parameters that set the box; nothing
    is written.
    """
    box = 2 * np.pi / vol["dq_nm"]
    size_nm = vol.get("particle_size_nm")
    if size_nm is not None and box < 2 * size_nm * (1 - 1e-3):  # the VAE's Nyquist bound gives exactly 2x
        raise ParameterError(
            "vae.preset / vae.q_max_nm",
            f"the {box:.0f} nm box (2 pi / dq, dq {vol['dq_nm']:.4g} rad/nm) holds less than twice the "
            f"{size_nm:.0f} nm particle; phasing needs a box >= 2x the particle: use a larger vae.preset or "
            f"a smaller vae.q_max_nm", source=str(path))
    unclear = []
    for i in range(vol["intensity"].shape[0]):
        extent, fits = autocorrelation_extent(vol["intensity"][i], vol["observed"],
                                                      vol["dq_nm"])
        if fits:
            continue
        if size_nm is None:
            raise ParameterError(
                "vae.preset / vae.q_max_nm",
                f"volume {i}: the {box:.0f} nm box (2 pi / dq, dq {vol['dq_nm']:.4g} rad/nm) holds "
                f"less than twice the particle (its autocorrelation fills the box: particle extent "
                f">= {extent:.0f} nm); phasing needs a box >= 2x the particle: use a larger "
                f"vae.preset or a smaller vae.q_max_nm (or, if the particle is small, the volume "
                f"is speckled by noise: check the vae training)", source=str(path))
        unclear.append(i)
    if unclear:
        # the grid holds twice the particle size the VAE measured on the data, so an autocorrelation
        # that fills the box says the volume is speckled (an under-trained decoder), not too big
        log.warning("volumes %s: the autocorrelation fills the %.0f nm box although the particle (%.0f nm) "
                    "fits twice: the volumes look speckled by noise; check the vae training", unclear, box,
                    size_nm)
    return unclear

INV_E = float(np.exp(-1.0))


# --------------------------------------------------------------------------- grids

def real_space_step(size: int, dq_nm: float) -> float:
    """Voxel edge (nm) of the real-space grid conjugate to ``size`` q-steps of ``dq_nm``."""
    return 2.0 * np.pi / (size * dq_nm)


def half_period_resolution(size: int, dq_nm: float) -> float:
    """``pi / q_max`` (nm) with ``q_max = (size // 2) dq_nm``: the finest half period on the grid."""
    return np.pi / ((size // 2) * dq_nm)


def _axes(ndim: int) -> tuple[int, ...]:
    return tuple(range(-ndim, 0))


def to_fft_order(x: np.ndarray, ndim: int) -> np.ndarray:
    """Centred layout (origin at ``L // 2``) -> FFT order (origin at 0), last ``ndim`` axes."""
    return scipy.fft.ifftshift(x, axes=_axes(ndim))


def to_centred(x: np.ndarray, ndim: int) -> np.ndarray:
    """FFT order -> centred layout, last ``ndim`` axes."""
    return scipy.fft.fftshift(x, axes=_axes(ndim))


def invert(x: np.ndarray, ndim: int) -> np.ndarray:
    """``f(-x)`` of an FFT-ordered array (index i -> -i mod L), last ``ndim`` axes."""
    axes = _axes(ndim)
    return np.roll(np.flip(x, axis=axes), 1, axis=axes)


def radial_index(size: int, ndim: int) -> np.ndarray:
    """Integer |q| / dq (rounded) of every grid point, FFT order, shape ``(size,)*ndim``."""
    k = scipy.fft.ifftshift(np.arange(size) - size // 2).astype(np.float64)
    grids = np.meshgrid(*([k] * ndim), indexing="ij")
    return np.rint(np.sqrt(sum(g * g for g in grids))).astype(np.int64)


# --------------------------------------------------------------------------- settings

@dataclass
class PhasingSettings:
    """Parameters of one phase retrieval (see docs/volumes_phase.md).

    n_dm, n_er : difference-map then error-reduction iterations
    beta : difference-map parameter (gamma_S = -1/beta, gamma_M = 1/beta)
    n_starts : independent random starts, aligned and averaged
    shrinkwrap_every : iterations between support updates (during DM)
    shrinkwrap_start : DM iterations before the first support update
    er_per_update : error-reduction steps applied to the DM estimate before each support
        update; the DM restarts from the result (0: plain DM with shrink-wrap)
    shrinkwrap_threshold : support = blurred density > this fraction of its maximum
    sigma_start_nm, sigma_end_nm : Gaussian blur of the shrink-wrap, decreasing
        geometrically over the DM iterations; None = 3x and 1x the half-period
        resolution ``pi / q_max``
    autocorrelation_threshold : initial support = autocorrelation > this fraction of its max
    coarse_size : grids larger than this are first phased on the central half of the
        q-grid (recursively); the coarse support, upsampled, is the initial support
        (0: always start from the autocorrelation)
    support_scale : the initial support is the autocorrelation support scaled by this
        about the origin (0.5: object-sized for a centrosymmetric convex particle)
    keep_factor : starts whose final error exceeds keep_factor x the best one (stagnated)
        are left out of the average and the PRTF
    seed : random starts
    workers : scipy.fft threads (-1: all)
    backend : ``numpy`` (scipy.fft) or ``torch`` (torch.fft on ``device``: the same
        iterations, for GPUs; on the CPU it matches numpy to float32 rounding)
    device : torch device (``cpu``, ``cuda``, ``cuda:1``) for ``backend: torch``
    """

    n_dm: int = 150
    n_er: int = 50
    beta: float = 0.9
    n_starts: int = 4
    shrinkwrap_every: int = 10
    shrinkwrap_start: int = 0
    er_per_update: int = 0
    support_scale: float = 1.0
    coarse_size: int = 45
    shrinkwrap_threshold: float = 0.2
    sigma_start_nm: float | None = None
    sigma_end_nm: float | None = None
    autocorrelation_threshold: float = 0.04
    keep_factor: float = 2.0
    seed: int = 0
    workers: int = -1
    backend: str = "numpy"
    device: str = "cpu"


@dataclass
class PhasingResult:
    """Outcome of :func:`phase_retrieval` (centred layout, origin at ``L // 2``).

    density : (L,)*ndim float32, average of the aligned starts (arbitrary scale)
    support : (L,)*ndim bool, voxels in the support of at least half the starts
    errors : (n_starts,) final Fourier-modulus error of each start
    prtf : (n_shells,) PRTF in shells of width dq (NaN where no observed voxel)
    prtf_q_nm : (n_shells,) shell centres, rad/nm
    resolution_nm : full-period resolution ``2 pi / q`` where the PRTF first drops below 1/e
        (the data limit when it never does)
    dx_nm : voxel edge
    best : index of the best start
    kept : (n_starts,) bool, starts averaged (compact, error <= keep_factor x best)
    forward_ratio : (n_starts,) each start's |F(0)|^2 over the data's Guinier I(0) (NaN where
        the data have no Guinier range); above ``SPREAD_FORWARD_RATIO`` a start is spread
        over the field of view, not an object (:func:`compact_starts`)
    tight_start : the starts began from half the autocorrelation support (``support_scale``
        0.5): the retry after no start from the given one was compact
    """

    density: np.ndarray
    support: np.ndarray
    errors: np.ndarray
    prtf: np.ndarray
    prtf_q_nm: np.ndarray
    resolution_nm: float
    dx_nm: float
    best: int
    kept: np.ndarray = None
    history: list = field(default_factory=list)
    forward_ratio: np.ndarray = None
    tight_start: bool = False

    @property
    def compact(self) -> bool:
        """Whether the best start is an object (its forward scattering is the data's, within
        ``SPREAD_FORWARD_RATIO``), not a density spread over the field of view."""
        if self.forward_ratio is None:
            return True
        ratio = self.forward_ratio[self.best]
        return bool(not np.isfinite(ratio) or ratio <= SPREAD_FORWARD_RATIO)

    @property
    def final_error(self) -> float:
        return float(self.errors[self.best])


# --------------------------------------------------------------------------- building blocks

class _Fourier:
    """Real FFTs over the last ``ndim`` axes of an ``(S, L, ..., L)`` batch, and the few
    array operations the iterations need, so that one loop runs on numpy or torch."""

    def __init__(self, size: int, ndim: int, workers: int):
        self.shape = (size,) * ndim
        self.axes = _axes(ndim)
        self.workers = workers

    def forward(self, x):
        return scipy.fft.rfftn(x, axes=self.axes, workers=self.workers)

    def inverse(self, f):
        return scipy.fft.irfftn(f, s=self.shape, axes=self.axes, workers=self.workers)

    # array operations (numpy)
    def asarray(self, x):
        return x

    def numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def abs(self, x):
        return np.abs(x)

    def where(self, cond, a, b: float):
        return np.where(cond, a, np.float32(b))

    def clamp_min(self, x, value: float):
        return np.maximum(x, np.float32(value))

    def batch_sum(self, x):
        return np.sum(x, axis=self.axes)

    def batch_max(self, x):
        return x.reshape(x.shape[0], -1).max(axis=1)

    def real32(self, x):
        return x.astype(np.float32)


class _TorchFourier(_Fourier):
    """:class:`_Fourier` on torch tensors (``torch.fft``, any device)."""

    def __init__(self, size: int, ndim: int, device: str):
        import torch

        super().__init__(size, ndim, -1)
        self.torch = torch
        self.device = torch.device(device)
        self.dim = tuple(range(-ndim, 0))

    def forward(self, x):
        return self.torch.fft.rfftn(x, dim=self.dim)

    def inverse(self, f):
        return self.torch.fft.irfftn(f, s=self.shape, dim=self.dim)

    def asarray(self, x):
        return self.torch.as_tensor(np.ascontiguousarray(x), device=self.device)

    def numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def abs(self, x):
        return self.torch.abs(x)

    def where(self, cond, a, b: float):
        return self.torch.where(cond, a, self.torch.tensor(b, dtype=a.dtype, device=a.device))

    def clamp_min(self, x, value: float):
        return self.torch.clamp_min(x, value)

    def batch_sum(self, x):
        return x.sum(dim=self.dim)

    def batch_max(self, x):
        return x.reshape(x.shape[0], -1).amax(dim=1)

    def real32(self, x):
        return x.to(self.torch.float32)


def make_fourier(size: int, ndim: int, settings: "PhasingSettings") -> _Fourier:
    """The FFT/array backend of ``settings`` (``numpy`` or ``torch`` on ``device``)."""
    if settings.backend == "torch":
        return _TorchFourier(size, ndim, settings.device)
    if settings.backend != "numpy":
        raise ParameterError("phase.backend", f"must be numpy or torch, got {settings.backend!r}")
    return _Fourier(size, ndim, settings.workers)


def _half(x: np.ndarray) -> np.ndarray:
    """The rfft half (last axis 0..L//2) of an FFT-ordered full grid."""
    return x[..., : x.shape[-1] // 2 + 1]


def blur_transfer(size: int, sigma_vox: float, ndim: int) -> np.ndarray:
    """rfft half-grid transfer function of a periodic Gaussian blur (std ``sigma_vox`` voxels)."""
    f = scipy.fft.fftfreq(size)
    rf = scipy.fft.rfftfreq(size)
    grids = np.meshgrid(*([f] * (ndim - 1) + [rf]), indexing="ij")
    f2 = sum(g * g for g in grids)
    return np.exp(-2.0 * np.pi**2 * sigma_vox**2 * f2).astype(np.float32)


def gaussian_blur(x, sigma_vox: float, ndim: int, workers: int = -1, fourier: _Fourier | None = None):
    """Periodic Gaussian blur (std ``sigma_vox`` voxels) of the last ``ndim`` axes, via FFT."""
    size = x.shape[-1]
    fourier = fourier or _Fourier(size, ndim, workers)
    transfer = fourier.asarray(blur_transfer(size, sigma_vox, ndim))
    return fourier.real32(fourier.inverse(fourier.forward(x) * transfer))


def symmetrise(intensity: np.ndarray, observed: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Friedel-symmetrise FFT-ordered intensity (mean of I(q), I(-q)) and mask (logical and)."""
    inten = 0.5 * (intensity + invert(intensity, ndim))
    obs = observed & invert(observed, ndim)
    return inten, obs


def modulus_projection(x, amplitude_h, observed_h, fourier: _Fourier):
    """P_M: impose |F| = amplitude where observed, keep F elsewhere.  Returns (x', F of x)."""
    f = fourier.forward(x)
    mag = fourier.abs(f)
    scale = fourier.where(observed_h, amplitude_h / fourier.clamp_min(mag, 1e-30), 1.0)
    return fourier.real32(fourier.inverse(f * scale)), f


def support_projection(x, support):
    """P_S: zero outside the support and where negative (real, non-negative density).

    Works on numpy arrays and torch tensors alike.
    """
    if isinstance(x, np.ndarray):
        return np.where(support & (x > 0), x, np.float32(0.0))
    return x * (support & (x > 0))


def fourier_error(x, amplitude_h, observed_h, fourier: _Fourier) -> np.ndarray:
    """Relative modulus misfit ``||obs (|F| - A)|| / ||obs A||`` per start, shape (S,).

    The rfft half-grid double counts nothing that matters for a ratio of two
    sums taken over the same voxels.
    """
    f = fourier.forward(x)
    diff = (fourier.abs(f) - amplitude_h) * observed_h
    num = np.sqrt(fourier.numpy(fourier.batch_sum(diff * diff)))
    den = np.sqrt(fourier.numpy(((amplitude_h * observed_h) ** 2).sum()))
    return (num / max(den, 1e-30)).astype(np.float64)


def fill_beamstop(intensity: np.ndarray, observed: np.ndarray, ndim: int) -> np.ndarray:
    """Intensity with the unobserved centre (shells inside the first observed one) filled.

    The filling value is the largest observed intensity of the first observed
    shell, a conservative plateau for the decreasing low-q intensity of a
    compact object.  Used only for the initial support: without it the missing
    low-q makes the autocorrelation ring over the whole box.  FFT order.
    """
    size = intensity.shape[-1]
    shell = radial_index(size, ndim)
    if not observed.any():
        return intensity * observed
    first = shell[observed].min()
    out = np.where(observed, intensity, 0.0)
    if first > 0:
        plateau = intensity[observed & (shell == first)].max()
        out = np.where(~observed & (shell < first), plateau, out)
    return out


def autocorrelation_support(intensity: np.ndarray, observed: np.ndarray, threshold: float,
                            sigma_vox: float, ndim: int, workers: int = -1) -> np.ndarray:
    """Initial support: the (blurred) autocorrelation ``|IFT(I)|`` above ``threshold`` x max.

    FFT-ordered input/output; unobserved intensity is 0 except the beamstop
    region, filled by :func:`fill_beamstop`.  The autocorrelation's support
    contains every translate of the object that fits the data, so it is a
    safe start for the shrink-wrap.
    """
    fourier = _Fourier(intensity.shape[-1], ndim, workers)
    filled = fill_beamstop(intensity, observed, ndim)
    auto = fourier.inverse(_half(filled).astype(np.complex64))
    auto = gaussian_blur(np.abs(auto).astype(np.float32), sigma_vox, ndim, workers)
    return auto > threshold * auto.max()


TIGHT_SCALE = 0.5           # the retry's initial support: the autocorrelation support scaled by this
SPREAD_FORWARD_RATIO = 3.0  # a start whose |F(0)|^2 exceeds this x the data's Guinier I(0) is spread out


def compact_starts(forward_ratio: np.ndarray) -> np.ndarray:
    """(S,) bool: starts whose forward scattering |F(0)|^2 is at most ``SPREAD_FORWARD_RATIO`` x
    the data's Guinier I(0) (all of them where the data have no Guinier range, ratio NaN).

    The beamstop leaves |F| near q = 0 free, and a density spread thinly over the field of
    view can fit the observed shell (Fourier error below 0.15 on decoded 400-photon volumes)
    while its integral, hence |F(0)|^2 and the particle volume, is many times the particle's.
    Measured: compact starts 1.0-1.4 x the Guinier value (the Guinier fit over the first shells
    underestimates I(0) a little), spread ones 7-15 x (docs/volumes_phase.md).
    """
    ratio = np.asarray(forward_ratio, np.float64)
    return ~(ratio > SPREAD_FORWARD_RATIO)


def guinier_in_range(intensity: np.ndarray, observed: np.ndarray, dq_nm: float,
                     max_qrg: float = 1.3) -> tuple[float, float]:
    """:func:`guinier` of the intensity (clipped at 0), or (NaN, NaN) where it is no estimate: the
    first observed shell already past the Guinier range (q Rg > ``max_qrg``), shells that do not
    decrease, or no positive I(0).  Centred layout."""
    i0, rg = guinier(np.maximum(np.asarray(intensity, dtype=np.float64), 0.0), observed, dq_nm, max_qrg)
    observed = np.asarray(observed, dtype=bool)
    shell = to_centred(radial_index(observed.shape[0], observed.ndim), observed.ndim)
    seen = observed & (shell > 0)
    if not (np.isfinite(i0) and np.isfinite(rg) and i0 > 0 and seen.any()) or \
            float(shell[seen].min()) * dq_nm * rg > max_qrg:
        return float("nan"), float("nan")
    return float(i0), float(rg)


def guinier_forward(intensity: np.ndarray, observed: np.ndarray, dq_nm: float,
                    max_qrg: float = 1.3) -> float:
    """The data's I(0) from :func:`guinier_in_range` (NaN: no check at all)."""
    return guinier_in_range(intensity, observed, dq_nm, max_qrg)[0]


def scale_support(support: np.ndarray, factor: float, ndim: int) -> np.ndarray:
    """Support scaled by ``factor`` about the origin (FFT order): x in out iff x / factor in support.

    The autocorrelation of a compact object spans the object's difference set
    (twice a centrosymmetric convex object), so ``factor = 0.5`` turns it into
    an object-sized support; a tight start constrains the low-q modes that a
    beamstop leaves free.
    """
    size = support.shape[-1]
    k = scipy.fft.ifftshift(np.arange(size) - size // 2)
    src = np.rint(k / factor).astype(np.int64)
    inside = np.abs(src) <= size // 2
    idx = np.where(inside, src % size, 0)
    out = support[np.ix_(*([idx] * ndim))]
    if ndim == 3:
        mask = inside[:, None, None] & inside[None, :, None] & inside[None, None, :]
    else:
        mask = inside[:, None] & inside[None, :]
    return out & mask


def crop_centre(x: np.ndarray, size: int, ndim: int) -> np.ndarray:
    """Central ``size``-point crop (centred layout, origin at ``L // 2``) of the last ``ndim`` axes."""
    full = x.shape[-1]
    lo = full // 2 - size // 2
    index = (Ellipsis,) + (slice(lo, lo + size),) * ndim
    return np.ascontiguousarray(x[index])


def upsample_support(coarse: np.ndarray, size: int, ndim: int, dilate_vox: float = 1.0,
                     workers: int = -1) -> np.ndarray:
    """Support found on a coarse real-space grid (same field of view) on the ``size`` grid.

    Centred layout in and out.  Voxel i of the fine grid (position
    ``(i - c) dx``) takes the value of the nearest coarse voxel; the result is
    dilated by about ``dilate_vox`` coarse voxels (Gaussian blur, threshold)
    so that the fine start is not cut by the coarse grid's edges.
    """
    small = coarse.shape[-1]
    idx = np.rint((np.arange(size) - size // 2) * small / size).astype(np.int64) + small // 2
    idx = np.clip(idx, 0, small - 1)
    fine = coarse[np.ix_(*([idx] * ndim))].astype(np.float32)
    sigma = dilate_vox * size / small
    blurred = to_centred(gaussian_blur(to_fft_order(fine, ndim)[None], sigma, ndim, workers)[0], ndim)
    return blurred > 0.1


def shrinkwrap(x, sigma_vox: float, threshold: float, ndim: int, workers: int = -1,
               fourier: _Fourier | None = None):
    """New support per start: Gaussian-blurred density above ``threshold`` x its maximum."""
    fourier = fourier or _Fourier(x.shape[-1], ndim, workers)
    blurred = gaussian_blur(fourier.clamp_min(x, 0.0), sigma_vox, ndim, fourier=fourier)
    peak = fourier.batch_max(blurred).reshape((-1,) + (1,) * ndim)
    return blurred > threshold * peak


def align_to(reference: np.ndarray, candidates: np.ndarray, ndim: int, workers: int = -1):
    """Align each candidate to ``reference`` by integer translation and optional inversion.

    reference : (L,)*ndim FFT order; candidates : (S, L, ...) FFT order.
    Returns (aligned (S, ...), shifts (S, ndim) int, inverted (S,) bool); the
    same transforms can be applied to other arrays with :func:`apply_alignment`.
    """
    fourier = _Fourier(reference.shape[-1], ndim, workers)
    ref_f = fourier.forward(reference)
    best = []
    for flip in (False, True):
        cand = invert(candidates, ndim) if flip else candidates
        cc = fourier.inverse(ref_f[None] * np.conj(fourier.forward(cand)))
        flat = cc.reshape(cc.shape[0], -1)
        idx = flat.argmax(axis=1)
        best.append((flat[np.arange(len(idx)), idx], np.array(np.unravel_index(idx, cc.shape[1:])).T))
    inverted = best[1][0] > best[0][0]
    shifts = np.where(inverted[:, None], best[1][1], best[0][1])
    return apply_alignment(candidates, shifts, inverted, ndim), shifts, inverted


def apply_alignment(x: np.ndarray, shifts: np.ndarray, inverted: np.ndarray, ndim: int) -> np.ndarray:
    """Apply per-start inversion then integer roll (FFT order) to a batch ``(S, L, ...)``."""
    out = np.empty_like(x)
    axes = _axes(ndim)
    for s in range(x.shape[0]):
        item = invert(x[s], ndim) if inverted[s] else x[s]
        out[s] = np.roll(item, tuple(int(v) for v in shifts[s]), axis=axes)
    return out


def centre_shift(density: np.ndarray, ndim: int) -> tuple[int, ...]:
    """Integer roll (FFT order) that brings the circular centre of mass to the origin."""
    size = density.shape[-1]
    phase = np.exp(2j * np.pi * np.arange(size) / size)
    shift = []
    for ax in range(ndim):
        other = tuple(a for a in range(ndim) if a != ax)
        profile = density.sum(axis=other)
        angle = np.angle(np.sum(profile * phase))
        shift.append(-int(np.rint(angle * size / (2 * np.pi))) % size)
    return tuple(shift)


def prtf_shells(f_batch: np.ndarray, observed_h: np.ndarray, amplitude_h: np.ndarray,
                size: int, ndim: int) -> np.ndarray:
    """Noise-debiased PRTF per shell from the phases of ``S`` aligned starts.

    f_batch : (S, ...) rfft half-grid amplitudes of the aligned starts.  Per
    voxel ``m = |<exp(i phi_s)>_s|``; for S independent random phases
    ``E[m^2] = 1 / S``, so the plain ``m`` of 4 random starts averages ~0.44,
    above 1/e.  The debiased value ``sqrt(max(0, (S m^2 - 1) / (S - 1)))`` is
    1 for agreeing phases and ~0 for random ones.  Shell mean over the observed
    voxels of non-zero intensity in shells of width dq, indexed 0 .. L // 2;
    NaN where a shell has no such voxel, and everywhere when S < 2.
    """
    n_shells = size // 2 + 1
    n = f_batch.shape[0]
    if n < 2:
        return np.full(n_shells, np.nan)
    phases = f_batch / np.maximum(np.abs(f_batch), 1e-30)
    m2 = np.abs(phases.mean(axis=0)) ** 2
    agree = np.sqrt(np.maximum(0.0, (n * m2 - 1.0) / (n - 1.0)))
    shell = _half(radial_index(size, ndim))
    use = observed_h & (amplitude_h > 1e-6 * amplitude_h.max()) & (shell < n_shells)
    # the rfft half holds q and -q once except its last-axis plane 0 (and Nyquist);
    # Friedel symmetry makes both halves equal, so plain shell means are exact.
    counts = np.bincount(shell[use], minlength=n_shells)[:n_shells]
    sums = np.bincount(shell[use], weights=agree[use], minlength=n_shells)[:n_shells]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def prtf_resolution(prtf: np.ndarray, q_nm: np.ndarray, level: float = INV_E) -> float:
    """Full-period resolution ``2 pi / q`` (nm) where the PRTF first falls below ``level``.

    The crossing is interpolated linearly between shells; shell 0 (q = 0) is
    ignored.  NaN ("no resolution") when the first valid shell is already
    below ``level`` (the starts do not agree even at the lowest observed q,
    e.g. random phases) or no shell is valid.  If the PRTF never drops below
    ``level`` the data limit ``2 pi / q_last`` (last valid shell) is returned;
    :func:`prtf_at_data_limit` tells that case apart.
    """
    valid = np.flatnonzero(np.isfinite(prtf) & (q_nm > 0))
    if valid.size == 0:
        return float("nan")
    below = prtf[valid] < level
    if not below.any():
        return float(2 * np.pi / q_nm[valid[-1]])
    first = int(np.argmax(below))
    if first == 0:
        return float("nan")
    k0, k1 = valid[first - 1], valid[first]
    p0, p1 = prtf[k0], prtf[k1]
    t = (p0 - level) / (p0 - p1) if p0 != p1 else 0.0
    return float(2 * np.pi / (q_nm[k0] + t * (q_nm[k1] - q_nm[k0])))


def prtf_at_data_limit(prtf: np.ndarray, q_nm: np.ndarray, level: float = INV_E) -> bool:
    """True when the PRTF stays at or above ``level`` on every valid shell (q > 0).

    The resolution is then the data limit ``2 pi / q_max``: a bound set by the
    grid, not a measurement of how far the phases are reproducible.
    """
    valid = np.isfinite(prtf) & (q_nm > 0)
    return bool(valid.any() and np.all(prtf[valid] >= level))


def particle_volume(density: np.ndarray, dx_nm: float, fraction: float = 1e-4) -> float:
    """Particle volume (nm^ndim) as in the paper's Fig. 5D.

    The voxels whose density exceeds ``fraction`` x the total mass
    (``sum(density)``), times the voxel volume ``dx_nm ** ndim``.  Note the
    threshold is per voxel: it is meaningful while a voxel of the particle
    holds more than ``fraction`` of the mass (particles under ~1/fraction
    voxels); see docs/volumes_phase.md.
    """
    rho = np.asarray(density, dtype=np.float64)
    total = rho.sum()
    if not np.isfinite(total) or total <= 0:
        return 0.0
    return float(np.count_nonzero(rho > fraction * total) * dx_nm ** rho.ndim)


def particle_volume_half_max(density: np.ndarray, dx_nm: float) -> float:
    """Grid-independent particle volume (nm^ndim): voxels above half the plateau density.

    The plateau is the 99th percentile of the positive density (robust to a few
    hot voxels).  Unlike :func:`particle_volume` (the paper's per-voxel
    threshold of 1e-4 of the total mass, which counts no voxel once a particle
    spans more than 10^4 voxels), this does not depend on the sampling.
    """
    rho = np.asarray(density, dtype=np.float64)
    pos = rho[rho > 0]
    if pos.size == 0:
        return 0.0
    return float(np.count_nonzero(rho > 0.5 * np.percentile(pos, 99)) * dx_nm ** rho.ndim)


_SPHERE_AREA = {2: 2.0 * np.pi, 3: 4.0 * np.pi}  # surface of the unit sphere in ndim dimensions


def _shell_sums(values: np.ndarray, use: np.ndarray, shell: np.ndarray, n_shells: int):
    counts = np.bincount(shell[use], minlength=n_shells)[:n_shells]
    sums = np.bincount(shell[use], weights=values[use], minlength=n_shells)[:n_shells]
    return counts, sums


def _ball_and_tail(intensity: np.ndarray, observed: np.ndarray, dq_nm: float, porod_from: float):
    """Shared geometry of the invariant estimators (centred layout in).

    Returns (shell index (L,)*ndim, k_max, ball mask |q| <= k_max dq, Porod tail of the
    invariant beyond the ball (nm^-ndim x intensity units), Porod constant K).
    The tail is ``int_{q_b}^inf S_d q^(d-1) K / q^(d+1) dq = S_d K / q_b`` with
    ``q_b`` the radius of a ball holding as many voxels as the summed one, and
    ``K = <I q^(d+1)>`` over the observed voxels with ``q >= porod_from x q_max``
    (Porod's law, ``I ~ q^-4`` in 3D, for a particle with a sharp surface).
    """
    ndim, size = intensity.ndim, intensity.shape[0]
    shell = to_centred(radial_index(size, ndim), ndim)
    k_max = int(shell[observed].max())
    ball = shell <= k_max
    n = int(ball.sum())
    q_b = dq_nm * ((3.0 * n / (4.0 * np.pi)) ** (1 / 3) if ndim == 3 else (n / np.pi) ** 0.5)
    k = to_centred(scipy.fft.ifftshift(np.arange(size) - size // 2).astype(np.float64), 1)
    grids = np.meshgrid(*([k * dq_nm] * ndim), indexing="ij")
    q = np.sqrt(sum(g * g for g in grids))
    outer = observed & ball & (q >= porod_from * k_max * dq_nm)
    porod = float(np.mean(intensity[outer] * q[outer] ** (ndim + 1))) if outer.any() else 0.0
    return shell, k_max, ball, _SPHERE_AREA[ndim] * max(porod, 0.0) / q_b, porod


def invariant_volume(density: np.ndarray, intensity: np.ndarray, observed: np.ndarray,
                     dq_nm: float, porod_from: float = 0.7) -> tuple[float, float]:
    """Particle volume (nm^ndim) from the Porod invariant, with the phased forward scattering.

    For a particle of uniform density ``V = (int rho)^2 / int rho^2 =
    (2 pi)^d I(0) / Q`` with ``Q = int I d^dq`` (Parseval).  ``I(0) = |F(0)|^2``
    comes from the phased density (the beamstop leaves it unmeasured; the
    support and positivity fix it); ``Q`` sums the measured intensity where
    observed inside the ball ``|q| <= q_max``, the phased ``|F|^2`` at the
    unobserved voxels inside it (beamstop, gaps), and a Porod tail beyond
    ``q_max`` (see :func:`_ball_and_tail`).  Sub-voxel and grid independent:
    no threshold is involved.  For a non-uniform density the value is the
    effective volume ``(int rho)^2 / int rho^2`` (at most the support volume).

    density : (L,)*ndim centred, scaled as :func:`phase_retrieval` returns it
        (``F(q) = dx^d DFT(density)`` is on the scale of ``sqrt(intensity)``)
    intensity, observed : (L,)*ndim centred, the input of the retrieval
    dq_nm : q step (rad/nm)
    Returns (volume nm^ndim, share of Q in the Porod tail).
    """
    rho = np.asarray(density, dtype=np.float64)
    inten = np.maximum(np.asarray(intensity, dtype=np.float64), 0.0)
    observed = np.asarray(observed, dtype=bool)
    ndim, size = rho.ndim, rho.shape[0]
    dx = real_space_step(size, dq_nm)
    f = to_centred(scipy.fft.fftn(to_fft_order(rho, ndim)), ndim) * dx**ndim
    power = np.abs(f) ** 2
    _, _, ball, tail, _ = _ball_and_tail(inten, observed, dq_nm, porod_from)
    q_ball = float(np.sum(np.where(observed, inten, power)[ball])) * dq_nm**ndim
    total = q_ball + tail
    i0 = float(rho.sum() * dx**ndim) ** 2
    if total <= 0 or not np.isfinite(total):
        return float("nan"), float("nan")
    return float((2 * np.pi) ** ndim * i0 / total), float(tail / total)


def guinier(intensity: np.ndarray, observed: np.ndarray, dq_nm: float,
            max_qrg: float = 1.3) -> tuple[float, float]:
    """Forward scattering ``I(0)`` and radius of gyration (nm) from the first observed shells.

    Least squares ``ln <I>_shell = ln I0 - q^2 Rg^2 / 3`` on the first three
    observed shells, refitted on those with ``q Rg <= max_qrg`` when at least
    two remain.  Centred layout.  Returns (I0, Rg); Rg is NaN when the shell
    means do not decrease.
    """
    inten = np.asarray(intensity, dtype=np.float64)
    observed = np.asarray(observed, dtype=bool)
    ndim, size = inten.ndim, inten.shape[0]
    shell = to_centred(radial_index(size, ndim), ndim)
    n_shells = int(shell.max()) + 1
    counts, sums = _shell_sums(inten, observed, shell, n_shells)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    ks = np.flatnonzero((counts > 0) & (np.arange(n_shells) > 0) & (mean > 0))[:3]
    if ks.size == 0:
        return float("nan"), float("nan")
    if ks.size == 1:
        return float(mean[ks[0]]), float("nan")

    def fit(k):
        slope, icpt = np.polyfit((k * dq_nm) ** 2, np.log(mean[k]), 1)
        return icpt, slope

    icpt, slope = fit(ks)
    if slope >= 0:
        return float(mean[ks[0]]), float("nan")
    rg = np.sqrt(-3.0 * slope)
    inside = ks[ks * dq_nm * rg <= max_qrg]
    if inside.size >= 2:
        icpt, slope = fit(inside)
        rg = np.sqrt(-3.0 * slope) if slope < 0 else float("nan")
    return float(np.exp(icpt)), float(rg)


def intensity_volume(intensity: np.ndarray, observed: np.ndarray, dq_nm: float,
                     porod_from: float = 0.7, max_qrg: float = 1.3) -> float:
    """Particle volume (nm^ndim) from the intensity alone: ``(2 pi)^d I(0) / Q``.

    A cross-check of :func:`invariant_volume` that needs no phases: ``I(0)``
    from :func:`guinier`; ``Q`` from the shell means of the observed intensity
    times each shell's voxel count inside ``|q| <= q_max`` (the Guinier curve
    on shells without an observed voxel), plus the same Porod tail.  Less
    accurate than the phased estimate (the Guinier fit on shells up to q Rg ~ 2
    underestimates I(0) by 3-8 % on cubes and spheres); NaN when the first
    observed shell is already past the Guinier range (q Rg > ``max_qrg``), where
    it would be no check at all.  Centred layout.
    """
    inten = np.maximum(np.asarray(intensity, dtype=np.float64), 0.0)
    observed = np.asarray(observed, dtype=bool)
    ndim = inten.ndim
    i0, rg = guinier_in_range(inten, observed, dq_nm, max_qrg)
    if not np.isfinite(i0):
        return float("nan")
    shell, k_max, ball, tail, _ = _ball_and_tail(inten, observed, dq_nm, porod_from)
    counts_all = np.bincount(shell[ball], minlength=k_max + 1)[: k_max + 1]
    counts, sums = _shell_sums(inten, observed & ball, shell, k_max + 1)
    q_k = np.arange(k_max + 1) * dq_nm
    model = i0 * np.exp(-(q_k * rg) ** 2 / 3.0)
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), model)
    total = float(np.sum(mean * counts_all)) * dq_nm**ndim + tail
    return float((2 * np.pi) ** ndim * i0 / total)


def autocorrelation_extent(intensity: np.ndarray, observed: np.ndarray, dq_nm: float,
                           threshold: float = 0.05, face_level: float = 0.1) -> tuple[float, bool]:
    """Particle extent (nm) from the autocorrelation of the intensity, and whether it fits.

    The autocorrelation ``|IFT(I)|`` (beamstop filled by :func:`fill_beamstop`)
    of a particle of width D along an axis falls to zero at offset D along it;
    on a grid of field of view ``2 pi / dq`` it does so before the box face only
    when the box holds at least twice the particle (2x oversampling, the
    condition for phase retrieval); otherwise the wrapped copies overlap at the
    face.  Per axis, the largest value on each plane at offset k (relative to
    the peak) gives an outward profile.

    extent : the widest axis's first drop below ``threshold`` (linearly
        interpolated; the first drop, not the last: the truncation at q_max
        leaves a ringing floor of a few % further out); ``pi / dq`` (half the
        box) when there is none.  The particle's width for a cube; ~0.8 D for
        a ball of diameter D, whose overlap with its shifted copy has weak tails.
    fits : the profile at the box face is below ``face_level``.  The
        truncation at q_max blurs the autocorrelation's edge, so at exactly 2x
        the face value is ~0.085 for a cube and ~0.03 for a sphere (27..45
        grids); 0.1 accepts both at 2x and refuses a cube at <= 1.9x (a sphere,
        whose autocorrelation has weak tails, only at <= 1.6x).

    Centred layout in.
    """
    inten = np.maximum(np.asarray(intensity, dtype=np.float64), 0.0)
    ndim, size = inten.ndim, inten.shape[0]
    obs = np.asarray(observed, dtype=bool)
    inten_f, obs_f = symmetrise(to_fft_order(inten, ndim), to_fft_order(obs, ndim), ndim)
    filled = fill_beamstop(inten_f, obs_f, ndim)
    auto = np.abs(_Fourier(size, ndim, -1).inverse(_half(filled).astype(np.complex128)))
    auto = to_centred(auto, ndim) / max(float(auto.max()), 1e-300)
    dx = real_space_step(size, dq_nm)
    half = size // 2
    reach, face = 0.0, 0.0
    for ax in range(ndim):
        other = tuple(a for a in range(ndim) if a != ax)
        profile = auto.max(axis=other)
        outward = np.maximum(profile[half:], profile[half::-1])  # offsets 0 .. half
        face = max(face, float(outward[-1]))
        below = np.flatnonzero(outward < threshold)
        if below.size == 0:
            reach = float(half) + 0.5
            continue
        k = int(below[0])
        p0, p1 = outward[k - 1], outward[k]
        reach = max(reach, k - 1 + (p0 - threshold) / (p0 - p1))
    return float(reach * dx), bool(face < face_level)


# --------------------------------------------------------------------------- driver

def _sigmas(settings: PhasingSettings, size: int, dq_nm: float) -> tuple[float, float]:
    res = half_period_resolution(size, dq_nm)
    s0 = settings.sigma_start_nm if settings.sigma_start_nm is not None else 3.0 * res
    s1 = settings.sigma_end_nm if settings.sigma_end_nm is not None else 1.0 * res
    return float(s0), float(s1)


def _iterate(x, support, amp_h, obs_h, fourier: _Fourier, s: "PhasingSettings", ndim: int,
             sig0: float, sig1: float):
    """Difference map with shrink-wrap, then error reduction, on ``fourier``'s backend.

    x, support: (S, L, ...) FFT-ordered starts and supports; amp_h, obs_h: rfft
    half-grid amplitudes and observed mask.  Returns (x, support, history).
    Python-float coefficients keep float32 on both backends (numpy >= 2 scalars are weak).
    """
    history = []
    beta = s.beta
    g_s, g_m = -1.0 / s.beta, 1.0 / s.beta
    n_updates = max(1, (s.n_dm - s.shrinkwrap_start) // max(s.shrinkwrap_every, 1))
    update = 0
    estimate = x
    for it in range(s.n_dm):
        pm_x, _ = modulus_projection(x, amp_h, obs_h, fourier)
        f_m = (1 + g_m) * pm_x - g_m * x
        ps_fm = support_projection(f_m, support)
        if s.beta == 1.0:
            pm_fs = pm_x  # f_S(x) = x when gamma_S = -1
        else:
            f_s = (1 + g_s) * support_projection(x, support) - g_s * x
            pm_fs, _ = modulus_projection(f_s, amp_h, obs_h, fourier)
        x = x + beta * (ps_fm - pm_fs)
        estimate = ps_fm
        if (s.shrinkwrap_every > 0 and it + 1 > s.shrinkwrap_start
                and (it + 1 - s.shrinkwrap_start) % s.shrinkwrap_every == 0):
            # a few ER steps settle the estimate before the support is recomputed from it;
            # the difference map then restarts from the settled estimate
            for _ in range(s.er_per_update):
                pm_e, _ = modulus_projection(estimate, amp_h, obs_h, fourier)
                estimate = support_projection(pm_e, support)
            if s.er_per_update:
                x = estimate
            t = min(update / max(n_updates - 1, 1), 1.0)
            sigma = sig0 * (sig1 / sig0) ** t
            support = shrinkwrap(estimate, sigma, s.shrinkwrap_threshold, ndim, fourier=fourier)
            update += 1
            history.append(fourier_error(estimate, amp_h, obs_h, fourier).tolist())
    x = support_projection(estimate, support) if s.n_dm else x
    for _ in range(s.n_er):
        pm_x, _ = modulus_projection(x, amp_h, obs_h, fourier)
        x = support_projection(pm_x, support)
    return x, support, history


def phase_retrieval(intensity: np.ndarray, observed: np.ndarray, dq_nm: float,
                    settings: PhasingSettings | None = None) -> PhasingResult:
    """Retrieve a real, non-negative density from a centred 2D or 3D intensity.

    intensity : (L,)*ndim, ndim in (2, 3), centred (q = 0 at ``L // 2``), >= 0
    observed : same shape, bool; True where ``sqrt(I)`` is imposed
    dq_nm : q step (rad/nm)

    Each start: random density in the initial (autocorrelation) support;
    ``n_dm`` difference-map iterations with shrink-wrap every
    ``shrinkwrap_every``; then ``n_er`` error-reduction iterations on the last
    support.  Starts are aligned to the one of lowest Fourier error and those
    within ``keep_factor`` of its error averaged.
    """
    s = settings or PhasingSettings()
    intensity = np.asarray(intensity, dtype=np.float64)
    ndim = intensity.ndim
    size = intensity.shape[0]
    if ndim not in (2, 3) or any(n != size for n in intensity.shape):
        raise ValueError(f"intensity must be a square/cubic 2D or 3D grid, got {intensity.shape}")
    if np.shape(observed) != intensity.shape:
        raise ValueError("observed and intensity shapes differ")
    if not np.all(np.isfinite(intensity)):
        raise ValueError("intensity contains NaN or Inf")
    if s.n_starts < 1 or s.n_dm < 0 or s.n_er < 0 or not 0 < s.beta <= 1.5:
        raise ValueError("bad phasing settings")
    dx = real_space_step(size, dq_nm)
    inten, obs = symmetrise(to_fft_order(np.maximum(intensity, 0), ndim),
                            to_fft_order(np.asarray(observed, dtype=bool), ndim), ndim)
    if not obs.any():
        raise ValueError("no observed voxel")
    scale = float(np.sqrt(inten[obs].max()))
    amp_h = _half(np.sqrt(inten) / scale).astype(np.float32)  # unit peak amplitude
    obs_h = _half(obs)
    fourier = _Fourier(size, ndim, s.workers)
    sig0, sig1 = (v / dx for v in _sigmas(s, size, dq_nm))

    if 0 < s.coarse_size < size:
        # multiscale start: the central half of the q-grid (same field of view, voxels ~2x)
        # is phased first; a loose autocorrelation support on a large grid leaves the
        # beamstop's low-q modes too free for the short DM runs to converge
        small = max(5, (size // 2) | 1)
        coarse = phase_retrieval(crop_centre(np.maximum(intensity, 0), small, ndim),
                                 crop_centre(np.asarray(observed, dtype=bool), small, ndim),
                                 dq_nm, s)
        support0 = to_fft_order(upsample_support(coarse.support, size, ndim, workers=s.workers), ndim)
    else:
        support0 = autocorrelation_support(inten, obs, s.autocorrelation_threshold, sig1, ndim,
                                           s.workers)
        if s.support_scale != 1.0:
            support0 = scale_support(support0, s.support_scale, ndim)
    rng = np.random.default_rng(s.seed)
    shape = (s.n_starts,) + (size,) * ndim
    support = np.broadcast_to(support0, shape).copy()
    x = (rng.random(shape, dtype=np.float32) * support).astype(np.float32)
    f0 = fourier.forward(x)
    ratio = np.sqrt(np.sum((amp_h * obs_h) ** 2) / np.maximum(
        np.sum((np.abs(f0) * obs_h) ** 2, axis=fourier.axes), 1e-30))
    x *= ratio.reshape((-1,) + (1,) * ndim).astype(np.float32)

    # the iterations run on the chosen backend (numpy, or torch on a GPU); the rest stays numpy
    ops = make_fourier(size, ndim, s)
    x, support, history = _iterate(ops.asarray(x), ops.asarray(support), ops.asarray(amp_h),
                                   ops.asarray(obs_h), ops, s, ndim, sig0, sig1)
    x, support = ops.numpy(x), ops.numpy(support)
    errors = fourier_error(x, amp_h, obs_h, fourier)
    # a start spread over the field of view is not a solution, however low its error
    i0_data = guinier_forward(intensity, observed, dq_nm)
    ratio = (scale * x.reshape(len(x), -1).sum(axis=1, dtype=np.float64)) ** 2 / i0_data
    compact = compact_starts(ratio)
    if not compact.any() and (s.support_scale > TIGHT_SCALE or 0 < s.coarse_size < size):
        # none was: the autocorrelation support left the low-q modes too free (measured on decoded
        # 400-photon volumes: 2 of 12 with every start spread out).  Once more from an object-sized
        # support (half the autocorrelation's: exact for a centrosymmetric convex particle, and
        # intensities are centrosymmetric), with other random starts
        seeds = s.seed if isinstance(s.seed, np.random.SeedSequence) else np.random.SeedSequence(s.seed)
        tight = replace(s, support_scale=TIGHT_SCALE, coarse_size=0, seed=seeds.spawn(1)[0])
        retry = phase_retrieval(intensity, observed, dq_nm, tight)
        retry.tight_start = True
        return retry
    usable = compact if compact.any() else np.ones_like(compact)   # none compact after the retry: all
    best = int(np.argmin(np.where(usable, errors, np.inf)))
    kept = (errors <= s.keep_factor * errors[best] + 1e-12) & usable
    aligned, shifts, inverted = align_to(x[best], x[kept], ndim, s.workers)
    supports = apply_alignment(support[kept], shifts, inverted, ndim)
    density = aligned.mean(axis=0)
    roll = centre_shift(density, ndim)
    axes = _axes(ndim)
    density = np.roll(density, roll, axis=axes)
    aligned = np.roll(aligned, roll, axis=axes)
    supp = np.roll(supports.mean(axis=0) >= 0.5, roll, axis=axes)

    # PRTF from the modulus-projected amplitudes of the aligned starts
    f = fourier.forward(aligned)
    prtf = prtf_shells(f, obs_h, amp_h, size, ndim)
    q_shell = np.arange(size // 2 + 1) * dq_nm
    resolution = prtf_resolution(prtf, q_shell)
    # physical scale: the continuous F(q) = dx^ndim DFT(rho), so with I in nm^(2 ndim)
    # (|F|^2 of a unit-density particle) the density comes out in units of that density
    density = (density * scale / dx**ndim).astype(np.float32)
    return PhasingResult(density=to_centred(density, ndim), support=to_centred(supp, ndim),
                         errors=errors, prtf=prtf, prtf_q_nm=q_shell, resolution_nm=resolution,
                         dx_nm=dx, best=best, kept=kept, history=history, forward_ratio=ratio)
