"""2D EMC classification (Dragonfly's ``recon_type = 2d``), vectorised.

K 2D models live on a square (qx, qy) grid of ``L x L`` points (see
:func:`spicompute.geometry.grid_q`: point (i, j) has ``qx = (j - c) dq``,
``qy = (i - c) dq``, ``c = L // 2``).  R in-plane rotations by
``theta_r = 2 pi r / R``.  A frame seen at rotation r of model k samples

    W_krp = corr_p * M_k(Rot(theta_r)^T q_p)          (photons per pixel, unit fluence)

(the frame is the model turned counter-clockwise by theta_r in the detector
plane), evaluated by bilinear interpolation.  All R interpolations form one
sparse matrix ``S`` of shape (R*P, G) with four non-zeros per row, so rotated
models are one sparse-dense product and the M-step scatters back with ``S^T``.
Rows are pixel-major (row ``p * R + r``), so ``S @ models.T`` reshaped to
(P, R*K) is directly the matrix the E-step needs (column ``j = r * K + k``).

E-step (Poisson, per frame n with fluence scale phi_n, temperature beta_n)::

    L[n, (r, k)] = sum_p K_np log W_krp - phi_n sum_p W_krp
    P[n, (r, k)] = softmax_(r, k)(beta_n * L[n, :])

The first term is a photon-sparse product CSR (N, P) @ dense (P, R*K); it is
computed with ``torch.nn.functional.embedding_bag`` (a gather of the rows of
the log-model matrix at each photon's pixel, weighted by the count) over
column blocks of 64 so that the block of the log-model matrix stays in cache:
cost O(photons * R * K), not O(pixels).  Measured on 2 EPYC cores: ~21 GFMA/s
against 1.8 (scipy CSR @ dense) and 2.9 (torch.sparse.mm).  The log-model and
posterior matrices are kept as stacks of such column blocks, shape
(n_blocks, rows, 64), padded columns carrying probability 0.

M-step::

    M_k = sum_r B_r^T (K^T P[:, r, k]) / sum_r (sum_n P[n, r, k] phi_n) S_r^T 1

(numerator again a photon-sparse product, of the transposed frames with the
posterior; ``B`` is the plain bilinear interpolation and ``S = diag(c) B``
carries the pixels' solid angle x polarisation ``c``, which belongs to the
prediction only -- with ``S`` in the numerator the models would be biased by
``c``).  The denominator is the coverage ``weight`` written with each
average; grid points whose weight is below ``OBSERVED_REL`` of the model's
largest were not observed (weight 0).

The work is split into frame *shards* (:func:`shard_step` returns partial
sums), so the same code runs in-process or on Dask workers; inside a shard,
frames are processed in blocks to bound memory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse import _sparsetools   # csr_todense / csr_scale_rows: in-place, no copies (stable since scipy 0.x)
import torch.nn.functional as F

from spicompute.errors import ParameterError
from spicompute.geometry import Detector

log = logging.getLogger("spicompute.emc2d")

COL_BLOCK = 64          # columns of the log-model matrix per gather pass (fits L2/L3)
MODEL_FLOOR = 1e-8      # models are clipped to MODEL_FLOOR * their mean before the log
SPARSE_FRAC = 0.0015    # M-step numerator from the kept (frame, column) pairs when fewer than this share are kept
                        # (measured on 4,096 frames of ~600 photons, R*K 1,800: scattering the kept entries
                        # costs ~16 ns per photon and entry, the dense gather ~0.024 ns per photon and column)
PAD_SUMW = 1e30         # sum_p W of the padding columns of the last block: probability 0
OBSERVED_REL = 1e-4     # a grid point is observed when its coverage exceeds this x the model's largest
PRUNED_L = -1e30        # log-likelihood of a (frame, model) pair a pruned E-step skips: probability 0
PRUNE_FULL_SHARE = 0.4  # a block with more candidate (frame, model) pairs than this share takes the full product
EXP_FLOOR = -87.0       # posterior exponents are clamped here before exp, and results <= EXP_ZERO set to 0: below
EXP_ZERO = 2e-38        # exp(-87) = 1.6e-38 (float32's smallest normal number) exp returns subnormals or 0 by a path
                        # 35x slower (measured; at beta 1 most of a frame's R*K exponents lie there).  The same zeros
                        # as before, up to pairs 87 nats below a frame's best (< 2e-38 of its probability)


# ----------------------------------------------------------------------------- geometry
@dataclass
class RotationGrid:
    """Model grid and the interpolation of every rotation onto the used pixels.

    Attributes
    ----------
    size : int
        Grid edge L (odd); grid centre ``c = L // 2``.
    dq_nm : float
        Grid step, rad/nm.
    angles : (R,) float64
        In-plane rotation angles, radians.
    pixels : (P,) int64
        Indices of the detector pixels used (good mask, within ``q_max``).
    S : csr_matrix (P*R, G) float32
        Row ``p*R + r`` holds the bilinear weights (times the pixel's
        correction factor) of rotated pixel p on the G = L*L grid points.
    colsum : (R, G) float64
        ``S_r^T 1``: how much each grid point contributes at rotation r.
    """

    size: int
    dq_nm: float
    angles: np.ndarray
    pixels: np.ndarray
    S: sp.csr_matrix
    colsum: np.ndarray
    n_detector_pixels: int
    wavelength_nm: float
    correction: np.ndarray | None = None   # (P,) solid angle x polarisation folded into S (1 if unused)
    friedel: bool = False                  # angles over 180 deg, centrosymmetric models
    fit: np.ndarray | None = None          # (P,) bool: pixels in the likelihood (None: all);
    colsum_fit: np.ndarray | None = None   # the others are merged only; (R, G) S_r^T 1 over fitted

    @property
    def colsum_likelihood(self) -> np.ndarray:
        """(R, G) ``S_r^T 1`` over the fitted pixels: what ``sum_p W_krp`` of the E-step sums."""
        return self.colsum if self.colsum_fit is None else self.colsum_fit

    @property
    def corr(self) -> np.ndarray:
        """(P,) correction factor of the used pixels (ones when the models are not corrected)."""
        return np.ones(self.n_pix) if self.correction is None else self.correction

    @property
    def n_rot(self) -> int:
        return int(self.angles.shape[0])

    @property
    def n_pix(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def n_grid(self) -> int:
        return self.size * self.size

    def _cached(self, key: str, make):
        """A quantity derived from the grid alone, computed once (not shipped to Dask workers)."""
        cache = self.__dict__.setdefault("_derived", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]

    @property
    def ST(self) -> sp.csr_matrix:
        """Transposed interpolation (G, P*R), cached."""
        return self._cached("ST", lambda: self.S.T.tocsr())

    def interpolation_bag(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``S`` as ``embedding_bag`` inputs (index, offsets, weights) on the CPU, cached."""
        return self._cached("interpolation_bag", lambda: _bag(self.S)[:3])

    def numerator_bag(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ST`` with the plain bilinear weights (``S`` / correction) as ``embedding_bag`` inputs
        (index, offsets, weights) over a (P*R, K) table of K^T P laid out (p, r, k) (the
        (P, R*K) columns ``j = r K + k``).  Projects it onto the (K, G) grid.  Cached."""
        def make():
            ST = self.ST
            pixel = ST.indices // self.n_rot
            weights = ST.data / self.corr.astype(np.float32)[pixel]
            return _bag(sp.csr_matrix((weights, ST.indices, ST.indptr), shape=ST.shape))[:3]

        return tuple(t.to(device) for t in self._cached("numerator_bag", make))

    def background_projection(self, background: np.ndarray) -> np.ndarray:
        """(G, R) float64 ``Q = ST @ E`` with ``E[p R + r, r] = b_p / corr_p``: what the expected
        background ``b`` (P,) adds to the M-step numerator per unit occupancy at rotation r.
        The same every iteration of a run: cached for the last background asked for."""
        cache = self.__dict__.setdefault("_derived", {})
        cached = cache.get("background_projection")
        if cached is not None and np.array_equal(cached[0], background):
            return cached[1]
        R, P = self.n_rot, self.n_pix
        inv_corr = (1.0 / self.corr).astype(np.float32)
        E = sp.csr_matrix((np.repeat(background * inv_corr, R), (np.arange(P * R), np.tile(np.arange(R), P))),
                          shape=(P * R, R))
        Q = np.asarray((self.ST @ E).todense())
        cache["background_projection"] = (np.array(background, copy=True), Q)
        return Q

    def __getstate__(self):  # derived quantities are recomputed where needed, not shipped to Dask workers
        state = dict(self.__dict__)
        state.pop("_derived", None)
        return state


def bilinear_matrix(points: np.ndarray, size: int, weights: np.ndarray | None = None
                    ) -> sp.csr_matrix:
    """Sparse bilinear interpolation of points on a ``size x size`` grid.

    Parameters
    ----------
    points : (M, 2) float64
        Positions in grid units ``(x, y) = (column, row)``; must lie in
        ``[0, size - 1]``.
    weights : (M,) optional factor for each row.

    Returns
    -------
    csr_matrix (M, size*size) float32, four (or fewer) non-zeros per row,
    rows summing to ``weights`` (1 by default).
    """
    x, y = points[:, 0], points[:, 1]
    x0 = np.clip(np.floor(x).astype(np.int64), 0, size - 2)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, size - 2)
    fx, fy = x - x0, y - y0
    w = np.ones(len(points)) if weights is None else np.asarray(weights, np.float64)
    cols = np.stack([y0 * size + x0, y0 * size + x0 + 1,
                     (y0 + 1) * size + x0, (y0 + 1) * size + x0 + 1], axis=1)
    vals = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    vals *= w[:, None]
    rows = np.repeat(np.arange(len(points)), 4)
    mat = sp.csr_matrix((vals.ravel().astype(np.float32), (rows, cols.ravel())),
                        shape=(len(points), size * size))
    mat.eliminate_zeros()
    return mat


def build_rotation_grid(detector: Detector, n_rot: int, *, grid_step_nm: float | None = None,
                        q_max_nm: float | None = None, use_correction: bool = True,
                        friedel: bool = False, merge_only: bool = True) -> RotationGrid:
    """Model grid covering the detector, and the R rotation interpolations.

    Parameters
    ----------
    detector : pixels with q (P, 3) rad/nm and mask.
    n_rot : R >= 1 in-plane rotations, ``theta_r = 2 pi r / R``.
    grid_step_nm : grid spacing, rad/nm (default ``detector.dq_nm``).
    q_max_nm : drop pixels with transverse |q| above this (default: none).
    use_correction : multiply the model by the pixel's solid angle x
        polarisation factor (normalised to max 1), as Dragonfly does.
    friedel : Friedel symmetry: ``theta_r = pi r / R`` (R rotations over
        180 deg) and :func:`m_step` makes the models centrosymmetric.
    merge_only : also use the detector's ``merge_only`` pixels (Dragonfly's
        mask 1): merged into the models, left out of the likelihood and the scales.

    The grid edge is ``L = 2 ceil(q_max / dq) + 3`` (odd; centre ``L // 2``),
    so every rotated pixel and its bilinear neighbours fall inside it.
    """
    n_rot = int(n_rot)
    if n_rot < 1:
        raise ParameterError("classify2d.n_rot", f"must be >= 1, got {n_rot}")
    dq = float(grid_step_nm) if grid_step_nm else float(detector.dq_nm)
    if not (np.isfinite(dq) and dq > 0):
        raise ParameterError("classify2d.grid_step_nm", f"must be > 0, got {grid_step_nm!r}")
    qperp = detector.q_perp
    radius = np.linalg.norm(qperp, axis=1)
    use = detector.mask.copy()
    if merge_only and detector.merge_only is not None:
        use |= detector.merge_only
    if q_max_nm:
        if not q_max_nm > 0:
            raise ParameterError("classify2d.q_max_nm", f"must be > 0, got {q_max_nm!r}")
        use &= radius <= float(q_max_nm)
    pixels = np.flatnonzero(use)
    if pixels.size == 0:
        raise ParameterError("classify2d.q_max_nm", "no unmasked pixel left inside q_max_nm")
    rmax = radius[pixels].max() / dq
    size = 2 * int(math.ceil(rmax)) + 3
    c = size // 2
    angles = (np.pi if friedel else 2 * np.pi) * np.arange(n_rot) / n_rot
    cos, sin = np.cos(angles), np.sin(angles)
    px, py = qperp[pixels, 0] / dq, qperp[pixels, 1] / dq
    # Rot(theta)^T q = (cos qx + sin qy, -sin qx + cos qy); shape (P, R), pixel-major
    xr = px[:, None] * cos[None] + py[:, None] * sin[None] + c
    yr = -px[:, None] * sin[None] + py[:, None] * cos[None] + c
    corr = detector.correction()[pixels] if use_correction else np.ones(pixels.size)
    S = bilinear_matrix(np.stack([xr.ravel(), yr.ravel()], axis=1), size,
                        np.repeat(corr, n_rot))
    # per-rotation column sums S_r^T 1: (R, G)
    pick = sp.csr_matrix((np.ones(S.shape[0]), (np.tile(np.arange(n_rot), pixels.size),
                                                 np.arange(S.shape[0]))),
                         shape=(n_rot, S.shape[0]))
    colsum = np.asarray((pick @ S).todense(), dtype=np.float64)
    fit = colsum_fit = None
    if not detector.mask[pixels].all():
        fit = detector.mask[pixels]
        if not fit.any():
            raise ParameterError("classify2d.q_max_nm", "no fitted (mask 0) pixel inside q_max_nm")
        rows = np.repeat(fit, n_rot).astype(np.float64)       # rows p*R + r of fitted pixels
        colsum_fit = np.asarray((pick @ sp.diags(rows) @ S).todense(), dtype=np.float64)
    return RotationGrid(size=size, dq_nm=dq, angles=angles, pixels=pixels.astype(np.int64),
                        S=S, colsum=colsum, n_detector_pixels=detector.n_pixels,
                        wavelength_nm=float(detector.wavelength_nm), correction=np.asarray(corr, np.float64),
                        friedel=bool(friedel), fit=fit, colsum_fit=colsum_fit)


def rotated_models(grid: RotationGrid, models: np.ndarray) -> np.ndarray:
    """Models seen at every rotation on the used pixels: (P, R, K) float32.

    ``models`` is (K, G) (flattened L x L grids).
    """
    # S @ models.T as a gather of the grid points' rows: multi-threaded, ~2x scipy's product
    index, offsets, weights = grid.interpolation_bag()
    W = F.embedding_bag(index, torch.from_numpy(np.ascontiguousarray(models.T, dtype=np.float32)), offsets,
                        mode="sum", per_sample_weights=weights)                 # (P*R, K)
    return W.numpy().reshape(grid.n_pix, grid.n_rot, -1)


# ----------------------------------------------------------------------------- shards
def _bag(csr: sp.csr_matrix) -> tuple:
    """CSR as embedding_bag inputs (indices, offsets int32; weights float32; shape)."""
    return (torch.from_numpy(csr.indices.astype(np.int32)),
            torch.from_numpy(csr.indptr[:-1].astype(np.int32)),
            torch.from_numpy(csr.data.astype(np.float32)),
            csr.shape)


@dataclass
class Shard:
    """Frames of one shard, restricted to the grid's pixels, in blocks.

    counts : csr (n, P) float32 photon counts on the used pixels (merged).
    fit_counts : the same on the fitted pixels only (the likelihood's data; ``counts``
        itself when every used pixel is fitted).
    photons : (n,) float64 photons per frame on the fitted pixels.
    blocks : list of (start, stop, bag, transposed bag), ``bag`` being the
        block's fitted CSR as embedding_bag inputs (see
        :func:`sparse_dense_product`), the transposed bag that of all its counts.
    """

    counts: sp.csr_matrix
    photons: np.ndarray
    block_frames: int
    blocks: list = field(default_factory=list)
    fit_counts: sp.csr_matrix | None = None

    def __post_init__(self):
        if self.fit_counts is None:
            self.fit_counts = self.counts

    @classmethod
    def from_counts(cls, counts: sp.csr_matrix, block_frames: int = 4096,
                    fit: np.ndarray | None = None) -> "Shard":
        """``fit`` (P,) bool: pixels in the likelihood (None: all)."""
        counts = sp.csr_matrix(counts, dtype=np.float32)
        counts.sort_indices()
        fit_counts = counts
        if fit is not None and not np.all(fit):
            fit_counts = sp.csr_matrix(counts @ sp.diags(np.asarray(fit, np.float32)))
            fit_counts.eliminate_zeros()
            fit_counts.sort_indices()   # (the same as emc2d_stream.fit_only)
        photons = np.asarray(fit_counts.sum(axis=1), dtype=np.float64).reshape(-1)
        blocks = []
        n = counts.shape[0]
        for start in range(0, n, block_frames):
            stop = min(n, start + block_frames)
            blocks.append((start, stop, _bag(fit_counts[start:stop]),
                           _bag(counts[start:stop].T.tocsr())))
        return cls(counts=counts, photons=photons, block_frames=block_frames, blocks=blocks,
                   fit_counts=fit_counts)

    @property
    def n_frames(self) -> int:
        return int(self.counts.shape[0])

    def fit_block(self, start: int, stop: int) -> sp.csr_matrix:
        """Counts of frames ``start .. stop`` (a block of ``blocks``) on the fitted pixels."""
        return row_block(self.fit_counts, start, stop)

    def count_block(self, start: int, stop: int) -> sp.csr_matrix:
        """Counts of frames ``start .. stop`` (a block of ``blocks``) on all used pixels."""
        return row_block(self.counts, start, stop)

    def fit_rows(self, start: int, stop: int, counts: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
        """Rows ``rows`` of the block's fitted counts (``counts``: its :meth:`count_block`)."""
        return self.fit_block(start, stop)[rows]


