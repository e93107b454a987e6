"""Common-line cross-correlation (CC) matrix of 2D class averages.

Two central slices of one object's 3D Fourier intensity share a line through
the origin (small-angle limit; an arc on the Ewald sphere).  For every pair
of averages ``(a, b)`` we take the maximum, over all line angles
``(theta_a, theta_b)``, of the Pearson correlation of the intensity along
line ``theta_a`` of ``a`` with line ``theta_b`` of ``b``, and remember the
best angle pair.

Pipeline (all vectorised):

1. :func:`polar_lines` — bilinear polar resampling of every average on
   ``n_r`` radii x ``2 n_lines`` angles over 2 pi, then Friedel folding: the
   half-lines at ``theta`` and ``theta + pi`` are averaged, so *a line* is
   one folded half-line, ``n_lines`` of them over pi (default 180 lines,
   1 degree apart; from 360 bins over 2 pi).  Folding makes a line
   independent of its direction, so the sign of the common-line direction
   never matters.
2. :func:`normalise_lines` — divide by the data set's mean radial profile
   (default; ``log`` and ``line-ratio`` alternatives), optionally weight by
   ``r**q_power``, then centre each line over its own valid bins and scale it
   to unit norm; invalid bins are set to 0.  The dot product of two such
   lines is their Pearson correlation when both are fully valid, and an
   approximation of the correlation over the bins valid in both otherwise
   (see :func:`masked_pearson` for the exact value and the tests for the
   accuracy).
3. :func:`cc_matrix` — the lines of all averages stacked as
   ``X (M * n_lines, n_r)`` float32; for blocks of averages ``(A, B)`` with
   ``B >= A`` the product ``X_A X_B^T`` is reshaped to
   ``(a, n_lines, b, n_lines)`` and reduced with a max (+ argmax) over both
   line axes.  Only upper-triangular blocks are computed; the matrix is
   mirrored so it is exactly symmetric.  The full ``(M n_lines)^2`` product
   never exists.  torch on the GPU when present, else torch (or numpy) on
   the CPU; Dask over bands of block rows for large ``M``.

Units: radii in grid steps of the averages' (qx, qy) grid, ``q = r * dq_nm``
rad/nm; angles in radians from +qx towards +qy (see :mod:`spicompute.landscape.polar`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spicompute.errors import ParameterError
from spicompute.execution import completed_results, dask_client, resolve_device
from spicompute.landscape.cc_kernels import block_kernel
from spicompute.landscape.polar import friedel_fold, mean_radial_profile, polar_resample

log = logging.getLogger("spicompute.commonlines")

NORMALISATIONS = ("radial", "log", "line-ratio", "none")
#: ``bf16``: a bf16 screen with float32 re-scoring of the candidates (:mod:`.cc_kernels`)
BACKENDS = ("auto", "torch", "numpy", "bf16")


# --------------------------------------------------------------------------- lines
def radial_coverage(valid: np.ndarray, max_radius: int | None = None,
                    n_angles: int = 180) -> np.ndarray:
    """Fraction of observed polar bins at each integer radius, over all averages.

    Parameters
    ----------
    valid : (M, L, L) bool, True where an average was observed
    max_radius : largest radius considered (default ``L // 2 - 1``)

    Returns
    -------
    coverage : (max_radius + 1,) float in [0, 1], index = radius in grid steps
    """
    valid = np.asarray(valid, bool)
    size = valid.shape[1]
    rmax = size // 2 - 1 if max_radius is None else int(max_radius)
    radii = np.arange(rmax + 1, dtype=np.float64)
    _, pvalid = polar_resample(valid.astype(np.float32), valid, radii, 2 * n_angles)
    return pvalid.mean(axis=(0, 2))


def auto_radius_range(valid: np.ndarray, *, inner_coverage: float = 0.9,
                      outer_coverage: float = 0.5, min_radius: int = 2) -> tuple[int, int]:
    """Default radius range (grid steps) of the common lines.

    ``r_min`` is the first radius (>= ``min_radius``) from which the polar
    coverage over all averages reaches ``inner_coverage`` — this skips the
    beamstop and its ragged edge; ``r_max`` is the last radius whose coverage
    is at least ``outer_coverage`` ("most averages observed there"), at most
    ``L // 2 - 1`` (the inscribed circle).
    """
    cov = radial_coverage(valid)
    radii = np.arange(len(cov))
    inner = np.nonzero((cov >= inner_coverage) & (radii >= min_radius))[0]
    if not len(inner):
        raise ParameterError("ccmatrix.q_min_nm",
                             f"no radius has {inner_coverage:.0%} coverage; set q_min_nm/q_max_nm")
    r_min = int(inner[0])
    outer = np.nonzero((cov >= outer_coverage) & (radii > r_min))[0]
    if not len(outer):
        raise ParameterError("ccmatrix.q_max_nm",
                             f"no radius beyond {r_min} has {outer_coverage:.0%} coverage")
    return r_min, int(outer[-1])


def smooth_averages(intensity: np.ndarray, valid: np.ndarray, sigma_px: float) -> np.ndarray:
    """Averages denoised by a Gaussian of ``sigma_px`` grid steps, over observed points only.

    intensity, valid : (M, L, L); returns (M, L, L) float32, 0 where not observed.
    Normalised convolution (G * (I v)) / (G * v): the beamstop, gaps and the unobserved
    corners do not pull the observed points towards 0.  ``sigma_px`` 0 returns a copy.
    A class average at a few hundred photons per frame is shot noise pixel to pixel
    beyond the first fringes; a common line samples one pixel per radius, so its noise
    is that pixel's, while the shape signal (fringe positions and depths) varies over
    several pixels (docs/low_photon.md, the expected-count bound).
    """
    from scipy.ndimage import gaussian_filter

    valid_f = np.asarray(valid, np.float32)
    if sigma_px <= 0:
        return np.where(valid_f > 0, intensity, 0).astype(np.float32)
    sig = (0.0, float(sigma_px), float(sigma_px))
    num = gaussian_filter(np.asarray(intensity, np.float32) * valid_f, sig, mode="constant")
    den = gaussian_filter(valid_f, sig, mode="constant")
    return np.where(valid_f > 0, num / np.maximum(den, 1e-6), 0).astype(np.float32)


def polar_lines(intensity: np.ndarray, valid: np.ndarray | None, radii: np.ndarray,
                n_lines: int = 180, *, min_coverage: float = 0.5):
    """Folded common-line samples of every average.

    Parameters
    ----------
    intensity : (M, L, L) float
    valid : (M, L, L) bool or None
    radii : (n_r,) radii in grid steps
    n_lines : lines over pi; resampled with ``2 n_lines`` bins over 2 pi and
        Friedel-folded (line ``k`` at angle ``k pi / n_lines``)

    Returns
    -------
    lines : (M, n_lines, n_r) float32, raw (un-normalised) intensity
    lines_valid : (M, n_lines, n_r) bool
    """
    if n_lines < 2:
        raise ParameterError("ccmatrix.n_angles", f"must be >= 2, got {n_lines}")
    polar, pvalid = polar_resample(intensity, valid, radii, 2 * n_lines,
                                   min_coverage=min_coverage)
    folded, fvalid = friedel_fold(polar, pvalid)  # (M, n_r, n_lines)
    return (np.ascontiguousarray(folded.transpose(0, 2, 1)),
            np.ascontiguousarray(fvalid.transpose(0, 2, 1)))


def line_profile(lines: np.ndarray, lines_valid: np.ndarray) -> np.ndarray:
    """Data-set mean radial profile of folded lines, (n_r,) float64 (> 0)."""
    return mean_radial_profile(lines.transpose(0, 2, 1), lines_valid.transpose(0, 2, 1))


def normalise_lines(lines: np.ndarray, lines_valid: np.ndarray, method: str = "radial", *,
                    profile: np.ndarray | None = None, radii: np.ndarray | None = None,
                    q_power: float = 0.0, log_floor: float = 1e-3,
                    min_bins: int = 3) -> np.ndarray:
    """Normalised lines whose dot products are Pearson correlations.

    Parameters
    ----------
    lines, lines_valid : (M, n_lines, n_r) from :func:`polar_lines`
    method :
        ``radial`` — divide by the data set's mean radial profile (default;
        removes the steep fall-off that makes raw CCs saturate near 1);
        ``log`` — ``log(I / profile + log_floor)`` (radial division, then
        a log that compresses the speckle contrast);
        ``line-ratio`` — divide by the average's *own* azimuthal mean at each
        radius (removes per-average radial shape, hence also size: isotropic
        patterns become flat lines that correlate with nothing);
        ``none`` — raw intensity (saturates; for comparison only).
    profile : (n_r,) mean radial profile (computed from ``lines`` if None)
    radii : (n_r,) needed only for ``q_power != 0``
    q_power : lines are multiplied by ``r ** q_power`` after the normalisation
    min_bins : a line with fewer valid bins (or zero variance) becomes all 0

    Returns
    -------
    (M, n_lines, n_r) float32: per line, mean 0 and unit norm over its valid
    bins, 0 at invalid bins (or all 0 for an unusable line).
    """
    if method not in NORMALISATIONS:
        raise ParameterError("ccmatrix.normalisation", f"must be one of {list(NORMALISATIONS)}, "
                             f"got {method!r}")
    x = np.asarray(lines, dtype=np.float32)
    v = np.asarray(lines_valid, bool)
    if method in ("radial", "log"):
        prof = line_profile(x, v) if profile is None else np.asarray(profile, np.float64)
        prof = prof.astype(np.float32)
        if method == "radial":
            x = x / prof
        else:
            x = np.log(np.maximum(x, 0) / prof + np.float32(log_floor))
    elif method == "line-ratio":
        vf = v.astype(np.float32)
        own = (x * vf).sum(axis=1, keepdims=True) / np.maximum(vf.sum(axis=1, keepdims=True), 1)
        floor = np.float32(1e-6) * max(float(np.abs(own).max()), 1e-30)
        x = x / np.maximum(own, floor)
    if q_power:
        if radii is None:
            raise ValueError("radii are needed for q_power")
        x = x * (np.asarray(radii, np.float32) ** np.float32(q_power))
    return centre_unit(x, v, min_bins=min_bins)


def centre_unit(x: np.ndarray, valid: np.ndarray, *, min_bins: int = 3) -> np.ndarray:
    """Centre each line (last axis) over its valid bins and scale to unit norm.

    x, valid : (..., n_r); returns float32 of the same shape, 0 where invalid.
    """
    vf = valid.astype(np.float32)
    n = vf.sum(axis=-1, keepdims=True)
    mean = (x * vf).sum(axis=-1, keepdims=True) / np.maximum(n, 1)
    c = (x - mean) * vf
    norm = np.sqrt((c.astype(np.float64) ** 2).sum(axis=-1, keepdims=True))
    scale = np.max(np.abs(mean), axis=-1, keepdims=True) + 1e-30
    usable = (n >= min_bins) & (norm > 1e-6 * scale * np.sqrt(np.maximum(n, 1)))
    out = np.where(usable, c / np.where(usable, norm, 1.0), 0.0)
    return np.ascontiguousarray(out, dtype=np.float32)


def masked_pearson(lines_a: np.ndarray, valid_a: np.ndarray, lines_b: np.ndarray,
                   valid_b: np.ndarray, min_bins: int = 3) -> np.ndarray:
    """Exact Pearson correlation of every line pair over bins valid in both.

    Reference for small inputs (memory ``n_a * n_b * n_r``).  ``lines_*`` are
    (n, n_r) arrays *before* centring (e.g. radial-profile divided); returns
    (n_a, n_b) float64 (0 where fewer than ``min_bins`` common bins).
    """
    a = np.asarray(lines_a, np.float64)[:, None, :]
    b = np.asarray(lines_b, np.float64)[None, :, :]
    w = (np.asarray(valid_a, bool)[:, None, :] & np.asarray(valid_b, bool)[None, :, :])
    n = w.sum(-1)
    nn = np.maximum(n, 1)
    ma = (a * w).sum(-1) / nn
    mb = (b * w).sum(-1) / nn
    ca = (a - ma[..., None]) * w
    cb = (b - mb[..., None]) * w
    num = (ca * cb).sum(-1)
    den = np.sqrt((ca ** 2).sum(-1) * (cb ** 2).sum(-1))
    ok = (n >= min_bins) & (den > 0)
    return np.where(ok, num / np.where(ok, den, 1), 0.0)


# --------------------------------------------------------------------------- CC matrix
@dataclass
class CCResult:
    """Common-line CC matrix.

    cc : (M, M) float32, symmetric, diagonal 1
    angle_a : (M, M) int16, best line index in average ``i`` for pair (i, j)
    angle_b : (M, M) int16, best line index in average ``j``; equals
        ``angle_a.T``.  Diagonal entries are -1 (undefined).
    rescored_fraction : ``bf16`` backend in-process: the share of the screened
        lines re-scored in float32 (the float32 work left); otherwise None
    """

    cc: np.ndarray
    angle_a: np.ndarray
    angle_b: np.ndarray
    rescored_fraction: float | None = None


def default_block(n_lines: int, device: str = "cpu", backend: str = "numpy") -> int:
    """Averages per block: ~1,440 line rows per side on CPU (an 8 MB float32 output
    block that stays in cache while it is reduced), ~2,880 for the bf16 screen on
    CPU (a 16 MB bf16 block: its per-block work is mostly fixed costs, measured
    best at 16 averages of 180 lines), ~23,000 on a GPU."""
    if str(device).startswith("cuda"):
        rows = 23040
    else:
        rows = 2880 if backend == "bf16" else 1440
    return max(1, rows // max(1, n_lines))


def _block_edges(m: int, block: int) -> list[int]:
    return list(range(0, m, block)) + [m]


def cc_band(lines: np.ndarray, row0: int, row1: int, *, block: int, backend: str = "torch",
            device: str = "cpu", kernel=None):
    """CC of averages ``row0:row1`` against averages ``row0:M`` (upper band).

    ``row0`` and ``row1`` must lie on block edges (multiples of ``block`` or
    ``M``) so that every block is the same as in the in-process computation.

    Returns (cc, ia, ib) of shape (row1 - row0, M - row0): float32, int16,
    int16.  Within the diagonal blocks only the strict upper triangle is
    meaningful.
    """
    m = lines.shape[0]
    kern = kernel or block_kernel(lines, backend, device)
    width = m - row0
    cc = np.empty((row1 - row0, width), np.float32)
    ia = np.empty((row1 - row0, width), np.int16)
    ib = np.empty((row1 - row0, width), np.int16)
    edges = _block_edges(m, block)
    for a0 in range(row0, row1, block):
        a1 = min(a0 + block, row1)
        for b0, b1 in zip(edges[:-1], edges[1:]):
            if b1 <= a0:
                continue
            v, xa, xb = kern(a0, a1, b0, b1)
            sl = (slice(a0 - row0, a1 - row0), slice(b0 - row0, b1 - row0))
            cc[sl], ia[sl], ib[sl] = v, xa, xb
    return cc, ia, ib


def _place_band(result: CCResult, row0: int, row1: int, band) -> None:
    """Write an upper band and its mirror image into the full matrices."""
    cc, ia, ib = band
    m = result.cc.shape[0]
    rows = row1 - row0
    # strict upper triangle of the square part (diagonal blocks), all of the rest
    upper = np.triu(np.ones((rows, rows), bool), 1)
    sq = slice(row0, row1)
    result.cc[sq, sq] = np.where(upper, cc[:, :rows], 0)
    result.cc[sq, sq] += result.cc[sq, sq].T
    np.fill_diagonal(result.cc[sq, sq], 1.0)
    a_sq = np.where(upper, ia[:, :rows], 0).astype(np.int16)
    b_sq = np.where(upper, ib[:, :rows], 0).astype(np.int16)
    result.angle_a[sq, sq] = a_sq + b_sq.T
    result.angle_b[sq, sq] = b_sq + a_sq.T
    np.fill_diagonal(result.angle_a[sq, sq], -1)
    np.fill_diagonal(result.angle_b[sq, sq], -1)
    if row1 < m:
        rest = slice(row1, m)
        result.cc[sq, rest] = cc[:, rows:]
        result.cc[rest, sq] = cc[:, rows:].T
        result.angle_a[sq, rest] = ia[:, rows:]
        result.angle_b[sq, rest] = ib[:, rows:]
        result.angle_a[rest, sq] = ib[:, rows:].T
        result.angle_b[rest, sq] = ia[:, rows:].T


def _band_edges(m: int, block: int, band_blocks: int) -> list[tuple[int, int]]:
    """Row bands of ``band_blocks`` blocks; earlier bands (more columns) get fewer
    blocks would be nicer for balance, but equal-block bands keep things simple."""
    step = block * max(1, band_blocks)
    edges = list(range(0, m, step)) + [m]
    return list(zip(edges[:-1], edges[1:]))


def cc_matrix(lines: np.ndarray, *, block: int | None = None, backend: str = "auto",
              device: str = "auto", scheduler: str = "", band_blocks: int = 1,
              workers: int = 0, progress: bool = False) -> CCResult:
    """Common-line CC matrix of normalised lines (blocked, symmetric).

    Parameters
    ----------
    lines : (M, n_lines, n_r) float32 from :func:`normalise_lines`
    block : averages per block (default :func:`default_block`)
    backend : ``auto`` (torch on a GPU, numpy on the CPU: measured ~10 % faster
        there), ``torch`` (CPU or CUDA), ``numpy``, or ``bf16``: a bfloat16
        product screens the line pairs and the candidates are re-scored in
        float32 (:mod:`spicompute.landscape.cc_kernels`; the float32 result up to
        summation order, faster where bf16 matrix units exist)
    device : ``auto`` | ``cpu`` | ``cuda[:k]`` (torch and bf16 backends)
    scheduler : ``""`` in-process; ``local:N`` a local Dask cluster of N
        worker processes; otherwise a Dask scheduler address.  Results are
        identical to in-process (same blocks).
    band_blocks : block rows per Dask task
    workers : CPU threads for the in-process computation (0 = torch's thread
        count); each runs single-threaded BLAS on its own band of blocks

    Memory: the inputs ``4 M n_lines n_r`` bytes, the outputs ``8 M^2``
    bytes, one block product ``4 (block n_lines)^2`` bytes per worker.
    """
    lines = np.ascontiguousarray(lines, dtype=np.float32)
    if lines.ndim != 3:
        raise ValueError(f"lines must be (M, n_lines, n_r), got {lines.shape}")
    if backend not in BACKENDS:
        raise ParameterError("ccmatrix.backend", f"must be one of {list(BACKENDS)}, got {backend!r}")
    m = lines.shape[0]
    dev = resolve_device(device, "ccmatrix.device") if backend != "numpy" else "cpu"
    if backend == "auto":
        backend = "torch" if dev != "cpu" else "numpy"
    block = int(block) if block else default_block(lines.shape[1], dev, backend)
    if block < 1:
        raise ParameterError("ccmatrix.block", f"must be >= 1, got {block}")
    result = CCResult(np.zeros((m, m), np.float32), np.zeros((m, m), np.int16),
                      np.zeros((m, m), np.int16))
    if m == 0:
        return result
    if scheduler:
        bands = _band_edges(m, block, band_blocks)
        _cc_matrix_dask(lines, result, bands, block, backend, scheduler, progress)
        return result
    bands = _band_edges(m, block, 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(bands), desc="ccmatrix", unit="band")
    n_workers = 1 if dev != "cpu" else max(1, int(workers or _cpu_threads()))
    if n_workers == 1:
        kernels = [block_kernel(lines, backend, dev)]
        for row0, row1 in bands:
            _place_band(result, row0, row1, cc_band(lines, row0, row1, block=block, kernel=kernels[0]))
            if bar is not None:
                bar.update()
    else:
        kernels = _cc_matrix_threads(lines, result, bands, block, backend, n_workers, bar)
    if backend == "bf16":
        screened = sum(k.screened for k in kernels)
        result.rescored_fraction = sum(k.rescored for k in kernels) / max(1, screened)
    if bar is not None:
        bar.close()
    return result


def _cpu_threads() -> int:
    import torch

    return torch.get_num_threads()


def _cc_matrix_threads(lines, result, bands, block, backend, n_workers, bar) -> list:
    """Bands on ``n_workers`` Python threads, each with single-threaded BLAS; returns
    the threads' kernels.

    Independent single-threaded block products (the GIL is released inside
    BLAS) avoid the per-operation fork/join of multi-threaded BLAS on these
    small blocks and degrade gracefully on a busy machine.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    local = threading.local()
    shared = block_kernel(lines, backend, "cpu")
    kernels = []

    def work(edges):
        kern = getattr(local, "kernel", None)
        if kern is None:
            kern = local.kernel = shared.fork()
            kernels.append(kern)
        return edges, cc_band(lines, edges[0], edges[1], block=block, kernel=kern)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _single_threaded_numpy_blas(backend), ThreadPoolExecutor(n_workers) as pool:
            for (row0, row1), band in pool.map(work, bands):  # in order: bounded memory
                _place_band(result, row0, row1, band)
                if bar is not None:
                    bar.update()
    finally:
        torch.set_num_threads(old_threads)
    return kernels


