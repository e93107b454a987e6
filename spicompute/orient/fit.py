"""Orientation fit of 2D averages against a 3D reference intensity, and gain.

For every average and every orientation R of a sampling of the fundamental
zone (:mod:`spicompute.orient.sampling`), the reference is sliced on the
averages' Ewald-sphere grid at model coordinates ``R^T q`` and compared by a
masked Pearson correlation.  Per average: the best orientation, its CC, and
the **gain** ``G = best CC / mean CC over all orientations`` ("cubicness":
about 1 for a shape whose slices all look alike, large when one orientation
fits much better than the rest).

Normalisation (why): a plain Pearson CC of raw intensities is dominated by
the steep radial fall-off (every pair ~0.99, gains ~1.00x), while dividing by
the radial profile (as the CC-matrix stage does) leaves a zero-mean speckle
pattern whose mean CC over orientations is ~0, so best/mean explodes or is
undefined.  The default correlates ``log(I + floor * p(r))`` (p the radial
profile, the averages' for averages and the reference's orientation average
for slices): the log compresses the fall-off so fringes count, the floor
relative to p keeps empty high-q pixels from dominating, and mean CCs stay
clearly positive.  On simulated 42 nm cube vs equal-volume sphere averages
(tests/orient/test_orient.py) this gives gains 1.5-1.8 for cubes and ~1.1 for
spheres, with the same orientation recovery as the alternatives
(:func:`transform` lists them).

Region: pixels with ``r_min <= r <= r_max`` (grid steps), optionally on a
``stride`` sub-grid (the paper also cropped/downsampled: the fit needs the
first few fringes, not the detector corners).  Masked pixels of an average
(weight 0) are excluded from its CC exactly; when all averages share one
mask in the region (the usual case) a single matrix product per chunk does.

Memory: orientations are processed in chunks of ``chunk`` slices; peak
extra memory is about ``chunk * P * 40`` bytes (model coordinates and
intensity temporaries) plus ``M * P * 4 * (1 or 3)`` for the prepared
averages and ``M * chunk * 4 * (1 or 3)`` for the CC block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from spicompute.errors import InputError, ParameterError
from spicompute.io.averages import AverageSet
from spicompute.orient.sampling import local_grid
from spicompute.orient.slicing import VolumeSampler, model_coordinates
from spicompute.shapes import cube_intensity

# --------------------------------------------------------------------------- references

@dataclass
class Reference:
    """A 3D intensity that can be evaluated at model-frame q-points.

    ``evaluate(q (..., 3) rad/nm) -> (...)`` float32; ``description`` says
    what it is (stored in outputs).
    """

    evaluate: Callable[[np.ndarray], np.ndarray]
    description: str
    size_nm: float | None = None


def cube_reference(edge_nm: float) -> Reference:
    """Ideal cube of edge ``edge_nm`` in closed form (:func:`spicompute.shapes.cube_intensity`)."""
    if not edge_nm > 0:
        raise ParameterError("orient.edge_nm", f"must be > 0, got {edge_nm!r}")
    return Reference(lambda q: cube_intensity(q, float(edge_nm)).astype(np.float32),
                     f"cube(edge_nm={float(edge_nm)})", float(edge_nm))


def volume_reference(volume: np.ndarray, dq_nm: float, scale: float = 1.0,
                     description: str = "volume") -> Reference:
    """Trilinear sampling of an (L, L, L) volume; ``scale`` s gives ``s^6 I(s q)``."""
    sampler = VolumeSampler(volume, dq_nm)
    s = float(scale)
    return Reference(lambda q: sampler(np.asarray(q, np.float32) * s) * np.float32(s**6),
                     f"{description}(scale={s})", None)


def read_volume_file(path: str | Path, index: int = 0) -> tuple[np.ndarray, float]:
    """Volume ``index`` of an HDF5 file with ``volumes`` (V, L, L, L) or ``volume`` (L, L, L)
    and a ``dq_nm`` attribute (on the dataset or the file) or dataset."""
    from spicompute.io.frames import open_h5

    with open_h5(path) as h5:
        name = "volumes" if "volumes" in h5 else "volume" if "volume" in h5 else None
        if name is None:
            raise InputError(path, "volumes", "neither 'volumes' nor 'volume' dataset present")
        ds = h5[name]
        if name == "volumes":
            if ds.ndim != 4:
                raise InputError(path, name, f"must be (V, L, L, L), got {ds.shape}")
            if not 0 <= index < ds.shape[0]:
                raise InputError(path, name, f"index {index} out of range 0..{ds.shape[0] - 1}")
            vol = ds[index]
        else:
            vol = ds[()]
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise InputError(path, name, f"volume must be a cube (L, L, L), got {vol.shape}")
        if "dq_nm" in ds.attrs:
            dq = float(ds.attrs["dq_nm"])
        elif "dq_nm" in h5.attrs:
            dq = float(h5.attrs["dq_nm"])
        elif "dq_nm" in h5:
            dq = float(np.asarray(h5["dq_nm"][()]).reshape(-1)[0])
        else:
            raise InputError(path, "dq_nm", "attribute missing")
    if not np.all(np.isfinite(vol)):
        raise InputError(path, name, "contains NaN or Inf")
    if not dq > 0:
        raise InputError(path, "dq_nm", f"must be > 0, got {dq}")
    return np.asarray(vol, dtype=np.float32), dq


# --------------------------------------------------------------------------- region and preparation

@dataclass
class FitRegion:
    """Grid pixels used by the fit.

    flat : (P,) flat indices into the L x L grid; q : (P, 3) lab q (rad/nm);
    rbin : (P,) integer pixel-radius bin; n_bins : number of radius bins.
    """

    flat: np.ndarray
    q: np.ndarray
    rbin: np.ndarray
    n_bins: int
    size: int


def fit_region(averages: AverageSet, r_min: float, r_max: float, stride: int = 1) -> FitRegion:
    """Pixels with ``r_min <= r <= r_max`` (grid steps) on a ``stride`` sub-grid around the centre."""
    size, c = averages.size, averages.center
    if not (0 <= r_min < r_max):
        raise ParameterError("orient.r_min/r_max", f"need 0 <= r_min < r_max, got {r_min}, {r_max}")
    if int(stride) < 1:
        raise ParameterError("orient.stride", f"must be >= 1, got {stride}")
    ii, jj = np.meshgrid(np.arange(size) - c, np.arange(size) - c, indexing="ij")
    r = np.hypot(ii, jj)
    keep = (r >= r_min) & (r <= r_max) & (ii % int(stride) == 0) & (jj % int(stride) == 0)
    flat = np.flatnonzero(keep)
    if flat.size < 8:
        raise ParameterError("orient.r_min/r_max", f"select only {flat.size} pixels of the {size}x{size} grid")
    rb = np.rint(r.reshape(-1)[flat]).astype(np.int64)
    rb -= rb.min()
    q = averages.q_grid().reshape(-1, 3)[flat]
    return FitRegion(flat, q, rb, int(rb.max()) + 1, size)


def _binned_mean(values: np.ndarray, weights: np.ndarray, rbin: np.ndarray, n_bins: int) -> np.ndarray:
    """Weighted mean over rows and pixels of each radius bin, (n_bins,); empty/<=0 bins filled."""
    tot = np.bincount(rbin, weights=(values * weights).sum(axis=0, dtype=np.float64), minlength=n_bins)
    cnt = np.bincount(rbin, weights=weights.sum(axis=0, dtype=np.float64), minlength=n_bins)
    prof = np.full(n_bins, np.nan)
    ok = cnt > 0
    prof[ok] = tot[ok] / cnt[ok]
    good = np.isfinite(prof) & (prof > 0)
    if not good.any():
        return np.ones(n_bins)
    idx = np.arange(n_bins)
    return np.interp(idx, idx[good], prof[good])


NORMALISATIONS = ("log", "log_profile", "profile")


def transform(values: np.ndarray, profile_at_pixel: np.ndarray, normalise: str,
              log_floor: float) -> np.ndarray:
    """Intensity -> quantity correlated by the fit (same rule for averages and slices).

    p(r) is the radial profile at each pixel: the averages' mean profile for
    averages, the reference's orientation-averaged profile for slices.

    ``"log"`` (default): ``log(I + log_floor * p(r))`` -- log intensity, floor
        relative to the profile so that empty high-q pixels do not dominate;
        the radial fall-off stays, so mean CCs are clearly positive and the
        gain is well defined (cube ~1.3-1.8, sphere ~1.1 on test data).
    ``"log_profile"``: ``log(I / p(r) + log_floor)`` -- fall-off removed;
        sharper orientation contrast but mean CCs near 0, so gains are large
        and can be undefined.
    ``"profile"``: ``I / p(r)`` as the CC-matrix stage; same caveat, and the
        noisiest recovery.
    """
    x = values / profile_at_pixel
    if normalise == "profile":
        return x
    out = np.log(np.maximum(x, 0) + log_floor)
    if normalise == "log":
        out += np.log(profile_at_pixel)
    return out


@dataclass
class PreparedAverages:
    """Averages restricted to the region, profile-normalised and ready for the CC."""

    values: np.ndarray  # (M, P) float32, normalised, zero where masked
    mask: np.ndarray | None  # (M, P) float32 of 0/1, None when all share one mask
    common: np.ndarray  # (P,) bool, the shared mask (all True in the general case)
    centred: np.ndarray | None  # (M, P) centred, unit-norm rows (common-mask case)
    profile: np.ndarray  # (n_bins,)

    def rows(self, start: int, stop: int) -> "PreparedAverages":
        """Averages ``start .. stop`` (the shared profile and mask kept)."""
        return PreparedAverages(self.values[start:stop],
                                None if self.mask is None else self.mask[start:stop], self.common,
                                None if self.centred is None else self.centred[start:stop], self.profile)


def prepare_averages(averages: AverageSet, region: FitRegion, normalise: str = "log",
                     log_floor: float = 0.01) -> PreparedAverages:
    """Normalise (:func:`transform`); centre/normalise rows for the common-mask case."""
    vals = averages.intensity.reshape(averages.n_averages, -1)[:, region.flat].astype(np.float64)
    valid = averages.valid.reshape(averages.n_averages, -1)[:, region.flat]
    if not valid.any(axis=1).all():
        bad = int(np.flatnonzero(~valid.any(axis=1))[0])
        raise InputError("averages", f"average {int(averages.average_id[bad])}",
                         "no valid pixel in the fit region")
    # each average to unit mean over its valid region pixels: the log floor is then
    # relative to the same scale for bright and faint averages
    scale = np.where(valid, vals, 0.0).sum(axis=1) / valid.sum(axis=1)
    vals /= np.where(scale > 0, scale, 1.0)[:, None]
    prof = _binned_mean(vals, valid.astype(np.float64), region.rbin, region.n_bins)
    norm = np.where(valid, transform(vals, prof[region.rbin], normalise, log_floor), 0.0)
    same = bool((valid == valid[:1]).all())
    if same:
        common = valid[0]
        x = norm[:, common]
        x = x - x.mean(axis=1, keepdims=True)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        return PreparedAverages(norm.astype(np.float32), None, common, x.astype(np.float32), prof)
    return PreparedAverages(norm.astype(np.float32), valid.astype(np.float32),
                            np.ones(len(region.flat), bool), None, prof)


def reference_profile(reference: Reference, region: FitRegion, quats: np.ndarray,
                      n_sample: int = 256, seed: int = 0) -> np.ndarray:
    """Orientation-averaged radial profile of the reference on the region, (n_bins,)."""
    rng = np.random.default_rng(seed)
    pick = quats if len(quats) <= n_sample else quats[rng.choice(len(quats), n_sample, replace=False)]
    s = reference.evaluate(model_coordinates(region.q, pick)).astype(np.float64)
    return _binned_mean(s, np.ones_like(s), region.rbin, region.n_bins)


def _slices(reference: Reference, region: FitRegion, quats: np.ndarray, profile: np.ndarray,
            normalise: str = "log", log_floor: float = 0.01) -> np.ndarray:
    """Normalised slices at ``quats`` (:func:`transform`), (N, P) float32."""
    s = reference.evaluate(model_coordinates(region.q, quats))
    p = profile[region.rbin].astype(np.float32)
    return transform(s, p, normalise, np.float32(log_floor)).astype(np.float32, copy=False)


def _owned(arr: np.ndarray) -> torch.Tensor:
    """A torch-allocated copy of ``arr``: torch's allocator aligns to 64 bytes, while a numpy array (a row
    range of a bigger one, or one unpickled on a Dask worker) can start anywhere, and the CPU matrix
    kernels round differently with the alignment -- copying makes the result independent of where the
    data came from (the copy costs far less than the product)."""
    return torch.from_numpy(np.ascontiguousarray(arr)).clone()


def _cc_block(prep: PreparedAverages, slices: np.ndarray) -> torch.Tensor:
    """Masked Pearson CC of every prepared average with every slice, (M, N)."""
    s = _owned(slices)
    if prep.centred is not None:
        sc = s[:, torch.from_numpy(prep.common)]
        sc = sc - sc.mean(dim=1, keepdim=True)
        sc = sc / sc.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return _owned(prep.centred) @ sc.T
    a = _owned(prep.values)
    m = _owned(prep.mask)
    n = m.sum(dim=1, keepdim=True)
    sum_a = a.sum(dim=1, keepdim=True)
    sum_a2 = (a * a).sum(dim=1, keepdim=True)
    sum_as = a @ s.T
    sum_s = m @ s.T
    sum_s2 = m @ (s * s).T
    cov = sum_as - sum_a * sum_s / n
    var_a = (sum_a2 - sum_a**2 / n).clamp_min(0)
    var_s = (sum_s2 - sum_s**2 / n).clamp_min(0)
    return cov / torch.sqrt(var_a * var_s).clamp_min(1e-30)


# --------------------------------------------------------------------------- the fit

@dataclass
class FitResult:
    best_index: np.ndarray  # (M,) index into the orientation set
    quaternion: np.ndarray  # (M, 4) best orientation (refined if requested)
    best_cc: np.ndarray  # (M,)
    mean_cc: np.ndarray  # (M,)
    std_cc: np.ndarray  # (M,)
    gain: np.ndarray  # (M,)
    stats: dict = field(default_factory=dict)


def fit_orientations(averages: AverageSet, reference: Reference, quats: np.ndarray, *,
                     r_min: float, r_max: float, stride: int = 1, chunk: int = 512,
                     normalise: str = "log", log_floor: float = 0.01,
                     progress: Callable[[int], None] | None = None,
                     region: FitRegion | None = None,
                     prepared: PreparedAverages | None = None,
                     weights: np.ndarray | None = None,
                     average_chunk: int = 256, client=None, worker_threads: int = 0) -> FitResult:
    """Best orientation, best CC, mean CC and gain of every average.

    quats : (K, 4) orientation set (scalar first, model->lab).
    weights : (K,) Voronoi weights of the orientations (the share of SO(3)
        each represents; default equal): the mean and spread of the CC over
        orientations -- hence the gain -- are averages over rotations, not over
        sample points, which the 600-cell sampling does not space evenly.
    average_chunk : averages per matrix product (bounds the (averages, ``chunk``) CC block held).
        The orientation set is cut into chunks of ``chunk``; the slices of each chunk are computed
        once and correlated with every chunk of averages in turn.  On Dask a task is a run of
        consecutive orientation chunks against all averages (the prepared averages are shipped
        once to every worker), so no slice is computed twice; the running best is merged in
        orientation order and the weighted sums chunk by chunk in the same order as in-process,
        so the result is bitwise the same whichever way (and on however many workers) it runs.
    client : a ``dask.distributed.Client`` or None (in-process).
    worker_threads : torch threads per Dask task (0: leave the worker's setting).
    CCs are computed as chunked matrix products (``chunk`` orientations at a
    time); nothing of size (M, K) is ever held.
    """
    quats = np.asarray(quats, dtype=np.float64)
    if int(chunk) < 1:
        raise ParameterError("orient.chunk", f"must be >= 1, got {chunk}")
    if int(average_chunk) < 1:
        raise ParameterError("orient.average_chunk", f"must be >= 1, got {average_chunk}")
    region = region or fit_region(averages, r_min, r_max, stride)
    if normalise not in NORMALISATIONS:
        raise ParameterError("orient.normalise", f"must be one of {NORMALISATIONS}, got {normalise!r}")
    prep = prepared or prepare_averages(averages, region, normalise, log_floor)
    prof = reference_profile(reference, region, quats)
    m = averages.n_averages
    w_all = np.ones(len(quats)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w_all.shape != (len(quats),) or not np.all(w_all >= 0) or not w_all.sum() > 0:
        raise ParameterError("orient.weights", f"must be ({len(quats)},) non-negative with a positive sum")
    w_all = w_all / w_all.sum()
    edges = list(range(0, m, int(average_chunk))) + [m]
    groups = list(zip(edges[:-1], edges[1:]))
    if client is None:   # one run over every orientation chunk, merged as the Dask runs are
        out = _merge_scans([_scan_orientations(prep, reference, region, quats, prof, w_all, groups, 0, len(quats),
                                               int(chunk), normalise, log_floor, progress=progress)], groups)
    else:
        out = _fit_on_dask(client, prep, groups, reference, region, quats, prof, w_all, int(chunk),
                           normalise, log_floor, int(worker_threads))
        if progress is not None:
            progress(len(quats))
    best_np = np.concatenate([o[0] for o in out])
    arg_np = np.concatenate([o[1] for o in out])
    mean = np.concatenate([o[2] for o in out])
    total2 = np.concatenate([o[3] for o in out])
    std = np.sqrt(np.maximum(total2 - mean**2, 0.0))
    return FitResult(arg_np, quats[arg_np].copy(), best_np, mean, std, gain(best_np, mean),
                     {"n_pixels": int(len(region.flat)), "n_orientations": int(len(quats)),
                      "common_mask": prep.centred is not None})


class _Scan:
    """Running best / argbest over orientation chunks, for some averages."""

    def __init__(self, m: int):
        self.best = torch.full((m,), -np.inf, dtype=torch.float32)
        self.arg = torch.zeros(m, dtype=torch.int64)

    def update(self, cc: torch.Tensor, start: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fold in ``cc`` (m, n) of orientations ``start .. start + n`` with weights ``w`` (n,); returns
        this chunk's weighted sums of CC and CC^2, (m,) float64 each (added up by :func:`_merge_scans`
        chunk by chunk, in one order whatever ran them)."""
        val, idx = cc.max(dim=1)
        better = val > self.best
        self.best = torch.where(better, val, self.best)
        self.arg = torch.where(better, idx + start, self.arg)
        wt = _owned(w)
        cc64 = cc.double()
        return (cc64 @ wt).numpy(), ((cc64 * cc64) @ wt).numpy()


def _orientation_tasks(n_orientations: int, chunk: int, n_tasks: int) -> list[tuple[int, int]]:
    """Runs of consecutive orientation chunks, about equal in size: (start, stop) orientation indices
    on chunk edges (the chunks are those of the in-process scan)."""
    n_chunks = -(-n_orientations // chunk)
    cuts = np.linspace(0, n_chunks, min(max(1, n_tasks), n_chunks) + 1).round().astype(int)
    return [(int(a) * chunk, min(int(b) * chunk, n_orientations)) for a, b in zip(cuts[:-1], cuts[1:])]


#: Dask tasks per worker in the orientation fit: a few, so that a slow worker does not hold up the end
DASK_TASKS_PER_WORKER = 4


def _fit_on_dask(client, prep: PreparedAverages, groups, reference, region, quats, prof, w_all, chunk: int,
                 normalise: str, log_floor: float, threads: int):
    """The orientation scan on Dask, split over orientations (see :func:`fit_orientations`)."""
    from spicompute.execution import gather, n_workers

    shared = client.scatter([prep, reference, region, quats, prof, w_all], broadcast=True, hash=False)
    spans = _orientation_tasks(len(quats), chunk, DASK_TASKS_PER_WORKER * n_workers(client))
    futures = [client.submit(_scan_orientations, *shared, list(groups), start, stop, chunk, normalise,
                             log_floor, threads, pure=False) for start, stop in spans]
    return _merge_scans(gather(client, futures, "orient.scheduler"), groups)  # in orientation order


def _merge_scans(parts: list, groups) -> list[tuple]:
    """Per group of averages: (best CC, best index, weighted mean CC, weighted mean CC^2) from the
    results of :func:`_scan_orientations` over consecutive orientation ranges, in orientation order.
    The best is merged strictly (the first orientation of equal CCs wins) and the weighted sums are
    added chunk by chunk: the same float64 additions in the same order however the range was cut."""
    out = []
    for g, (s, e) in enumerate(groups):
        best = np.full(e - s, -np.inf)
        arg = np.zeros(e - s, np.int64)
        total = np.zeros(e - s)
        total2 = np.zeros(e - s)
        for part in parts:
            b, a, sums, sums2 = part[g]
            better = b > best
            best = np.where(better, b, best)
            arg = np.where(better, a, arg)
            for s1, s2 in zip(sums, sums2):
                total += s1
                total2 += s2
        out.append((best, arg, total, total2))
    return out


def _scan_orientations(prep: PreparedAverages, reference: Reference, region: FitRegion, quats: np.ndarray,
                       profile: np.ndarray, w_all: np.ndarray, groups, start: int, stop: int, chunk: int,
                       normalise: str, log_floor: float, threads: int = 0,
                       progress: Callable[[int], None] | None = None):
    """Orientations ``start .. stop`` against every group of averages (a Dask task, or the whole
    in-process scan): the slices of each chunk computed once, correlated with each group in turn.

    Returns per group (best CC float64, best index, per-chunk weighted CC sums (n_chunks, m),
    per-chunk weighted CC^2 sums (n_chunks, m))."""
    if threads:
        torch.set_num_threads(threads)
    parts = [prep.rows(s, e) for s, e in groups]
    scans = [_Scan(e - s) for s, e in groups]
    sums = [[] for _ in groups]
    sums2 = [[] for _ in groups]
    for c0 in range(start, stop, chunk):
        slices = _slices(reference, region, quats[c0:min(c0 + chunk, stop)], profile, normalise, log_floor)
        w = w_all[c0:min(c0 + chunk, stop)]
        for g, (scan, part) in enumerate(zip(scans, parts)):
            s1, s2 = scan.update(_cc_block(part, slices), c0, w)
            sums[g].append(s1)
            sums2[g].append(s2)
        if progress is not None:
            progress(len(w))
    return [(sc.best.numpy().astype(np.float64), sc.arg.numpy(), np.array(s1), np.array(s2))
            for sc, s1, s2 in zip(scans, sums, sums2)]


def gain(best_cc: np.ndarray, mean_cc: np.ndarray) -> np.ndarray:
    """``best / mean`` CC; NaN where the mean CC is not positive (gain undefined)."""
    best_cc = np.asarray(best_cc, dtype=np.float64)
    mean_cc = np.asarray(mean_cc, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean_cc > 0, best_cc / mean_cc, np.nan)


def refine_orientations(averages: AverageSet, reference: Reference, result: FitResult,
                        quats: np.ndarray, *, r_min: float, r_max: float, stride: int = 1,
                        radius_deg: float, steps: int = 1, iterations: int = 4,
                        pattern: str = "axes",
                        normalise: str = "log", log_floor: float = 0.01,
                        batch: int = 64) -> FitResult:
    """Local search around each average's best orientation.

    Each iteration evaluates candidate rotations around the current best
    (:func:`spicompute.orient.sampling.local_grid`: ``pattern="axes"``, the
    centre and +-radius about each axis, 7 slices; ``"grid"``, a
    ``(2 steps + 1)^3`` grid), keeps the best, and halves the radius.
    Gains keep the global mean CC.  Work: ``M * iterations * S`` slices, in
    batches of ``batch`` averages.
    """
    region = fit_region(averages, r_min, r_max, stride)
    prep = prepare_averages(averages, region, normalise, log_floor)
    prof = reference_profile(reference, region, quats)
    q_best = result.quaternion.copy()
    cc_best = result.best_cc.copy()
    radius = float(radius_deg)
    for _ in range(int(iterations)):
        cand = local_grid(q_best, radius, steps, pattern)  # (M, S, 4)
        if pattern == "axes":
            cand = cand[:, 1:]  # the centre's CC is known
        for s in range(0, averages.n_averages, int(batch)):
            e = min(s + int(batch), averages.n_averages)
            cq = cand[s:e]
            sl = _slices(reference, region, cq.reshape(-1, 4), prof, normalise, log_floor).reshape(e - s, cq.shape[1], -1)
            cc = _cc_per_average(prep, s, e, sl)  # (b, S)
            j = np.argmax(cc, axis=1)
            c = cc[np.arange(e - s), j]
            better = c > cc_best[s:e]
            q_best[s:e][better] = cq[np.arange(e - s), j][better]
            cc_best[s:e] = np.where(better, c, cc_best[s:e])
        radius *= 0.5
    return FitResult(result.best_index, q_best, cc_best, result.mean_cc, result.std_cc,
                     gain(cc_best, result.mean_cc), dict(result.stats, refined=True))


def _cc_per_average(prep: PreparedAverages, s: int, e: int, slices: np.ndarray) -> np.ndarray:
    """Pearson CC of averages s..e with their own candidate slices (b, S, P) -> (b, S)."""
    x = torch.from_numpy(np.ascontiguousarray(slices))
    if prep.centred is not None:  # one shared mask: centre/normalise slices, batched dot products
        xc = x[:, :, torch.from_numpy(prep.common)]
        xc = xc - xc.mean(dim=2, keepdim=True)
        xc = xc / xc.norm(dim=2, keepdim=True).clamp_min(1e-30)
        a = torch.from_numpy(prep.centred[s:e])
        return torch.bmm(xc, a[:, :, None])[:, :, 0].numpy().astype(np.float64)
    a = torch.from_numpy(prep.values[s:e]).double()
    mk = torch.from_numpy(prep.mask[s:e]).double()
    x = x.double()
    n = mk.sum(dim=1)[:, None]
    sa = a.sum(1)[:, None]
    sa2 = (a * a).sum(1)[:, None]
    sas = torch.bmm(x, a[:, :, None])[:, :, 0]
    ss = torch.bmm(x, mk[:, :, None])[:, :, 0]
    ss2 = torch.bmm(x * x, mk[:, :, None])[:, :, 0]
    cov = sas - sa * ss / n
    var = (sa2 - sa**2 / n).clamp_min(0) * (ss2 - ss**2 / n).clamp_min(0)
    return (cov / torch.sqrt(var.clamp_min(1e-60))).numpy()


def scan_sizes(averages: AverageSet, make_reference: Callable[[float], Reference],
               sizes: Iterable[float], quats: np.ndarray, **fit_kwargs) -> tuple[FitResult, np.ndarray, np.ndarray]:
    """Fit at every reference size; per average keep the size with the highest best CC.

    Returns (combined result, size_nm per average (M,), best CC per size (n_sizes, M)).
    """
    sizes = [float(s) for s in sizes]
    if not sizes:
        raise ParameterError("orient.size_scan", "needs at least one size")
    region = fit_region(averages, fit_kwargs["r_min"], fit_kwargs["r_max"], fit_kwargs.get("stride", 1))
    prep = prepare_averages(averages, region, fit_kwargs.get("normalise", "log"),
                            fit_kwargs.get("log_floor", 0.01))
    results = [fit_orientations(averages, make_reference(s), quats, region=region, prepared=prep,
                                **fit_kwargs) for s in sizes]
    table = np.stack([r.best_cc for r in results])
    pick = np.argmax(table, axis=0)
    cols = np.arange(averages.n_averages)

    def take(attr):
        return np.stack([getattr(r, attr) for r in results])[pick, cols]

    combined = FitResult(take("best_index"), np.stack([r.quaternion for r in results])[pick, cols],
                         take("best_cc"), take("mean_cc"), take("std_cc"), take("gain"),
                         dict(results[0].stats, sizes=sizes))
    return combined, np.asarray(sizes)[pick], table


def best_slices(averages: AverageSet, reference: Reference, quats: np.ndarray, batch: int = 64) -> np.ndarray:
    """Reference slices on the full L x L grid at each average's orientation, (M, L, L) float32."""
    q = averages.q_grid().reshape(-1, 3)
    out = np.empty((len(quats), averages.size, averages.size), dtype=np.float32)
    for s in range(0, len(quats), batch):
        sl = reference.evaluate(model_coordinates(q, quats[s:s + batch]))
        out[s:s + batch] = sl.reshape(-1, averages.size, averages.size)
    return out