def row_block(csr: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start .. stop`` of a CSR matrix as views of its index and data arrays (scipy's
    slicing copies them: 0.1 s per late EMC iteration on 30,000 frames).  Read-only use."""
    a, b = int(csr.indptr[start]), int(csr.indptr[stop])
    block = sp.csr_matrix((stop - start, csr.shape[1]), dtype=csr.dtype)
    block.indptr = csr.indptr[start:stop + 1] - csr.indptr[start]
    block.indices, block.data = csr.indices[a:b], csr.data[a:b]
    return block


def sparse_dense_product(bag: tuple, dense: torch.Tensor, out: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """CSR (n, m) @ dense (m, C) with the dense matrix as column blocks.

    ``dense`` is (n_blocks, m, b) (block i = columns ``i*b .. i*b+b-1``, each
    contiguous); the result is (n_blocks, n, b), added to ``out`` when given.
    Each block is one ``embedding_bag`` call (gather the rows at the
    non-zeros' columns, weight, sum per row); the blocking keeps the rows
    being gathered in cache.
    """
    idx, off, wts, shape = bag
    n = shape[0]
    device = dense.device
    idx, off, wts = idx.to(device), off.to(device), wts.to(device)
    result = out if out is not None else torch.empty((dense.shape[0], n, dense.shape[2]),
                                                     dtype=dense.dtype, device=device)
    for i in range(dense.shape[0]):
        part = F.embedding_bag(idx, dense[i], off, mode="sum", per_sample_weights=wts)
        if out is not None:
            result[i] += part
        else:
            result[i] = part
    return result


def to_blocks(mat: torch.Tensor, width: int = COL_BLOCK, pad: float = 0.0) -> torch.Tensor:
    """(m, C) -> (ceil(C / width), m, width), padded with ``pad``."""
    m, C = mat.shape
    nb = -(-C // width)
    if nb * width != C:
        mat = torch.cat([mat, mat.new_full((m, nb * width - C), pad)], dim=1)
    return mat.reshape(m, nb, width).permute(1, 0, 2).contiguous()


def from_blocks(blocks: torch.Tensor, C: int) -> torch.Tensor:
    """(n_blocks, m, width) -> (m, C)."""
    nb, m, w = blocks.shape
    return blocks.permute(1, 0, 2).reshape(m, nb * w)[:, :C]


# ----------------------------------------------------------------------------- E + M on a shard
@dataclass
class PartialSums:
    """What a shard returns: sums over its frames plus per-frame results.

    num : (K, G) float64, sum_r S_r^T (K^T P_r) (M-step numerator).
    wsum : (R, K) float64, sum_n P[n, r, k] phi_n (denominator weights).
    occupancy : (K,) float64, sum_n sum_r P[n, r, k].
    loglik : float, sum_n sum_j P_nj L_nj (expected log-likelihood).
    mutual_info : float, sum_n sum_j P_nj log(P_nj * R * K).
    phi : (n,) new fluence scales (unnormalised).
    best : (n,) int64, most probable column j = r * K + k.
    pmax : (n,) float64, its posterior probability.
    candidates : (n, K) bool, the models holding posterior mass >= prune_mass
        (for the next, pruned E-step), or None when not asked for.
    pairs : frames x share of the (frame, model) likelihoods computed
        (= n for a full E-step).
    """

    num: np.ndarray
    wsum: np.ndarray
    occupancy: np.ndarray
    loglik: float
    mutual_info: float
    phi: np.ndarray
    best: np.ndarray
    pmax: np.ndarray
    candidates: np.ndarray | None = None
    pairs: float = 0.0

    @staticmethod
    def combine(parts: list["PartialSums"]) -> "PartialSums":
        """Sum the shard sums; concatenate the per-frame results (shard order)."""
        return PartialSums(
            num=np.sum([p.num for p in parts], axis=0),
            wsum=np.sum([p.wsum for p in parts], axis=0),
            occupancy=np.sum([p.occupancy for p in parts], axis=0),
            loglik=float(sum(p.loglik for p in parts)),
            mutual_info=float(sum(p.mutual_info for p in parts)),
            phi=np.concatenate([p.phi for p in parts]),
            best=np.concatenate([p.best for p in parts]),
            pmax=np.concatenate([p.pmax for p in parts]),
            candidates=None if any(p.candidates is None for p in parts)
            else np.concatenate([p.candidates for p in parts]),
            pairs=float(sum(p.pairs for p in parts)),
        )


def model_columns(grid: RotationGrid, models: np.ndarray, device: str = "cpu"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """W (P, R*K) float32, the models seen at every rotation, and ``sumW``
    (n_blocks*64,) = sum_p W_krp padded with ``PAD_SUMW`` (so padded columns
    get zero probability while every product stays finite).  ``models`` is (K, G)."""
    W = torch.from_numpy(rotated_models(grid, models).reshape(grid.n_pix, -1)).to(device)
    # sum_p W_krp = (S_r^T 1) . M_k exactly, since W = S M (no pass over W needed)
    # (a torch product: numpy's BLAS threads would contend with torch's spinning OpenMP ones)
    sumW = (torch.from_numpy(grid.colsum_likelihood) @ torch.from_numpy(models.astype(np.float64)).T
            ).reshape(-1).to(device)
    nb = -(-sumW.shape[0] // COL_BLOCK)
    sumW = torch.cat([sumW, sumW.new_full((nb * COL_BLOCK - sumW.shape[0],), PAD_SUMW)])
    return W, sumW


def log_blocks(W: torch.Tensor, floor: float, offset: torch.Tensor | None = None) -> torch.Tensor:
    """log(max(W + offset, floor)) as column blocks (n_blocks, P, 64) of the (P, C) matrix ``W``
    (padding columns 0); ``offset`` (P,) or None.

    Written block by block and slab by slab (``SLAB_ELEMENTS``): one strided read of ``W`` and one
    write, the add, clamp and log of a slab in cache -- instead of a copy, a log into a new array,
    a padded copy and a transposing copy of the whole ~160 MB matrix (0.2-0.3 s of a full iteration
    on Dragonfly's 30,000-frame file).  Elementwise the same operations: bitwise the same.
    """
    P, C = W.shape
    nb = -(-C // COL_BLOCK)
    out = torch.empty((nb, P, COL_BLOCK), dtype=W.dtype, device=W.device)
    step = max(1, SLAB_ELEMENTS // COL_BLOCK)
    for i in range(nb):
        lo = i * COL_BLOCK
        width = min(C, lo + COL_BLOCK) - lo
        if width < COL_BLOCK:
            out[i, :, width:] = 0.0
        for p0 in range(0, P, step):
            slab = out[i, p0:p0 + step, :width]
            if offset is not None:
                torch.add(W[p0:p0 + step, lo:lo + width], offset[p0:p0 + step, None], out=slab)
            else:
                slab.copy_(W[p0:p0 + step, lo:lo + width])
            slab.clamp_(min=floor).log_()
    return out


def log_models(grid: RotationGrid, models: np.ndarray, device: str = "cpu"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """log W as column blocks (n_blocks, P, 64) of the (P, R*K) matrix, and the padded
    ``sumW`` of :func:`model_columns`."""
    W, sumW = model_columns(grid, models, device)
    return log_blocks(W, model_floor(models)), sumW


def model_floor(models: np.ndarray) -> float:
    return MODEL_FLOOR * max(float(models.mean()), 1e-30)


# Background term: log(phi_n W + b) = log phi_n + log(W + b / phi_n).  The log-model matrix
# then depends on the frame's fluence; frames share one matrix per fluence level
# phi = 2^(v / LEVELS_PER_OCTAVE) (b / phi within 19 % of the frame's own value: a few levels
# cover the usual fluence range, and each costs one pass over the P x R*K model matrix).
LEVELS_PER_OCTAVE = 2


def fluence_level(phi: np.ndarray) -> np.ndarray:
    """Integer fluence level v of each scale (phi ~ 2^(v / LEVELS_PER_OCTAVE))."""
    return np.round(LEVELS_PER_OCTAVE * np.log2(np.maximum(np.asarray(phi, np.float64), 1e-6))
                    ).astype(np.int64)


def level_scale(level: int) -> float:
    return float(2.0 ** (level / LEVELS_PER_OCTAVE))


def model_major(mat: torch.Tensor, n_models: int, n_rot: int) -> torch.Tensor:
    """A (P, R*K) model matrix (column ``j = r * K + k``) -> (K, P, R) contiguous: each
    model's R rotations side by side."""
    P = mat.shape[0]
    # the same as permuting (P, R, K) to (K, P, R), done as a 2D transpose: ~2.6x faster
    return mat.reshape(P * n_rot, n_models).T.contiguous().reshape(n_models, P, n_rot)


@dataclass
class CompactLikelihood:
    """The likelihoods of some frames of a pruned block, over each frame's candidate models only.

    rows : (n,) int64, the frames (positions in the block).
    L : (n, R, c) float32, ``sum_p K_np log W_krp`` of frame n, rotation r and its c-th candidate
        model (``PRUNED_L`` in the slots a frame with fewer than c candidates leaves empty).
    model : (n, c) int64, the model of each slot (candidates in increasing model order, so that
        the flat (r, slot) order is the order of the columns j = r K + k: ties break as in the
        full product); empty slots repeat the frame's first candidate.
    valid : (n, c) bool, the filled slots.
    rank : (n, K) int64, the slot of each candidate model.
    """

    rows: np.ndarray
    L: torch.Tensor
    model: np.ndarray
    valid: np.ndarray
    rank: np.ndarray


def candidate_slots(candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model (n, c), valid (n, c), rank (n, K)) for candidates (n, K) bool: ``rank[n, k]`` is the
    slot of model k among frame n's candidates (meaningful where ``candidates[n, k]``)."""
    cand = np.asarray(candidates, bool)
    n, _ = cand.shape
    rank = np.cumsum(cand, axis=1) - 1
    c = max(1, int(cand.sum(axis=1).max(initial=0)))
    fr, kk = np.nonzero(cand)
    model = np.zeros((n, c), np.int64)
    valid = np.zeros((n, c), bool)
    model[fr, rank[fr, kk]] = kk
    valid[fr, rank[fr, kk]] = True
    first = model[:, :1]
    model = np.where(valid, model, first)
    return model, valid, rank


def compact_pieces(candidates: np.ndarray, n_rot: int, device) -> list[CompactLikelihood]:
    """Empty (``PRUNED_L``) :class:`CompactLikelihood` pieces for a block's candidates (n, K): frames
    grouped by their number of candidates (1, 2, 3-4, 5-8, ...), so that one frame with many
    candidates does not widen the work of all the others."""
    counts = np.asarray(candidates, bool).sum(axis=1)
    group = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    pieces = []
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        model, valid, rank = candidate_slots(candidates[rows])
        L = torch.full((len(rows), n_rot, model.shape[1]), PRUNED_L, dtype=torch.float32, device=device)
        pieces.append(CompactLikelihood(rows, L, model, valid, rank))
    return pieces


def photon_passes(photons: np.ndarray, limit: int):
    """Yield (first, last) ranges of consecutive items whose photons (``photons`` (n,), per item) sum to
    at most ``limit`` -- at least one item per pass, so an item above the limit takes a pass alone."""
    ends = np.cumsum(np.asarray(photons, np.int64))
    first = 0
    while first < len(ends):
        last = max(first + 1, int(np.searchsorted(ends, (ends[first - 1] if first else 0) + limit, side="right")))
        yield first, last
        first = last


PAIR_PHOTONS = 1 << 22   # fill_pieces: photons of the (frame, model) pairs gathered in one pass (~50 MB of indices)


def fill_pieces(pieces: list[CompactLikelihood], rows: np.ndarray, fitted: sp.csr_matrix, log_km: torch.Tensor,
                candidates: np.ndarray) -> None:
    """``L[i, :, slot of k] = sum_p K_ip log W_kp`` for every candidate pair (i, k) of the block rows
    ``rows``, into the pieces those rows belong to.

    fitted : csr (len(rows), P) counts on the fitted pixels; log_km : (K, P, R) from
    :func:`model_major`; candidates : (len(rows), K).  The pairs are gathered model after model
    (one model's (P, R) table stays in cache) from the (K*P, R) table in passes of at most
    ``PAIR_PHOTONS`` photons: cost O(photons x R x candidates per frame) instead of
    O(photons x R x K).
    """
    n_block = max(int(p.rows.max()) for p in pieces) + 1
    piece_of = np.zeros(n_block, np.int64)
    local = np.zeros(n_block, np.int64)
    for g, piece in enumerate(pieces):
        piece_of[piece.rows] = g
        local[piece.rows] = np.arange(len(piece.rows))
    device = log_km.device
    K, P, R = log_km.shape
    table = log_km.reshape(K * P, R)
    model, sel = np.nonzero(np.asarray(candidates, bool).T)      # the pairs, model-major
    where, at = piece_of[rows[sel]], local[rows[sel]]
    idx_dtype = torch.int32 if K * P < 2 ** 31 else torch.int64
    for first, last in photon_passes(np.diff(fitted.indptr)[sel], PAIR_PHOTONS):
        picked = fitted[sel[first:last]]
        lens = torch.from_numpy(np.diff(picked.indptr).astype(np.int64)).to(device)
        index = torch.repeat_interleave(torch.from_numpy(model[first:last] * P).to(device, idx_dtype), lens)
        index += torch.from_numpy(picked.indices).to(device, idx_dtype)
        offsets = torch.from_numpy(picked.indptr[:-1]).to(device, idx_dtype)
        part = F.embedding_bag(index, table, offsets, mode="sum",
                               per_sample_weights=torch.from_numpy(np.asarray(picked.data, np.float32)).to(device))
        w, a, k = where[first:last], at[first:last], model[first:last]
        for g in np.unique(w):
            hit = w == g
            i = a[hit]
            pieces[g].L[torch.from_numpy(i).to(device), :,
                        torch.from_numpy(pieces[g].rank[i, k[hit]]).to(device)] = part[torch.from_numpy(hit).to(device)]


SLAB_ELEMENTS = 1 << 18   # log of a model matrix: elements per slab (1 MiB of float32, stays in cache)


def offset_log(src: torch.Tensor, floor: float, alpha: float = 0.0, offset: torch.Tensor | None = None,
               index=None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``out[i] = log(max(src[i] + alpha offset, floor))`` for ``i`` in ``index`` (default: all of dim 0).

    src : (n, P, w) float32, ``offset`` (P,) or None, ``index`` a sequence of row numbers (e.g. the
    models some candidate needs), ``out`` like ``src`` (new when None; may be ``src`` itself).
    Rows of ``out`` outside ``index`` are left as they are.
    Done slab by slab (``SLAB_ELEMENTS``) so that the add, the clamp and the log of a slab run in
    cache: one read and one write of the matrix instead of four whole-array passes (2.5x faster
    for a (40, 16641, 36) matrix on 2 threads), elementwise the same operations, so bitwise the
    same result.
    """
    out = torch.empty_like(src) if out is None else out
    n, P = src.shape[:2]
    per_row = max(1, src[0].numel() // max(P, 1))
    step = max(1, min(P, SLAB_ELEMENTS // per_row))
    off = None if offset is None else offset.reshape(P, *([1] * (src.dim() - 2)))
    for i in (range(n) if index is None else (int(k) for k in index)):
        for p0 in range(0, P, step):
            o = out[i, p0:p0 + step]
            if off is not None:
                torch.add(src[i, p0:p0 + step], off[p0:p0 + step], alpha=alpha, out=o)
            elif o.data_ptr() != src[i, p0:p0 + step].data_ptr():
                o.copy_(src[i, p0:p0 + step])
            o.clamp_(min=floor).log_()
    return out


def _prunes(candidates: np.ndarray | None) -> bool:
    """Whether a block takes the pruned product (few enough candidate pairs)."""
    return candidates is not None and candidates.mean() <= PRUNE_FULL_SHARE


def _full_likelihood(bag: tuple, logW: torch.Tensor, candidates: np.ndarray | None,
                     n_rot: int) -> torch.Tensor:
    """The full product; pairs outside ``candidates`` set to ``PRUNED_L`` (the same pairs
    as the pruned path, so the result never depends on which path ran)."""
    L = sparse_dense_product(bag, logW)
    if candidates is not None and not candidates.all():
        keep = torch.from_numpy(np.tile(candidates, n_rot)).to(L.device)       # (n, R*K)
        L.masked_fill_(~to_blocks(keep, L.shape[2], pad=True), PRUNED_L)
    return L


GROUP_BYTES = 1 << 30   # background term: likelihoods of consecutive blocks held together (bytes)


def _likelihood_blocks(shard, W: torch.Tensor, phi: np.ndarray, background: np.ndarray | None, floor: float,
                       width: int, device: str, candidates: np.ndarray | None = None, n_models: int = 0,
                       n_rot: int = 0):
    """Yield (start, stop, bag_t, counts, L) for every block of a shard (``counts`` the block's CSR on
    the used pixels, frame-major), with ``L``
    ``sum_p K_np log(model)`` on the fitted pixels: column blocks (n_blocks, n, width) of all R*K
    columns, or a :class:`CompactLikelihood` over the candidates of a pruned block.

    ``candidates`` (n, K) bool: compute only those (frame, model) pairs (the others get
    ``PRUNED_L`` / no slot); None: all.  A block prunes when its share of candidate pairs is at
    most ``PRUNE_FULL_SHARE`` (:func:`_prunes`); the result does not depend on which path ran.

    Without a background the log-model matrix is shared by all frames: made once, as column blocks
    for the full product and model-major (only the models some candidate needs) for pruned blocks,
    each only if some block uses it.  With a background, log(W + b / phi) depends on the frame's
    fluence level: consecutive blocks are grouped (their ``L`` within ``GROUP_BYTES``) and each
    level's matrix is computed once per group, whatever the frame order (a streamed shard is read
    in file order).
    """
    spans = [(start, stop) for start, stop, *_ in shard.blocks]
    prunes = [candidates is not None and _prunes(candidates[a:b]) for a, b in spans]
    if background is None:
        logW = log_blocks(W, floor) if not all(prunes) else None
        log_km = None
        if any(prunes) and logW is None:   # every block pruned: the log of the needed models only
            need = np.flatnonzero(np.any([candidates[a:b].any(axis=0) for a, b in spans], axis=0))
            log_km = model_major(W, n_models, n_rot)
            offset_log(log_km, floor, index=need, out=log_km)
        elif any(prunes):
            log_km = model_major(from_blocks(logW, n_models * n_rot), n_models, n_rot)
        del W
        for (start, stop, bag, bag_t), pruned in zip(shard.blocks, prunes):
            cand = None if candidates is None else candidates[start:stop]
            if pruned:
                L = compact_pieces(cand, n_rot, device)
                fill_pieces(L, np.arange(stop - start), shard.fit_block(start, stop), log_km, cand)
            else:
                L = _full_likelihood(bag, logW, cand, n_rot)
            yield start, stop, bag_t, shard.count_block(start, stop), L
        return
    nb = -(-W.shape[1] // width)
    offset = torch.from_numpy(np.asarray(background, np.float32)).to(device)[None, :, None]
    Wb = to_blocks(W, width) if not all(prunes) else None   # once; each level: log(Wb + b / phi)
    Wkm = model_major(W, n_models, n_rot) if any(prunes) else None
    group_frames = max(shard.block_frames, GROUP_BYTES // (4 * nb * width))
    group: list = []
    # one buffer for each layout of the levels' log matrices, reused level after level: a fresh
    # ~100 MB tensor per level costs as much again in page faults as the log itself
    km_buffer = torch.empty_like(Wkm) if Wkm is not None else None
    blocks_buffer = torch.empty_like(Wb) if Wb is not None else None

    def flush():
        levels = [fluence_level(phi[start:stop]) for start, stop, *_ in group]
        outs = [compact_pieces(candidates[start:stop], n_rot, device) if pruned
                else torch.empty((nb, stop - start, width), dtype=torch.float32, device=device)
                for start, stop, _, pruned, _ in group]
        for v in np.unique(np.concatenate(levels)):
            alpha = 1.0 / level_scale(int(v))
            work = []                      # (rows, candidates, fitted rows, out, pruned) of this level's blocks
            for (start, stop, _, pruned, counts), lev, out in zip(group, levels, outs):
                rows = np.flatnonzero(lev == v)
                if rows.size:
                    work.append((rows, None if candidates is None else candidates[start:stop][rows],
                                 shard.fit_rows(start, stop, counts, rows), out, pruned))
            log_km = None
            if any(w[4] for w in work):   # log(W + b / phi) only for the models some pruned frame needs
                lvl_need = np.flatnonzero(np.any([w[1].any(axis=0) for w in work if w[4]], axis=0))
                log_km = offset_log(Wkm, floor, alpha, offset, index=lvl_need, out=km_buffer)
            logv = None
            for rows, cand, fitted, out, pruned in work:
                if pruned:
                    fill_pieces(out, rows, fitted, log_km, cand)
                else:
                    if logv is None:
                        logv = offset_log(Wb, floor, alpha, offset, out=blocks_buffer)
                    out[:, torch.from_numpy(rows).to(device), :] = _full_likelihood(_bag(fitted), logv,
                                                                                   cand, n_rot)
            del logv, log_km
        for (start, stop, bag_t, _, counts), out in zip(group, outs):
            yield start, stop, bag_t, counts, out

    held = 0
    for (start, stop, bag, bag_t), pruned in zip(shard.blocks, prunes):
        # the block's counts only: its fitted rows are derived level by level, so the group holds one
        # copy of the photons (a streamed block's fitted counts are a second CSR)
        group.append((start, stop, bag_t, pruned, shard.count_block(start, stop)))
        held += stop - start
        if held >= group_frames:
            yield from flush()
            group, held = [], 0
    if group:
        yield from flush()


SCATTER_PHOTONS = 1 << 24   # scatter_numerator: photons of the kept entries added in one pass (~200 MB)


def scatter_numerator(acc: torch.Tensor, counts: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray,
                      vals: np.ndarray) -> None:
    """Add ``K^T P`` of a block's kept posterior entries to ``acc``: cost ~ kept entries x photons.

    acc : (C, P) float32, row ``j = r K + k`` the frame sum of column (r, k); its transpose is the
        (P, R*K) table that :meth:`RotationGrid.numerator_bag` projects onto the model grid.
    counts : csr (n, P) float32, the block's counts on the used pixels (frame-major).
    rows, cols, vals : the kept entries (block row, column ``j``, probability), in any order.

    Each entry adds its probability times its frame's counts to row ``j``.  The entries are
    taken in column order (then frame order), so that consecutive photons land in one P-long row
    that stays in cache; the picked frames then form a (C, P) CSR matrix with repeated pixels,
    which is added row by row.  On Dragonfly's 30,000-frame file this is 4x faster than the earlier
    scatter into a (P, C) layout, where each photon touched its own cache line of a ~160 MB table.
    """
    if len(rows) == 0:
        return
    C, P = acc.shape
    order = np.lexsort((np.asarray(rows, np.int64), np.asarray(cols, np.int64)))   # by column, then frame
    rows = np.asarray(rows, np.int64)[order]
    cols = np.asarray(cols, np.int64)[order]
    vals = np.asarray(vals, np.float32)[order]
    # in passes of at most SCATTER_PHOTONS photons (the same additions in the same order): bounded
    # memory, and each pass's picked CSR stays within scipy's int32 index range
    for first, last in photon_passes(np.diff(counts.indptr)[rows], SCATTER_PHOTONS):
        picked = counts[rows[first:last]]                          # each entry's frame photons, a row each
        picked.data = np.asarray(picked.data, np.float32)          # (a copy: counts is left as it is)
        indptr = picked.indptr[np.searchsorted(cols[first:last], np.arange(C + 1))]   # row j: column j's photons
        if acc.device.type == "cpu":
            _sparsetools.csr_scale_rows(last - first, P, picked.indptr, picked.indices, picked.data, vals[first:last])
            _sparsetools.csr_todense(C, P, indptr, picked.indices, picked.data, acc.numpy())
        else:
            _add_rows_torch(acc, indptr, picked.indices, picked.data, vals[first:last], np.diff(picked.indptr))


def _add_rows_torch(acc: torch.Tensor, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                    vals: np.ndarray, entry_photons: np.ndarray) -> None:
    """:func:`scatter_numerator`'s addition on any torch device: ``acc[j, indices[e]] += vals[entry] *
    data[e]`` for the photons ``e`` of row ``j`` (``indptr``) of the entries (``entry_photons`` each)."""
    device = acc.device
    C, P = acc.shape
    idx_dtype = torch.int32 if C * P < 2 ** 31 else torch.int64
    col = torch.repeat_interleave(torch.arange(C, device=device, dtype=idx_dtype) * P,
                                  torch.from_numpy(np.diff(indptr)).to(device))
    index = col + torch.from_numpy(indices).to(device, idx_dtype)
    weight = torch.repeat_interleave(torch.from_numpy(vals).to(device),
                                     torch.from_numpy(entry_photons.astype(np.int64)).to(device))
    weight *= torch.from_numpy(data).to(device)
    acc.view(-1).index_add_(0, index, weight)


def transpose_into(mat: torch.Tensor, out: torch.Tensor | None = None, chunk: int = 1024) -> torch.Tensor:
    """``mat.T`` (m, n) -> (n, m) contiguous, copied ``chunk`` columns at a time so that the rows read
    and written stay in cache (a (1800, 22184) float32 matrix: 0.027 s against 0.05-0.11 s for
    ``mat.T.contiguous()`` on 2 threads)."""
    out = torch.empty((mat.shape[1], mat.shape[0]), dtype=mat.dtype, device=mat.device) if out is None else out
    for c0 in range(0, mat.shape[1], chunk):
        out[c0:c0 + chunk].copy_(mat[:, c0:c0 + chunk].T)
    return out


def _compact_posterior(lk: CompactLikelihood, ph: torch.Tensor, be: torch.Tensor, photons: torch.Tensor,
                       sumW_rk: torch.Tensor, prob_min: float, prune_mass: float, update_scale: bool,
                       bg_total: float | None, start: int, phi_new: np.ndarray, best: np.ndarray, pmax: np.ndarray,
                       cand_out: np.ndarray | None, wsum: torch.Tensor, occ: torch.Tensor,
                       acc: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The posterior of frames of a pruned block over their candidates only: what :func:`shard_step`
    does for a full block, at a cost proportional to the candidate pairs (not to R*K).

    ``ph``, ``be``, ``photons`` are the piece's frames'.
    Writes the rows ``start + lk.rows`` of ``phi_new``, ``best``, ``pmax``, ``cand_out``; adds to
    ``wsum`` and ``occ`` (flat (C,) views over the columns j = r K + k) and to ``acc`` (loglik, mi);
    returns the kept posterior entries (block row, column j, probability) for the numerator.
    """
    L = lk.L                                                       # (n, R, c)
    n, R, c = L.shape
    K = sumW_rk.shape[1]
    at = start + lk.rows
    model = torch.from_numpy(lk.model).to(L.device)                # (n, c)
    sw = sumW_rk[:, model].permute(1, 0, 2)                        # (n, R, c): sum_p W of each slot
    L -= ph.float()[:, None, None] * sw
    Pn = L * be[:, None, None]
    Pn -= Pn.amax(dim=(1, 2), keepdim=True)
    F.threshold_(Pn.clamp_(min=EXP_FLOOR).exp_(), EXP_ZERO, 0.0)
    Pn /= Pn.sum(dim=(1, 2), keepdim=True)
    if prob_min > 0:
        Pn.masked_fill_(Pn < prob_min, 0.0)
        Pn /= Pn.sum(dim=(1, 2), keepdim=True)
    acc["loglik"] += float(torch.dot(Pn.reshape(-1), L.reshape(-1))) + float((photons * torch.log(ph)).sum())
    acc["mi"] += float(torch.xlogy(Pn, Pn).sum(dtype=torch.float64)) + n * math.log(R * K)
    pm, arg = Pn.reshape(n, R * c).max(dim=1)                      # flat (r, slot): the order of j
    r_best, s_best = arg // c, arg % c
    rows = torch.arange(n, device=L.device)
    best[at] = (r_best * K + model[rows, s_best]).cpu().numpy()
    pmax[at] = pm.double().cpu().numpy()
    if cand_out is not None:
        mass = Pn.sum(dim=1).cpu().numpy()                         # (n, c), over rotations
        cand_out[at] = False
        fr, sl = np.nonzero(lk.valid & (mass >= prune_mass))
        cand_out[at[fr], lk.model[fr, sl]] = True
    if update_scale:
        expected = (Pn * sw).sum(dim=(1, 2))
        signal = photons if bg_total is None else torch.clamp(photons - bg_total, min=0.1)
        phi_new[at] = (signal / expected.double()).cpu().numpy()
    phn = torch.from_numpy(phi_new[at]).to(L.device).float()
    col = (torch.arange(R, device=L.device)[None, :, None] * K + model[:, None, :])     # (n, R, c) -> j
    nz = Pn > 0
    j, p = col[nz], Pn[nz]
    wsum.index_add_(0, j, (p * phn[:, None, None].expand_as(Pn)[nz]).double())
    occ.index_add_(0, j, p.double())
    fr = rows[:, None, None].expand_as(Pn)[nz]
    return lk.rows[fr.cpu().numpy()], j.cpu().numpy(), p.cpu().numpy()


def shard_step(shard: Shard, grid: RotationGrid, models: np.ndarray, phi: np.ndarray,
               beta: np.ndarray, update_scale: bool = True, device: str = "cpu",
               engine: str = "sparse", prob_min: float = 0.0,
               background: np.ndarray | None = None, candidates: np.ndarray | None = None,
               prune_mass: float = 0.0) -> PartialSums:
    """One EMC iteration's E-step and M-step partial sums on a shard.

    Parameters
    ----------
    models : (K, G) float32 current models.
    phi : (n,) fluence scale of each frame of the shard.
    beta : (n,) likelihood temperature of each frame.
    update_scale : also return updated scales
        ``phi_n = photons_n / sum_j P_nj sumW_j`` (else ``phi`` unchanged).
        The M-step denominator uses the returned scales.
    engine : "sparse" (photon-sparse gather kernel, float32) or "dense"
        (dense matrix products in float64; for small data and for tests).
    prob_min : posterior sparsity.  Probabilities below ``prob_min`` (of a
        frame's normalised posterior over all R*K columns) are set to 0 and
        the rest renormalised, before the scales, occupancies and M-step sums
        (as Dragonfly skips negligible orientations).  When fewer than
        ``SPARSE_FRAC`` of a block's (frame, column) pairs survive -- once the
        posteriors have sharpened -- the M-step numerator is computed from the
        kept pairs only (cost O(kept pairs x photons per frame) instead of
        O(photons x R*K)).  0 keeps everything.
    background : (P,) expected background photons per frame on the used
        pixels, or None.  The frame model becomes ``phi_n W + b``: the E-step
        uses ``log(W + b / phi)`` at the frame's fluence level, the scale
        update and the M-step numerator count only the expected particle
        photons (total minus expected background).
    candidates : (n, K) bool or None.  E-step pruning: the likelihood is
        computed only for these (frame, model) pairs, every rotation of a
        candidate model included; the others get probability 0 (the models a
        frame had no posterior mass on at the last iteration; see
        :func:`spicompute.emc2d.run.use_pruning`).
    prune_mass : > 0: also return each frame's candidates for the next
        iteration, the models holding at least this posterior mass.
    """
    if engine == "dense":
        return _shard_step_dense(shard, grid, models, phi, beta, update_scale, prob_min,
                                 background, candidates, prune_mass)
    K = models.shape[0]
    R, P = grid.n_rot, grid.n_pix
    C = R * K
    W, sumW = model_columns(grid, models, device)                # (P, C), (nb*b,)
    floor = model_floor(models)
    bg = bg_total = None
    if background is not None:
        bg = np.asarray(background, np.float64)
        bg_total = float(bg.sum() if grid.fit is None else bg[grid.fit].sum())
    nb, width = sumW.shape[0] // COL_BLOCK, COL_BLOCK
    sumW_b = sumW.float().reshape(nb, width)                    # padded columns: PAD_SUMW
    sumW_rk = sumW[:C].float().reshape(R, K)
    num_pix = None                                                # dense numerator (nb, P, b), on first use
    wsum = torch.zeros((nb, width), dtype=torch.float64, device=device)
    occ = torch.zeros((nb, width), dtype=torch.float64, device=device)
    acc = {"loglik": 0.0, "mi": 0.0}
    n = shard.n_frames
    phi_new = np.array(phi, dtype=np.float64, copy=True)
    best = np.empty(n, np.int64)
    pmax = np.empty(n)
    num_kept = None                                               # numerator of sharp / pruned blocks
    cand_out = np.zeros((n, K), bool) if prune_mass > 0 else None

    def dense_numerator(bag_t, Pn_blocks):   # += K^T P, (nb, P, b): the gather over all columns
        nonlocal num_pix
        if num_pix is None:
            num_pix = torch.zeros((nb, P, width), dtype=torch.float32, device=device)
        sparse_dense_product(bag_t, Pn_blocks, out=num_pix)

    def kept_numerator(counts, fr, col, val):   # += K^T P from the kept entries, (C, P): a row per column
        nonlocal num_kept
        if num_kept is None:
            num_kept = torch.zeros((C, P), dtype=torch.float32, device=device)
        scatter_numerator(num_kept, counts, fr, col, val)

    blocks = _likelihood_blocks(shard, W, np.asarray(phi), background, floor, width, device, candidates, K, R)
    del W   # the generator holds it until the log-model matrices are made
    for start, stop, bag_t, counts, L in blocks:
        ph = torch.from_numpy(np.asarray(phi[start:stop], np.float64)).to(device)
        be = torch.from_numpy(np.asarray(beta[start:stop], np.float32)).to(device)
        photons = torch.from_numpy(shard.photons[start:stop]).to(device)
        if isinstance(L, list):   # pruned block: pieces of a CompactLikelihood
            kept = []
            for piece in L:
                rows = torch.from_numpy(piece.rows).to(device)
                kept.append(_compact_posterior(
                    piece, ph[rows], be[rows], photons[rows], sumW_rk, prob_min, prune_mass, update_scale,
                    bg_total, start, phi_new, best, pmax, cand_out, wsum.view(-1), occ.view(-1), acc))
            fr, col, val = (np.concatenate(x) for x in zip(*kept))
            if len(val) < SPARSE_FRAC * (stop - start) * C:       # sharp: scatter the kept entries
                kept_numerator(counts, fr, col, val)
            else:                                                 # many kept pairs: the dense gather
                dense = torch.zeros((stop - start, nb * width), dtype=torch.float32, device=device)
                dense[torch.from_numpy(fr).to(device), torch.from_numpy(col).to(device)] = \
                    torch.from_numpy(val).to(device)
                dense_numerator(bag_t, to_blocks(dense, width))
            continue
        L -= ph.float()[None, :, None] * sumW_b[:, None, :]       # (nb, n_b, b)
        # posterior: softmax over all (block, column) of beta * L, per frame
        # (reductions over the strided (0, 2) axes done as two contiguous ones: ~5x faster)
        Pn = L * be[None, :, None]
        Pn -= Pn.amax(dim=2).amax(dim=0)[None, :, None]
        F.threshold_(Pn.clamp_(min=EXP_FLOOR).exp_(), EXP_ZERO, 0.0)
        Pn /= Pn.sum(dim=2).sum(dim=0)[None, :, None]
        if prob_min > 0:
            Pn.masked_fill_(Pn < prob_min, 0.0)       # the maximum (>= 1/C) always survives
            Pn /= Pn.sum(dim=2).sum(dim=0)[None, :, None]
        # expected log-likelihood (with the constant sum_p K_np log phi_n), mutual information
        acc["loglik"] += float(torch.dot(Pn.reshape(-1), L.reshape(-1))) + \
            float((photons * torch.log(ph)).sum())
        acc["mi"] += float(torch.xlogy(Pn, Pn).sum(dtype=torch.float64)) + (stop - start) * math.log(C)
        # the most probable column: per block, then over blocks (first maximum, as over all columns)
        pm_b, arg_b = Pn.max(dim=2)                                # (nb, n_b)
        pm, ib = pm_b.max(dim=0)
        arg = ib * width + arg_b.gather(0, ib[None])[0]
        if cand_out is not None:   # posterior mass of each model, summed over rotations
            mass = from_blocks(Pn, nb * width)[:, :C].reshape(-1, R, K).sum(dim=1)
            cand_out[start:stop] = (mass >= prune_mass).cpu().numpy()
        best[start:stop] = arg.cpu().numpy()
        pmax[start:stop] = pm.double().cpu().numpy()
        if update_scale:
            expected = torch.einsum("inc,ic->n", Pn, sumW_b)     # Pn = 0 on padding
            signal = photons if background is None else torch.clamp(photons - bg_total, min=0.1)
            phi_new[start:stop] = (signal / expected.double()).cpu().numpy()
        phn = torch.from_numpy(phi_new[start:stop]).to(device).float()
        wsum += torch.einsum("inc,n->ic", Pn, phn).double()
        occ += Pn.sum(dim=1).double()
        kept = int(torch.count_nonzero(Pn)) if prob_min > 0 else Pn.numel()
        if kept < SPARSE_FRAC * Pn.numel():
            # sharp posteriors: K^T P from the kept pairs only
            ib, fr, w = torch.nonzero(Pn, as_tuple=True)          # padding columns hold P = 0
            kept_numerator(counts, fr.cpu().numpy(), (ib * width + w).cpu().numpy(), Pn[ib, fr, w].cpu().numpy())
        else:
            dense_numerator(bag_t, Pn)
        del L, Pn
    # numerator: photons interpolated back with the plain bilinear weights (S holds weight x
    # correction; the correction belongs to the prediction, i.e. the denominator, only).  The
    # dense part (full blocks, column blocks) and the kept-entry part (sharp or pruned blocks, a
    # row per column) are projected apart, each as the (P, R*K) table of columns j = r K + k.
    num = np.zeros((K, grid.ST.shape[0]))                         # (K, G)
    index, offsets, weights = grid.numerator_bag(device)

    def project(table):   # (P, R*K) = rows p R + r of a (P*R, K) table -> (K, G)
        return F.embedding_bag(index, table.reshape(P * R, K), offsets, mode="sum",
                               per_sample_weights=weights).T.cpu().numpy()

    if num_pix is not None:
        num += project(from_blocks(num_pix, C))
    if num_kept is not None:   # (each table made when it is projected: one (P, R*K) copy at a time)
        num += project(transpose_into(num_kept))
    if background is not None:   # particle photons only: subtract the expected background
        # sum_{p, r} ST[g, p R + r] (b_p / corr_p) occ[r, k] = (Q @ occ)[g, k] with Q = ST @ E,
        # E[p R + r, r] = b_p / corr_p: no dense (P, R*K) term
        occ_rk = occ.reshape(-1)[:C].cpu().numpy().reshape(R, K)
        num -= (grid.background_projection(bg) @ occ_rk).T
    return PartialSums(num=num.astype(np.float64),
                       wsum=wsum.reshape(-1)[:C].cpu().numpy().reshape(R, K),
                       occupancy=occ.reshape(-1)[:C].cpu().numpy().reshape(R, K).sum(0),
                       loglik=acc["loglik"],
                       mutual_info=acc["mi"], phi=phi_new, best=best, pmax=pmax,
                       candidates=cand_out,
                       pairs=float(1.0 if candidates is None else candidates.mean()) * n)


def _shard_step_dense(shard: Shard, grid: RotationGrid, models: np.ndarray, phi: np.ndarray,
                      beta: np.ndarray, update_scale: bool, prob_min: float = 0.0,
                      background: np.ndarray | None = None, candidates: np.ndarray | None = None,
                      prune_mass: float = 0.0) -> PartialSums:
    """Reference implementation of :func:`shard_step` with dense float64 matrices
    (the background term at the same fluence levels, the same pruning)."""
    K = models.shape[0]
    R, P = grid.n_rot, grid.n_pix
    C = R * K
    W = (grid.S.astype(np.float64) @ models.T.astype(np.float64)).reshape(P, C)
    floor = model_floor(models)
    counts = shard.counts.toarray().astype(np.float64)            # (n, P) merged
    fitted = shard.fit_counts.toarray().astype(np.float64)         # (n, P) in the likelihood
    sumW = (grid.colsum_likelihood @ models.T.astype(np.float64)).reshape(-1)
    phi = np.asarray(phi, np.float64)
    if background is None:
        L = fitted @ np.log(np.maximum(W, floor))
    else:
        bg = np.asarray(background, np.float64)
        level = fluence_level(phi)
        L = np.empty((counts.shape[0], C))
        for v in np.unique(level):
            rows = level == v
            L[rows] = fitted[rows] @ np.log(np.maximum(W + bg[:, None] / level_scale(int(v)), floor))
    L -= phi[:, None] * sumW[None, :]
    if candidates is not None:   # column j = r * K + k: the frame's candidate models at every r
        L[~np.tile(np.asarray(candidates, bool), R)] = PRUNED_L
    Z = np.asarray(beta, np.float64)[:, None] * L
    Z -= Z.max(axis=1, keepdims=True)
    Pn = np.exp(Z)
    Pn /= Pn.sum(axis=1, keepdims=True)
    if prob_min > 0:
        Pn[Pn < prob_min] = 0.0
        Pn /= Pn.sum(axis=1, keepdims=True)
    photons = fitted.sum(axis=1)
    bg_fit = 0.0 if background is None else (bg.sum() if grid.fit is None else bg[grid.fit].sum())
    signal = photons if background is None else np.maximum(photons - bg_fit, 0.1)
    loglik = float((Pn * L).sum() + (photons * np.log(phi)).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(Pn > 0, Pn * np.log(Pn), 0.0)
    mi = float((plogp.sum(axis=1) + math.log(C)).sum())
    phi_new = signal / (Pn @ sumW) if update_scale else phi.copy()
    num_pix = counts.T @ Pn
    if background is not None:   # particle photons only: subtract the expected background
        num_pix -= bg[:, None] * Pn.sum(axis=0)[None, :]
    num_pix = num_pix / grid.corr[:, None]                         # (P, C), plain bilinear weights
    num = (grid.ST.astype(np.float64) @ num_pix.reshape(P * R, K)).T
    wsum = (Pn.T @ phi_new).reshape(R, K)
    cand_out = Pn.reshape(-1, R, K).sum(axis=1) >= prune_mass if prune_mass > 0 else None
    return PartialSums(num=np.asarray(num), wsum=wsum, occupancy=Pn.reshape(-1, R, K).sum((0, 1)),
                       loglik=loglik, mutual_info=mi, phi=phi_new, best=Pn.argmax(axis=1),
                       pmax=Pn.max(axis=1), candidates=cand_out,
                       pairs=float(1.0 if candidates is None else np.mean(candidates)) * Pn.shape[0])


def m_step(grid: RotationGrid, total: PartialSums) -> tuple[np.ndarray, np.ndarray]:
    """New models and their coverage from the summed partial sums.

    Returns (models (K, G) float64, weight (K, G) float64): ``models = num /
    weight`` where ``weight > 0``, else 0; ``weight = sum_r wsum[r, k] S_r^T 1``.
    """
    weight = total.wsum.T @ grid.colsum                            # (K, G)
    num = total.num
    if grid.friedel:   # centrosymmetric models: pool each point with its inversion q -> -q
        L = grid.size
        flip = lambda a: a.reshape(-1, L, L)[:, ::-1, ::-1].reshape(a.shape[0], -1)  # noqa: E731
        num, weight = num + flip(num), weight + flip(weight)
    # "observed" is relative: a posterior tail of 1e-30 at some rotation is not an observation
    weight = np.where(weight > OBSERVED_REL * weight.max(axis=1, keepdims=True), weight, 0.0)
    models = np.zeros_like(weight)
    good = weight > 0
    # >= 0: with a background term the numerator (photons minus expected background) may dip below
    models[good] = np.maximum(num[good] / weight[good], 0.0)
    return models, weight