class _single_threaded_numpy_blas:
    """Limit numpy's BLAS to one thread (threadpoolctl when available); the bf16
    screen falls back to numpy's float32 product on flat, noisy CCs."""

    def __init__(self, backend: str):
        self.ctx = None
        if backend in ("numpy", "bf16"):
            try:
                from threadpoolctl import threadpool_limits

                self.ctx = threadpool_limits(1, user_api="blas")
            except ImportError:  # pragma: no cover
                self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.restore_original_limits()
        return False


def _dask_band(lines, row0, row1, block, backend):
    """One Dask task: a band with single-threaded BLAS (torch is imported only by the torch backend:
    its import costs a worker about a second)."""
    if backend in ("torch", "bf16"):
        import torch

        torch.set_num_threads(1)
    with _single_threaded_numpy_blas(backend):
        return row0, row1, cc_band(lines, row0, row1, block=block, backend=backend, device="cpu")


def _cc_matrix_dask(lines, result, bands, block, backend, scheduler, progress) -> None:
    with dask_client(scheduler, "ccmatrix.scheduler") as client:
        remote = client.scatter(lines, broadcast=True)
        futures = [client.submit(_dask_band, remote, r0, r1, block, backend, pure=False)
                   for r0, r1 in bands]
        log.info("ccmatrix: %d bands on %s", len(futures), scheduler)
        for _, (row0, row1, band) in completed_results(client, futures, "ccmatrix.scheduler"):
            _place_band(result, row0, row1, band)


