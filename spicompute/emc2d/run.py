"""Driving 2D EMC: initialisation, β schedule, iterations, bootstrap runs,
checkpoints and Dask execution.

The science of one iteration is in :mod:`spicompute.emc2d.steps`; this module
decides which frames go into which run, splits them into shards (one per Dask
worker, or one in-process), sums the shards' partial sums, normalises the
fluence scales and keeps a resumable checkpoint per run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import scipy.sparse as sp
from scipy.ndimage import gaussian_filter
from threadpoolctl import threadpool_limits

from spicompute.emc2d.background import BackgroundEstimate, bin_matrix, estimate_background, refine_background
from spicompute.emc2d.steps import PartialSums, RotationGrid, Shard, build_rotation_grid, m_step, shard_step
from spicompute.errors import ParameterError
from spicompute.execution import resolve_device, worker_threads
from spicompute.io.frames import FrameSet
from spicompute.io.provenance import atomic_path
from spicompute.params import choice, in_range, integer, positive, validate_scheduler, with_defaults

log = logging.getLogger("spicompute.classify2d")

CHECKPOINT_VERSION = 4  # 2: max_iter in the key, beta ramp, corrected M-step; 3: E-step candidates;
#                        4: compact pruned E-step, sparse numerator below 0.3 % (same science, other float sums)
#                        (the EMC code itself is in every key since 2026-12-05: kernel_digest)


@functools.lru_cache(maxsize=1)
def kernel_digest() -> str:
    """sha1 of the EMC package's source (``spicompute/emc2d/*.py``), part of every checkpoint's key.

    DVC re-runs classify2d when these files change, and the run would otherwise resume from the
    checkpoints of the previous code: averages of the old code under the new code's name whenever a
    change moves the float sums (a new summation order, a new threshold).  With the digest in the key
    a resumed run is always what the current code computes; any edit of the package (a comment
    included) costs one recomputation.  ``CHECKPOINT_VERSION`` remains for the file format.
    """
    h = hashlib.sha1()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@dataclass
class EMCConfig:
    """Parameters of 2D EMC (section ``classify2d`` of params.yaml)."""

    n_models: int | str = 30      # K models per run, or "auto": the run's frames / frames_per_class
    frames_per_class: float = 80.0  # n_models auto: target frames per class (docs/low_photon.md)
    n_rot: int | str = 36         # R in-plane rotations, or "auto": 2 D q_max (arc at q_max = half a speckle)
    friedel: bool = False         # Friedel symmetry: n_rot over 180 deg, centrosymmetric models (Dragonfly)
    particle_size_nm: float | str = "auto"  # D for n_rot auto: nm, or auto (first minimum of the radial profile)
    n_runs: int = 3               # B bootstrap runs
    subset_fraction: float = 0.8  # fraction of the (usable) frames in each run
    seed: int = 0
    max_iter: int = 20
    min_iter: int = 8
    tol: float = 1e-3             # stop when relative model change < tol (after min_iter)
    beta: float | str = "auto"    # likelihood temperature; "auto": beta_photons / photons
    beta_photons: float = 100.0   # auto beta: frames of this many photons start at beta 1
    beta_scope: str = "frame"     # auto beta per frame (photons_n) | one for the run (its median photons)
    beta_schedule: str = "ramp"   # ramp: geometric from beta0 to beta_max over beta_ramp of max_iter
    beta_ramp: float = 0.6        #   (then held: the convergence stop may fire only once beta is final)
    beta_jump: float = 2.0        # dragonfly: beta *= beta_jump every beta_period iterations ...
    beta_period: int = 5
    beta_max: float = 1.0         # ... up to beta_max
    reseed_empty: bool = True     # re-seed models with < 1 frame of occupancy in the first beta_ramp of the run
    update_scale: bool = True     # per-frame fluence scale phi_n
    grid_step_nm: float | None = None   # model grid step (rad/nm); None: detector dq_nm
    q_max_nm: float | None = None       # use only pixels with |q_perp| <= q_max_nm
    use_correction: bool = True   # multiply models by the pixel solid-angle x polarisation
    init_smooth_px: float = 2.0   # Gaussian smoothing of the frames that seed the models
    block_frames: int = 4096      # frames per E/M block (memory bound)
    engine: str = "sparse"        # sparse | dense
    prob_min: float = 1e-6        # posterior probabilities below this are dropped (and skipped in the M-step)
    prune_mass: float = 1e-6      # E-step pruning: skip a frame's models that held less posterior mass (0: off)
    prune_refresh: int = 4        # ... with a full E-step every this many iterations
    background: str = "refined"   # refined: a fluence-independent background per pixel, estimated over the data
    #                               set, then re-estimated within each run's classes once beta is final (right per
    #                               radial bin; docs/classify2d.md) | auto: the data-set estimate only | none
    merge_only: bool = True       # merge (not fit) the detector's merge-only pixels (Dragonfly mask 1); false: drop
    device: str = "auto"          # auto | cpu | cuda
    scheduler: str = ""           # "" in-process | "local:N" | scheduler address
    n_shards: int = 0             # frame shards for Dask (0: one per worker)
    min_photons: float | str = 0.0  # hit-strength cut: frames with fewer photons on the fitted pixels are
    #                               not classified (a beam halo's weak hits sort by fluence; docs/low_photon.md);
    #                               auto: half the median photons per frame
    stream: bool | str = "auto"   # read frames from the file block by block each iteration (bounded memory);
    #                               auto: when the file holds more than STREAM_AUTO_FRAMES frames

    @classmethod
    def from_params(cls, params: dict) -> "EMCConfig":
        """Validated config from a params section (unknown keys are an error)."""
        with_defaults("classify2d", params, cls.__dataclass_fields__)
        cfg = cls(**params)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        p = "classify2d."
        if self.n_models != "auto":
            if isinstance(self.n_models, str):
                raise ParameterError(p + "n_models", f"must be an integer >= 1 or auto, got {self.n_models!r}")
            self.n_models = positive(p + "n_models", self.n_models, integer=True)
        self.frames_per_class = positive(p + "frames_per_class", self.frames_per_class)
        if self.n_rot != "auto":
            try:
                n_rot = int(self.n_rot)
            except (TypeError, ValueError):
                raise ParameterError(p + "n_rot", f"must be an integer >= 1 or auto, got {self.n_rot!r}")
            if isinstance(self.n_rot, bool) or n_rot < 1 or n_rot != self.n_rot:
                raise ParameterError(p + "n_rot", f"must be an integer >= 1 or auto, got {self.n_rot!r}")
        if self.particle_size_nm != "auto":
            self.particle_size_nm = positive(p + "particle_size_nm", self.particle_size_nm)
        self.n_runs = positive(p + "n_runs", self.n_runs, integer=True)
        self.subset_fraction = in_range(p + "subset_fraction", self.subset_fraction, 0, 1,
                                        low_open=True)
        self.max_iter = positive(p + "max_iter", self.max_iter, integer=True)
        self.min_iter = positive(p + "min_iter", self.min_iter, integer=True, allow_zero=True)
        self.tol = positive(p + "tol", self.tol, allow_zero=True)
        if self.beta != "auto":
            self.beta = positive(p + "beta", self.beta)
        self.beta_photons = positive(p + "beta_photons", self.beta_photons)
        choice(p + "beta_scope", self.beta_scope, {"frame", "dataset"})
        self.beta_jump = positive(p + "beta_jump", self.beta_jump)
        self.beta_period = positive(p + "beta_period", self.beta_period, integer=True)
        self.beta_max = positive(p + "beta_max", self.beta_max)
        choice(p + "beta_schedule", self.beta_schedule, {"ramp", "dragonfly"})
        self.beta_ramp = in_range(p + "beta_ramp", self.beta_ramp, 0, 1, low_open=True)
        if not isinstance(self.reseed_empty, bool):
            raise ParameterError(p + "reseed_empty", f"must be true or false, got {self.reseed_empty!r}")
        if self.grid_step_nm is not None:
            self.grid_step_nm = positive(p + "grid_step_nm", self.grid_step_nm)
        if self.q_max_nm is not None:
            self.q_max_nm = positive(p + "q_max_nm", self.q_max_nm)
        self.init_smooth_px = positive(p + "init_smooth_px", self.init_smooth_px, allow_zero=True)
        self.block_frames = positive(p + "block_frames", self.block_frames, integer=True)
        choice(p + "engine", self.engine, {"sparse", "dense"})
        choice(p + "background", self.background, {"auto", "refined", "none"})
        self.prob_min = in_range(p + "prob_min", self.prob_min, 0, 1e-2)
        self.prune_mass = in_range(p + "prune_mass", self.prune_mass, 0, 1e-2)
        self.prune_refresh = positive(p + "prune_refresh", self.prune_refresh, integer=True)
        choice(p + "device", self.device, {"auto", "cpu", "cuda"})
        self.n_shards = positive(p + "n_shards", self.n_shards, integer=True, allow_zero=True)
        self.seed = integer(p + "seed", self.seed, minimum=0)
        if self.min_photons != "auto":
            self.min_photons = positive(p + "min_photons", self.min_photons, allow_zero=True)
        for name in ("update_scale", "use_correction", "friedel", "merge_only"):  # "false" (a string) must not count as true
            if not isinstance(getattr(self, name), bool):
                raise ParameterError(p + name, f"must be true or false, got {getattr(self, name)!r}")
        self.scheduler = validate_scheduler(p + "scheduler", self.scheduler)
        if self.stream not in (True, False, "auto"):
            raise ParameterError(p + "stream", f"must be true, false or auto, got {self.stream!r}")
        if self.stream is True and self.engine == "dense":
            raise ParameterError(p + "engine", "the dense engine needs the frames in memory (stream: false)")

    def models_for(self, n_frames: int) -> int:
        """K for a run of ``n_frames`` frames: the given ``n_models``, or for ``auto``
        ``round(n_frames / frames_per_class)``, at least 2 and at most ``n_frames``."""
        if self.n_models != "auto":
            return int(self.n_models)
        return int(min(max(2, round(n_frames / self.frames_per_class)), n_frames))

    def trajectory_key(self) -> dict:
        """Parameters that determine the iterates (not where to run).

        ``max_iter`` is part of it: the beta ramp spans a share of it, and a
        checkpoint must never be used past the requested end.
        """
        skip = {"min_iter", "tol", "scheduler", "n_shards", "block_frames", "device", "engine", "stream"}
        if self.beta_scope == "frame":   # the behaviour before the parameter existed: old checkpoints stay valid
            skip.add("beta_scope")
        if self.min_photons == 0:   # likewise
            skip.add("min_photons")
        return {k: v for k, v in asdict(self).items() if k not in skip}


def beta_schedule(beta0: np.ndarray, iteration: int, cfg: EMCConfig) -> np.ndarray:
    """Per-frame β at ``iteration`` (0-based).

    ``ramp`` (default): geometric from ``beta0`` to ``beta_max``, reached at
    iteration ``ceil(beta_ramp * max_iter) - 1`` and held after, so every run
    ends at the final temperature with iterations to converge there.
    ``dragonfly``: ``min(beta_max, beta0 * jump^(it // period))``, Dragonfly's rule.
    """
    if cfg.beta_schedule == "dragonfly":
        factor = cfg.beta_jump ** (iteration // cfg.beta_period)
        return np.minimum(cfg.beta_max, beta0 * factor)
    ramp_end = max(1, int(np.ceil(cfg.beta_ramp * cfg.max_iter)) - 1)
    frac = min(1.0, iteration / ramp_end)
    start = np.minimum(beta0, cfg.beta_max)
    return start * (cfg.beta_max / start) ** frac


def beta_is_final(iteration: int, cfg: EMCConfig, beta0: np.ndarray) -> bool:
    """Whether every frame's β has reached ``beta_max`` at ``iteration`` (0-based)."""
    return bool(np.all(beta_schedule(beta0, iteration, cfg) >= cfg.beta_max * (1 - 1e-9)))


def reseed_until(cfg: EMCConfig) -> int:
    """Iterations (1-based, exclusive) during which empty models are re-seeded: the β-ramp part
    of the run (``beta_ramp * max_iter``), so the last iterations converge undisturbed."""
    return max(1, int(np.ceil(cfg.beta_ramp * cfg.max_iter)))


def reseed_empty_models(models: np.ndarray, occupancy: np.ndarray, rng: np.random.Generator,
                        min_occupancy: float = 1.0) -> list[int]:
    """Replace models holding < ``min_occupancy`` frames by perturbed copies of the fullest ones.

    Splitting the most occupied class (x (1 +- 5 %) smooth multiplicative noise)
    puts the empty model where the data are; EMC then separates the two halves.
    Returns the re-seeded model indices.  ``models`` (K, G) is changed in place.
    """
    empty = np.flatnonzero(occupancy < min_occupancy)
    if empty.size == 0 or empty.size == len(occupancy):
        return []
    donors = np.argsort(-occupancy)
    for i, k in enumerate(empty):
        src = donors[i % (len(occupancy) - empty.size)]
        models[k] = models[src] * (1.0 + 0.05 * rng.standard_normal(models.shape[1]))
        models[k] = np.maximum(models[k], 0.0)
    return empty.tolist()


def initial_beta(photons: np.ndarray, cfg: EMCConfig) -> np.ndarray:
    """Starting β per frame: a number, or ``auto`` = min(1, beta_photons / photons_n).

    Log-likelihood differences grow with the number of photons; dividing by
    the photon count keeps the first posteriors broad (no frame locks onto
    a random model), the schedule then sharpens them.
    """
    if cfg.beta == "auto":
        if cfg.beta_scope == "dataset":
            typical = float(np.median(photons)) if len(photons) else 1.0
            return np.full(photons.shape, min(1.0, cfg.beta_photons / max(typical, 1.0)))
        return np.minimum(1.0, cfg.beta_photons / np.maximum(photons, 1.0))
    return np.full(photons.shape, float(cfg.beta))


def initial_models(grid: RotationGrid, counts: sp.csr_matrix, photons: np.ndarray,
                   n_models: int, rng: np.random.Generator, smooth_px: float = 2.0
                   ) -> np.ndarray:
    """K starting models (K, G) float32 from K random frames (seeded).

    Each model is half the rotation-averaged mean frame (a smooth, radially
    symmetric base) and half one random frame placed at rotation 0, smoothed
    by a Gaussian of ``smooth_px`` grid points and scaled to unit fluence;
    grid points the frame does not cover take the base value.
    """
    R, P, L = grid.n_rot, grid.n_pix, grid.size
    mean_photons = max(float(photons.mean()), 1e-12)
    streamed = not sp.issparse(counts)   # a StreamCounts (spicompute.emc2d.stream)
    # column sums of integer counts in float64 are exact: the same whatever the block order
    col = counts.column_sums() if streamed else np.asarray(counts.sum(axis=0, dtype=np.float64))
    mean_frame = col.reshape(P) / counts.shape[0] / mean_photons
    base_num = grid.ST @ np.repeat(mean_frame / grid.corr, R)  # rows p*R + r; plain weights  # (G,)
    base_den = grid.colsum.sum(axis=0)
    base = np.divide(base_num, base_den, out=np.zeros_like(base_num), where=base_den > 0)
    pick = np.sort(rng.choice(counts.shape[0], size=n_models, replace=False))
    picked = counts.dense_rows(pick) if streamed else counts[pick].toarray().astype(np.float64)
    frames = picked / np.maximum(photons[pick], 1)[:, None]
    S0T = grid.S[0::R].T.tocsr()                                     # (G, P), rotation 0
    placed = np.asarray(S0T @ (frames / grid.corr[None]).T).T        # (K, G)
    cover = grid.colsum[0]
    seeded = np.where(cover > 0, placed / np.where(cover > 0, cover, 1), base)
    if smooth_px > 0:
        seeded = gaussian_filter(seeded.reshape(-1, L, L), (0, smooth_px, smooth_px)
                                 ).reshape(n_models, -1)
    models = 0.5 * base[None] + 0.5 * seeded
    return (models * mean_photons).astype(np.float32)


def relative_change(new: np.ndarray, old: np.ndarray) -> float:
    """RMS(new - old) / RMS(old) over all models."""
    den = float(np.sqrt(np.mean(old.astype(np.float64) ** 2)))
    return float(np.sqrt(np.mean((new.astype(np.float64) - old) ** 2)) / max(den, 1e-30))


def data_digest(counts: sp.csr_matrix) -> str:
    """Short hash of a CSR frame matrix (identifies the data of a checkpoint)."""
    h = hashlib.sha1()
    for arr in (counts.indptr, counts.indices, counts.data):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(str(counts.shape).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- execution
class ShardExecutor:
    """Runs :func:`shard_step` on frame shards, in-process or on a Dask client."""

    def __init__(self, client=None, n_shards: int = 0, device: str = "cpu",
                 engine: str = "sparse", worker_threads: int = 0, prob_min: float = 0.0):
        self.client = client
        self.prob_min = float(prob_min)
        self.worker_threads = worker_threads
        self.device = device
        self.engine = engine
        if client is not None and n_shards <= 0:
            n_shards = max(1, len(client.scheduler_info().get("workers", {})))
        self.n_shards = max(1, n_shards) if client is not None else max(1, n_shards or 1)
        self._remote = None

    def load(self, counts: sp.csr_matrix, grid: RotationGrid, block_frames: int) -> list[int]:
        """Split frames into contiguous shards; returns shard boundaries."""
        n = counts.shape[0]
        bounds = np.linspace(0, n, self.n_shards + 1).round().astype(int)
        self.bounds = bounds
        if sp.issparse(counts):
            shards = [Shard.from_counts(counts[a:b], block_frames, grid.fit)
                      for a, b in zip(bounds[:-1], bounds[1:])]
        else:  # StreamCounts: shards that read their frames from the file
            shards = counts.shards(bounds, block_frames, grid.fit)
        if self.client is None:
            self.shards, self.grid = shards, grid
        else:
            self.shards = self.client.scatter(shards)
            self.grid = self.client.scatter(grid, broadcast=True)
        return bounds

    def step(self, models: np.ndarray, phi: np.ndarray, beta: np.ndarray,
             update_scale: bool, background: np.ndarray | None = None,
             candidates: np.ndarray | None = None, prune_mass: float = 0.0) -> PartialSums:
        """One iteration over all shards; ``candidates`` (n, K) prunes the E-step
        (see :func:`spicompute.emc2d.shard_step`)."""
        b = self.bounds
        args = [(phi[lo:hi], beta[lo:hi], None if candidates is None else candidates[lo:hi])
                for lo, hi in zip(b[:-1], b[1:])]
        if self.client is None:
            parts = [shard_step(s, self.grid, models, ph, be, update_scale, self.device,
                                self.engine, self.prob_min, background, ca, prune_mass)
                     for s, (ph, be, ca) in zip(self.shards, args)]
        else:
            from spicompute.execution import gather

            mfut = self.client.scatter(models, broadcast=True)
            futures = [self.client.submit(_worker_shard_step, s, self.grid, mfut, ph, be,
                                          update_scale, self.engine, self.worker_threads,
                                          self.prob_min, background, ca, prune_mass, pure=False)
                       for s, (ph, be, ca) in zip(self.shards, args)]
            parts = gather(self.client, futures, "classify2d.scheduler")
        return PartialSums.combine(parts)


def _worker_shard_step(shard, grid, models, phi, beta, update_scale, engine, threads,
                       prob_min=0.0, background=None, candidates=None, prune_mass=0.0):
    """:func:`shard_step` on a Dask worker, with ``threads`` torch threads (0: as is)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return shard_step(shard, grid, models, phi, beta, update_scale, "cpu", engine, prob_min,
                      background, candidates, prune_mass)


# ----------------------------------------------------------------------------- one run
@dataclass
class RunState:
    """Resumable state of one run after ``iteration`` completed iterations."""

    iteration: int
    models: np.ndarray           # (K, G) float32
    weight: np.ndarray           # (K, G) float64 coverage of the last M-step
    phi: np.ndarray              # (n,) fluence scales
    occupancy: np.ndarray        # (K,) from the last E-step
    best: np.ndarray             # (n,) best column j = r*K + k of the last E-step
    pmax: np.ndarray             # (n,)
    history: list = field(default_factory=list)
    background: np.ndarray | None = None   # (P,) expected background photons per frame, or None
    candidates: np.ndarray | None = None   # (n, K) bool: models with posterior mass >= prune_mass

    def save(self, path: Path, key: str) -> None:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
            h5.attrs["key"] = key
            h5.attrs["version"] = CHECKPOINT_VERSION
            h5.attrs["iteration"] = self.iteration
            h5.attrs["history"] = json.dumps(self.history)
            for name in ("models", "weight", "phi", "occupancy", "best", "pmax"):
                h5.create_dataset(name, data=getattr(self, name))
            if self.background is not None:
                h5.create_dataset("background", data=self.background)
            if self.candidates is not None:   # so that a resumed run prunes as the uninterrupted one
                h5.create_dataset("candidates", data=self.candidates, compression="gzip")

    @classmethod
    def load(cls, path: Path, key: str) -> "RunState | None":
        """The checkpoint at ``path`` if it exists and was made with ``key``."""
        if not path.exists():
            return None
        try:
            with h5py.File(path, "r") as h5:
                if h5.attrs.get("key") != key or h5.attrs.get("version") != CHECKPOINT_VERSION:
                    log.warning("checkpoint %s is for other data, parameters or EMC code: starting afresh",
                                path)
                    return None
                data = {n: h5[n][()] for n in ("models", "weight", "phi", "occupancy",
                                               "best", "pmax")}
                data["background"] = h5["background"][()] if "background" in h5 else None
                data["candidates"] = h5["candidates"][()].astype(bool) if "candidates" in h5 else None
                return cls(iteration=int(h5.attrs["iteration"]),
                           history=json.loads(h5.attrs["history"]), **data)
        except (OSError, KeyError, ValueError) as exc:
            log.warning("unreadable checkpoint %s (%s): starting afresh", path, exc)
            return None


def run_emc(counts: sp.csr_matrix, grid: RotationGrid, cfg: EMCConfig, init_models: np.ndarray,
            *, executor: ShardExecutor | None = None, checkpoint: Path | None = None,
            key: str = "", on_iteration: Callable[[dict], None] | None = None,
            run: int = 0, background: BackgroundEstimate | None = None) -> RunState:
    """Iterate 2D EMC on one set of frames until convergence or ``max_iter``.

    Parameters
    ----------
    counts : csr (n, P) photon counts on the grid's pixels (no empty frames).
    init_models : (K, G) starting models.
    checkpoint : file of this run's state; resumed from when present and
        made with the same ``key``, rewritten (atomically) after each iteration.
    on_iteration : called with each iteration's metrics (also those replayed
        from a checkpoint, flagged ``resumed``).
    background : the expected background per pixel
        (:func:`spicompute.emc2d.background.estimate_background` on the grid's
        pixels); None: no background term.
    """
    executor = executor or ShardExecutor(device=resolve_device(cfg.device, "classify2d.device"), engine=cfg.engine,
                                         prob_min=cfg.prob_min)
    if sp.issparse(counts):
        fitted = counts if grid.fit is None else counts[:, np.flatnonzero(grid.fit)]
        photons = np.asarray(fitted.sum(axis=1), dtype=np.float64).reshape(-1)
    else:  # StreamCounts: totals (on the fitted pixels) from the pass that chose the frames
        photons = np.asarray(counts.photons, dtype=np.float64)
    if np.any(photons <= 0):
        raise ValueError("run_emc needs frames with at least one photon")
    n = counts.shape[0]
    beta0 = initial_beta(photons, cfg)
    state = RunState.load(checkpoint, key) if checkpoint is not None else None
    if state is not None:
        log.info("run %d: resuming after iteration %d", run, state.iteration)
        for rec in state.history:
            if on_iteration:
                on_iteration({**rec, "resumed": True})
    else:
        K = init_models.shape[0]
        phi0 = photons / photons.mean() if cfg.update_scale else np.ones(n)
        state = RunState(iteration=0, models=np.asarray(init_models, np.float32),
                         weight=np.zeros(init_models.shape), phi=phi0, occupancy=np.zeros(K),
                         best=np.full(n, -1, np.int64), pmax=np.full(n, np.nan),
                         background=None if background is None else background.per_pixel.copy())
    if _done(state, cfg):
        return state
    executor.load(counts, grid, cfg.block_frames)
    refine = None
    if background is not None and cfg.background == "refined":
        def refine(classes: np.ndarray) -> BackgroundEstimate:
            per_frame = counts_in_bins(counts, bin_matrix(background.pixel_bin, len(background.per_bin)))
            return refine_background(per_frame, classes, background)
    with threadpool_limits(1, user_api="blas"):   # numpy BLAS beside torch threads: contention
        return _iterate(state, executor, grid, cfg, beta0, n, checkpoint, key, on_iteration, run, refine)


def counts_in_bins(counts, bins: sp.csr_matrix) -> np.ndarray:
    """Photons of each frame (N, n_bins) in the pixel groups of ``bins`` (P, n_bins), from a CSR
    matrix or a run's frames on file (:class:`spicompute.emc2d.stream.StreamCounts`)."""
    if sp.issparse(counts):
        return np.asarray((counts @ bins).todense(), np.float64)
    return counts.project(bins)


def _iterate(state: RunState, executor: ShardExecutor, grid: RotationGrid, cfg: EMCConfig,
             beta0: np.ndarray, n: int, checkpoint: Path | None, key: str,
             on_iteration: Callable[[dict], None] | None, run: int,
             refine: Callable[[np.ndarray], BackgroundEstimate] | None = None) -> RunState:
    """Iterations until :func:`_done`.  ``refine`` (classes (n,) -> estimate): the background is
    re-estimated once within the run's classes, after the first iteration at the final β (the
    classes have formed) with at least one iteration left for the models to follow."""
    while not _done(state, cfg):
        it = state.iteration
        t0 = time.perf_counter()
        beta = beta_schedule(beta0, it, cfg)
        candidates = state.candidates if use_pruning(it, cfg, beta0) else None
        total = executor.step(state.models, state.phi, beta, cfg.update_scale, state.background,
                              candidates, cfg.prune_mass)
        models, weight = m_step(grid, total)
        phi = total.phi
        if cfg.update_scale:
            scale = float(phi.mean())
            phi = phi / scale
            models *= scale
        change = relative_change(models, state.models)
        occ = total.occupancy
        reseeded = []
        if cfg.reseed_empty and it + 1 < reseed_until(cfg):
            rng = np.random.default_rng([cfg.seed, run, it])
            reseeded = reseed_empty_models(models, occ, rng)
        rec = {
            "run": run, "iteration": it + 1, "beta_mean": float(beta.mean()),
            "loglik": total.loglik / n, "mutual_info": total.mutual_info / n,
            "model_change": change, "occupancy_min": float(occ.min()),
            "occupancy_median": float(np.median(occ)), "occupancy_max": float(occ.max()),
            "empty_models": int((occ < 1.0).sum()), "posterior_max_mean": float(total.pmax.mean()),
            "reseeded": len(reseeded), "beta_final": beta_is_final(it, cfg, beta0),
            "e_step_share": total.pairs / n,
        }
        candidates = None if reseeded else total.candidates
        background = state.background
        if refine is not None and rec["beta_final"] and it + 1 < cfg.max_iter and \
                not any("background_refined" in r for r in state.history):
            refined = refine(np.where(total.best >= 0, total.best % models.shape[0], -1))
            background = refined.per_pixel.copy()
            # the likelihoods change with the background: every pair is recomputed next
            candidates = None
            rec["background_refined"] = refined.photons_per_frame
            log.info("run %d: background refined within the classes: %.1f photons per frame (was %.1f)",
                     run, refined.photons_per_frame, float(state.background.sum()))
        rec["seconds"] = time.perf_counter() - t0
        state = RunState(iteration=it + 1, models=models.astype(np.float32), weight=weight,
                         phi=phi, occupancy=occ, best=total.best, pmax=total.pmax,
                         history=state.history + [rec], background=background,
                         candidates=candidates)
        log.info("run %d iteration %d: loglik %.4g  MI %.3f  change %.2e  beta %.3g  %.1fs",
                 run, it + 1, rec["loglik"], rec["mutual_info"], change, rec["beta_mean"],
                 rec["seconds"])
        if checkpoint is not None:
            state.save(checkpoint, key)
        if on_iteration:
            on_iteration(rec)
    return state


def use_pruning(iteration: int, cfg: EMCConfig, beta0: np.ndarray) -> bool:
    """Whether iteration ``iteration`` (0-based) prunes its E-step to each frame's candidate
    models (those with posterior mass >= ``prune_mass`` at the previous iteration).

    Only while β does not decrease: with the same models, a model's posterior mass
    relative to the best one, exp(β (L_k - L_max)), can only shrink as β rises, so a
    model below ``prune_mass`` stays below it.  The models do change, so every
    ``prune_refresh``-th iteration (and the first) recomputes every pair and a model that
    has become likely for a frame is found again.
    """
    if cfg.prune_mass <= 0 or iteration < 1 or iteration % cfg.prune_refresh == 0:
        return False
    return bool(np.all(beta_schedule(beta0, iteration, cfg)
                       >= beta_schedule(beta0, iteration - 1, cfg)))


def _done(state: RunState, cfg: EMCConfig) -> bool:
    """Stop at max_iter, or on convergence -- but only at the final β (never mid-schedule)."""
    if state.iteration >= cfg.max_iter:
        return True
    if state.history and "background_refined" in state.history[-1]:
        return False   # the models have not yet seen the refined background
    if state.history and state.iteration >= cfg.min_iter and state.history[-1].get("beta_final", False):
        return state.history[-1]["model_change"] < cfg.tol
    return False


# ----------------------------------------------------------------------------- bootstrap
@dataclass
class BootstrapResult:
    """All runs: models (B, K, L, L), frame assignments, metrics."""

    grid: RotationGrid
    models: np.ndarray          # (B, K, L, L) float32
    weight: np.ndarray          # (B, K, L, L) float32
    occupancy: np.ndarray       # (B, K) float64
    frames: list                # per run: dict(index, best_model, rotation_deg, pmax, scale)
    excluded: np.ndarray        # positions of frames excluded (no photons on used pixels, or < min_photons)
    histories: list             # per run: list of iteration records
    resolved: dict = field(default_factory=dict)   # values resolved from the data (n_rot, size)
    backgrounds: list = field(default_factory=list)   # per run: the final background (P,) on grid.pixels, or None


DEFAULT_N_ROT = 36
STREAM_AUTO_FRAMES = 200_000   # stream: auto streams files with more frames than this
SIZE_FRAMES = 50_000           # streamed n_rot auto: particle size from this many frames


def use_stream(cfg: EMCConfig, n_frames: int) -> bool:
    """Whether to stream the frames from the file (``stream`` true, or auto and a large file)."""
    return cfg.stream is True or (cfg.stream == "auto" and n_frames > STREAM_AUTO_FRAMES
                                  and cfg.engine == "sparse")


def resolve_n_rot(frames: FrameSet, cfg: EMCConfig) -> tuple[int, dict]:
    """The rotation count to use and how it was chosen.

    ``n_rot: auto`` -> :func:`spicompute.emc2d.particle_size.auto_n_rot` with the
    particle size (given, or estimated from the frames' radial profile) and
    the largest transverse |q| of the used pixels.  When no size can be
    estimated, ``DEFAULT_N_ROT`` with a warning.
    """
    from spicompute.emc2d.particle_size import auto_n_rot, estimate_particle_size_nm

    radius = np.linalg.norm(frames.detector.q_perp, axis=1)[frames.detector.mask]
    q_max = float(radius.max()) if radius.size else 0.0
    if cfg.q_max_nm:
        q_max = min(q_max, float(cfg.q_max_nm))
    if cfg.n_rot != "auto":
        return int(cfg.n_rot), {"n_rot": int(cfg.n_rot), "n_rot_source": "given",
                                "q_max_used_nm": q_max}
    if cfg.particle_size_nm == "auto":
        if isinstance(frames, FrameSet):
            size = estimate_particle_size_nm(frames.counts, frames.detector)
            source = "sphere fit of the radial profile"
        else:  # a FrameFile: the profile of the first SIZE_FRAMES frames
            size = estimate_particle_size_nm(frames.head(SIZE_FRAMES).counts, frames.detector)
            source = f"sphere fit of the radial profile of the first {min(SIZE_FRAMES, frames.n_frames)} frames"
    else:
        size, source = float(cfg.particle_size_nm), "given"
    if size is None:
        log.warning("classify2d: no particle size found in the radial profile; n_rot %d",
                    DEFAULT_N_ROT)
        return DEFAULT_N_ROT, {"n_rot": DEFAULT_N_ROT, "n_rot_source": "fallback (no size)",
                               "particle_size_nm": None, "q_max_used_nm": q_max}
    n_rot = auto_n_rot(size, q_max, half_turn=cfg.friedel)
    log.info("classify2d: particle size %.1f nm (%s), q_max %.3f rad/nm -> n_rot %d",
             size, source, q_max, n_rot)
    return n_rot, {"n_rot": n_rot, "n_rot_source": "auto", "particle_size_nm": float(size),
                   "particle_size_source": source, "q_max_used_nm": q_max}


def resolve_min_photons(value, photons: np.ndarray) -> float:
    """The hit-strength cut in photons: a number as given, or ``auto``: half the median of
    the frames' photons (frames with none left out). Measured on the landscape matrix
    (docs/low_photon.md): a beam halo's weak hits fall below it (24 % of the frames of a
    set with a 30 % halo a decade down), while a log-uniform fluence over a factor 3.3
    without a halo loses 3-4 % of its frames."""
    if value != "auto":
        return float(value)
    lit = photons[photons > 0]
    return 0.5 * float(np.median(lit)) if lit.size else 0.0


def usable_counts(frames: FrameSet, grid: RotationGrid) -> tuple[sp.csr_matrix, np.ndarray]:
    """Counts on the grid's pixels (float32 CSR) and the frames' photon totals on the
    fitted pixels (a frame with photons on merge-only pixels alone cannot be placed)."""
    counts = sp.csr_matrix(frames.counts[:, grid.pixels], dtype=np.float32)
    fitted = counts if grid.fit is None else counts[:, np.flatnonzero(grid.fit)]
    photons = np.asarray(fitted.sum(axis=1), dtype=np.float64).reshape(-1)
    return counts, photons


def run_bootstrap(frames: FrameSet, cfg: EMCConfig, *, client=None,
                  checkpoint_dir: str | Path | None = None,
                  on_iteration: Callable[[dict], None] | None = None) -> BootstrapResult:
    """B bootstrap runs of 2D EMC, each on a seeded random subset of the frames.

    Frames without any photon on the used pixels (empty, or all their
    photons on masked / cropped pixels) are excluded with a warning and
    reported in ``excluded``.  Run b draws ``round(subset_fraction * N_usable)``
    frames with ``numpy.random.default_rng([seed, b])``; the same generator
    then picks the frames that seed the models.
    """
    cfg.validate()
    n_rot, resolved = resolve_n_rot(frames, cfg)
    grid = build_rotation_grid(frames.detector, n_rot, grid_step_nm=cfg.grid_step_nm,
                               q_max_nm=cfg.q_max_nm, use_correction=cfg.use_correction,
                               friedel=cfg.friedel, merge_only=cfg.merge_only)
    streamed = not isinstance(frames, FrameSet)   # a FrameFile (spicompute.io.stream)
    if streamed:
        from spicompute.emc2d.stream import StreamCounts, stream_digest, used_photons

        fitted = grid.pixels if grid.fit is None else grid.pixels[grid.fit]
        counts, photons = None, used_photons(frames, fitted)
    else:
        counts, photons = usable_counts(frames, grid)
    min_photons = resolve_min_photons(cfg.min_photons, photons)
    weak = (photons > 0) & (photons < min_photons)
    usable = np.flatnonzero((photons > 0) & ~weak)
    excluded = np.flatnonzero((photons <= 0) | weak)
    if usable.size == 0:
        raise ParameterError("classify2d.min_photons",
                             f"no frame has >= {min_photons:g} photons on the used pixels "
                             f"(the most any frame has is {photons.max(initial=0):g})")
    n_sub = int(round(cfg.subset_fraction * usable.size))
    K = cfg.models_for(n_sub)
    resolved.update(n_models=K, n_models_source="given" if cfg.n_models != "auto" else
                    f"auto ({n_sub} frames per run / frames_per_class {cfg.frames_per_class:g})")
    if n_sub < K:
        raise ParameterError("classify2d.n_models",
                             f"{K} models need at least as many frames per run, but "
                             f"a run has {n_sub} (of {usable.size} usable frames)")
    if (photons <= 0).any():
        log.warning("%d of %d frames have no photon on the used pixels: excluded",
                    int((photons <= 0).sum()), frames.n_frames)
    if weak.any():
        log.info("classify2d: %d of %d frames have fewer than min_photons %g photons: not classified",
                 int(weak.sum()), frames.n_frames, min_photons)
    resolved.update(min_photons=float(min_photons), n_weak_frames=int(weak.sum()))
    if cfg.min_photons == "auto":
        resolved.update(min_photons_source="auto (half the median photons per frame)")
    background = None
    if cfg.background in ("auto", "refined"):
        radius = np.linalg.norm(frames.detector.q_perp[grid.pixels], axis=1)
        if streamed:   # the first SIZE_FRAMES frames are plenty for a radial profile
            sample = sp.csr_matrix(frames.head(SIZE_FRAMES).counts[:, grid.pixels])
        else:
            sample = counts[usable]
        background = estimate_background(sample, radius,
                                          frames.detector.correction()[grid.pixels])
        resolved.update(background.to_dict())
        log.info("classify2d: background %.1f photons per frame (%.1f %% of the photons)",
                 background.photons_per_frame, 100 * resolved["background_share"])
    device = resolve_device(cfg.device, "classify2d.device")
    executor = ShardExecutor(client, cfg.n_shards, device=device, engine=cfg.engine,
                             worker_threads=worker_threads(cfg.scheduler),
                             prob_min=cfg.prob_min)
    digest = stream_digest(frames, grid.pixels) if streamed else data_digest(counts)
    L = grid.size
    B = cfg.n_runs
    out_models = np.zeros((B, K, L, L), np.float32)
    out_weight = np.zeros((B, K, L, L), np.float32)
    out_occ = np.zeros((B, K))
    per_run, histories, backgrounds = [], [], []
    for b in range(B):
        rng = np.random.default_rng([cfg.seed, b])
        subset = usable if n_sub == usable.size else np.sort(
            rng.choice(usable, size=n_sub, replace=False))
        sub_counts = StreamCounts(frames, subset, grid.pixels, photons[subset]) if streamed \
            else counts[subset]
        init = initial_models(grid, sub_counts, photons[subset], K, rng, cfg.init_smooth_px)
        key = json.dumps({"params": cfg.trajectory_key(), "data": digest, "run": b,
                          "n": int(n_sub), "code": kernel_digest()}, sort_keys=True, default=str)
        ckpt = Path(checkpoint_dir) / f"run_{b:03d}.h5" if checkpoint_dir else None
        state = run_emc(sub_counts, grid, cfg, init, executor=executor, checkpoint=ckpt,
                        key=key, on_iteration=on_iteration, run=b, background=background)
        out_models[b] = state.models.reshape(K, L, L)
        out_weight[b] = state.weight.reshape(K, L, L)
        out_occ[b] = state.occupancy
        best = np.asarray(state.best, np.int64)
        per_run.append({
            "index": subset,
            "model": best % K,
            "rotation_deg": np.degrees(grid.angles[best // K]),
            "posterior_max": np.asarray(state.pmax, np.float64),
            "scale": np.asarray(state.phi, np.float64),
        })
        histories.append(state.history)
        backgrounds.append(state.background)
    return BootstrapResult(grid=grid, models=out_models, weight=out_weight, occupancy=out_occ,
                           frames=per_run, excluded=excluded, histories=histories,
                           resolved=resolved, backgrounds=backgrounds)