def cc_matrix_dense(lines: np.ndarray) -> CCResult:
    """Unblocked reference: the whole ``(M n_lines)^2`` product at once (small M)."""
    lines = np.asarray(lines, np.float64)
    m, nl, nr = lines.shape
    x = lines.reshape(m * nl, nr)
    full = (x @ x.T).reshape(m, nl, m, nl).transpose(0, 2, 1, 3).reshape(m, m, nl * nl)
    arg = full.argmax(axis=2)
    cc = np.take_along_axis(full, arg[..., None], axis=2)[..., 0].astype(np.float32)
    ia, ib = np.divmod(arg, nl)
    cc = np.triu(cc, 1) + np.triu(cc, 1).T
    np.fill_diagonal(cc, 1.0)
    ia = ia.astype(np.int16)
    ib = ib.astype(np.int16)
    np.fill_diagonal(ia, -1)
    np.fill_diagonal(ib, -1)
    return CCResult(cc, ia, ib)


def cc_flops(m: int, n_lines: int, n_r: int) -> float:
    """Floating-point operations of the upper-triangular product (2 per MAC)."""
    return 2.0 * n_r * (m * n_lines) ** 2 / 2.0


# --------------------------------------------------------------------------- file
def write_ccmatrix(path, result: CCResult, *, average_id: np.ndarray, angles_rad: np.ndarray,
                   radii: np.ndarray, dq_nm: float, profile: np.ndarray, normalisation: str,
                   params: dict | None = None, attrs: dict | None = None,
                   usable: np.ndarray | None = None, n_frames: np.ndarray | None = None,
                   size_scale: np.ndarray | None = None) -> None:
    """Write the CC matrix file atomically (layout in docs/ccmatrix_embed.md)."""
    import h5py

    from spicompute.io.provenance import atomic_path, stamp

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        stamp(h5, "ccmatrix", params)
        chunks = None if result.cc.shape[0] < 256 else (256, 256)
        h5.create_dataset("cc", data=result.cc, chunks=chunks)
        h5["cc"].attrs["description"] = "max over line pairs of the Pearson CC; symmetric, diag 1"
        for name in ("angle_a", "angle_b"):
            h5.create_dataset(name, data=getattr(result, name), chunks=chunks)
        h5["angle_a"].attrs["description"] = ("index into angles_rad of the best line in "
                                              "average i for pair (i, j); -1 on the diagonal")
        h5["angle_b"].attrs["description"] = "same for average j; angle_b == angle_a.T"
        h5.create_dataset("average_id", data=np.asarray(average_id, np.int64))
        m = len(average_id)
        h5.create_dataset("usable", data=np.ones(m, np.uint8) if usable is None else np.asarray(usable, np.uint8))
        h5["usable"].attrs["description"] = "1: the average carries signal (observed, not empty, enough frames)"
        if n_frames is not None:
            h5.create_dataset("n_frames", data=np.asarray(n_frames, np.float64))
        if size_scale is not None:
            h5.create_dataset("size_scale", data=np.asarray(size_scale, np.float64))
            h5["size_scale"].attrs["description"] = ("relative particle size from the fringe spacing of the "
                                                     "average's radial profile (median 1; "
                                                     "spicompute.landscape.size_scale)")
        h5.create_dataset("angles_rad", data=np.asarray(angles_rad, np.float64))
        h5["angles_rad"].attrs["units"] = "rad from +qx towards +qy; a line is folded over pi"
        h5.create_dataset("radii", data=np.asarray(radii, np.float64))
        h5["radii"].attrs["units"] = "grid steps"
        h5.create_dataset("q_nm", data=np.asarray(radii, np.float64) * dq_nm)
        h5["q_nm"].attrs["units"] = "rad/nm"
        h5.create_dataset("radial_profile", data=np.asarray(profile, np.float64))
        h5["radial_profile"].attrs["units"] = "mean intensity of the folded lines per radius"
        h5.attrs["normalisation"] = normalisation
        h5.attrs["n_angles"] = len(angles_rad)
        h5.attrs["dq_nm"] = float(dq_nm)
        h5.attrs["q_min_nm"] = float(radii[0] * dq_nm)
        h5.attrs["q_max_nm"] = float(radii[-1] * dq_nm)
        for key, value in (attrs or {}).items():
            h5.attrs[key] = value


@dataclass
class CCFile:
    """Contents of a CC matrix file (see :func:`write_ccmatrix`)."""

    cc: np.ndarray
    angle_a: np.ndarray
    angle_b: np.ndarray
    average_id: np.ndarray
    angles_rad: np.ndarray
    q_nm: np.ndarray
    attrs: dict
    usable: np.ndarray | None = None
    n_frames: np.ndarray | None = None
    size_scale: np.ndarray | None = None

    def __post_init__(self):
        if self.usable is None:
            self.usable = np.ones(len(self.average_id), bool)


def read_ccmatrix(path) -> CCFile:
    """Read and check a CC matrix file; InputError naming the field if bad."""
    from spicompute.errors import InputError
    from spicompute.io.frames import open_h5

    with open_h5(path) as h5:
        data = {}
        for name in ("cc", "angle_a", "angle_b", "average_id", "angles_rad", "q_nm"):
            if name not in h5:
                raise InputError(path, name, "dataset missing (not a ccmatrix file?)")
            data[name] = h5[name][()]
        for name in ("usable", "n_frames", "size_scale"):  # absent in files of older versions
            data[name] = h5[name][()] if name in h5 else None
        attrs = dict(h5.attrs)
    if data["usable"] is not None:
        data["usable"] = data["usable"].astype(bool)
    cc = data["cc"]
    m = len(data["average_id"])
    if cc.ndim != 2 or cc.shape != (m, m):
        raise InputError(path, "cc", f"must be ({m}, {m}) to match average_id, got {cc.shape}")
    if not np.all(np.isfinite(cc)):
        raise InputError(path, "cc", "contains NaN or Inf")
    for name in ("angle_a", "angle_b"):
        if data[name].shape != cc.shape:
            raise InputError(path, name, f"shape {data[name].shape} differs from cc")
    return CCFile(attrs=attrs, **data)
