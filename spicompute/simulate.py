"""Simulated SPI data set: cubes melting into spheres, plus contaminants.

Physics, in order:

1. 3D intensity |F(q)|^2 of every shape on one cubic q-grid covering the
   detector: closed forms for cube, sphere, rod (box), dimer (two cubes) and
   irregular aggregates (clusters of small spheres: sum of sphere form
   factors with phases),
   FFT of an anti-aliased voxel density for the superellipsoid melt levels.
2. Each frame: a shape (class mixture), a melt parameter t (continuous:
   intensity interpolated between the two nearest melt levels), a size
   factor s (``s^6 I(s q)``), a uniformly random orientation R, a fluence
   from a Gaussian beam profile (particle position uniform over the beam
   disc -> relative fluence log-uniform in [fluence_min, 1]).
3. Expected counts ``lambda = c * fluence * I(R^T q) * solid_angle * polarisation``
   on the curved Ewald sphere, c chosen so the data set's mean photons per
   frame equals ``photons_mean``; Poisson sampled; masked pixels are zero.

The truth (class, t, quaternion, fluence, size) and the volumes go to a
separate file; no downstream stage reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from spicompute.errors import ParameterError
from spicompute.geometry import Detector, regular_detector, standard_mask, \
    wavelength_from_energy_kev
from spicompute.io.frames import FrameSet
from spicompute.params import in_range, positive, with_defaults
from spicompute.shapes import cube_intensity, melt_half_size, sphere_intensity, \
    superellipsoid_exponent, superellipsoid_intensity_volume
from spicompute.slicing import VolumeSampler, random_quaternions

log = logging.getLogger("spicompute.simulate")

CLASSES = ("cube", "melt", "sphere", "dimer", "rod", "aggregate")
_MEMORY_BUDGET_BYTES = 2 * 1024**3  # keep expected patterns between passes below this


@dataclass
class SimulationParams:
    """Validated ``simulate`` section (see params.yaml for meaning and units)."""

    seed: int = 0
    n_frames: int = 4000
    photon_energy_kev: float = 6.0
    distance_mm: float = 705.0
    pixel_size_mm: float = 0.2
    binning: int = 2
    detector_size: int = 129
    beamstop_radius_px: float = 3.0
    gap_width_px: int = 2
    dead_fraction: float = 0.002
    polarization: str = "x"
    photons_mean: float = 1500.0
    fluence_min: float = 0.3
    volume_size: int = 128
    volume_oversample: int = 2
    cube_edge_nm: float = 42.0
    size_jitter: float = 0.03
    melt_volume_growth: float = 0.10
    melt_levels: int = 9
    rod_length_nm: float = 110.0
    rod_width_nm: float = 20.0
    aggregate_shapes: int = 3
    fractions: dict = field(default_factory=lambda: {"cube": 0.25, "melt": 0.45, "sphere": 0.15,
                                                     "dimer": 0.05, "rod": 0.04,
                                                     "aggregate": 0.06})
    chunk_frames: int = 512

    @classmethod
    def from_dict(cls, raw: dict) -> "SimulationParams":
        p = cls(**with_defaults("simulate", raw, cls().__dict__))
        p.seed = int(p.seed)
        p.n_frames = positive("simulate.n_frames", p.n_frames, integer=True)
        p.photon_energy_kev = positive("simulate.photon_energy_kev", p.photon_energy_kev)
        p.distance_mm = positive("simulate.distance_mm", p.distance_mm)
        p.pixel_size_mm = positive("simulate.pixel_size_mm", p.pixel_size_mm)
        p.binning = positive("simulate.binning", p.binning, integer=True)
        p.detector_size = positive("simulate.detector_size", p.detector_size, integer=True)
        if p.detector_size < 8:
            raise ParameterError("simulate.detector_size", f"must be >= 8, got {p.detector_size}")
        p.beamstop_radius_px = positive("simulate.beamstop_radius_px", p.beamstop_radius_px,
                                        allow_zero=True)
        p.gap_width_px = positive("simulate.gap_width_px", p.gap_width_px, integer=True,
                                  allow_zero=True)
        p.dead_fraction = in_range("simulate.dead_fraction", p.dead_fraction, 0.0, 1.0,
                                   high_open=True)
        p.photons_mean = positive("simulate.photons_mean", p.photons_mean)
        p.fluence_min = in_range("simulate.fluence_min", p.fluence_min, 0.0, 1.0, low_open=True)
        p.volume_size = positive("simulate.volume_size", p.volume_size, integer=True)
        if p.volume_size < 16:
            raise ParameterError("simulate.volume_size", f"must be >= 16, got {p.volume_size}")
        p.volume_oversample = positive("simulate.volume_oversample", p.volume_oversample,
                                       integer=True)
        p.cube_edge_nm = positive("simulate.cube_edge_nm", p.cube_edge_nm)
        p.size_jitter = in_range("simulate.size_jitter", p.size_jitter, 0.0, 0.2)
        p.melt_volume_growth = in_range("simulate.melt_volume_growth", p.melt_volume_growth,
                                        -0.5, 2.0)
        p.melt_levels = positive("simulate.melt_levels", p.melt_levels, integer=True)
        if p.melt_levels < 2:
            raise ParameterError("simulate.melt_levels", f"must be >= 2, got {p.melt_levels}")
        p.rod_length_nm = positive("simulate.rod_length_nm", p.rod_length_nm)
        p.rod_width_nm = positive("simulate.rod_width_nm", p.rod_width_nm)
        p.aggregate_shapes = positive("simulate.aggregate_shapes", p.aggregate_shapes,
                                      integer=True)
        p.chunk_frames = positive("simulate.chunk_frames", p.chunk_frames, integer=True)
        if not isinstance(p.fractions, dict) or not p.fractions:
            raise ParameterError("simulate.fractions", "must map class names to weights")
        for name, value in p.fractions.items():
            if name not in CLASSES:
                raise ParameterError(f"simulate.fractions.{name}",
                                     f"unknown class (known: {', '.join(CLASSES)})")
            positive(f"simulate.fractions.{name}", value, allow_zero=True)
        if sum(float(v) for v in p.fractions.values()) <= 0:
            raise ParameterError("simulate.fractions", "weights sum to zero")
        if p.polarization not in ("x", "y", "none"):
            raise ParameterError("simulate.polarization",
                                 f"must be 'x', 'y' or 'none', got {p.polarization!r}")
        return p

    @property
    def wavelength_nm(self) -> float:
        return wavelength_from_energy_kev(self.photon_energy_kev)


@dataclass
class Truth:
    """Per-frame ground truth of a simulation (all arrays (N,) unless noted)."""

    frame_id: np.ndarray
    class_name: np.ndarray          # str
    melt_t: np.ndarray              # 0 cube ... 1 sphere; NaN for contaminants
    quaternion: np.ndarray          # (N, 4) scalar first, model -> lab
    fluence: np.ndarray             # relative, in [fluence_min, 1]
    size_scale: np.ndarray          # s
    size_nm: np.ndarray             # edge of the cube of equal volume
    photons_expected: np.ndarray
    volumes: np.ndarray             # (V, L, L, L) float32
    volume_names: list
    volume_t: np.ndarray            # (V,) melt t of each volume, NaN otherwise
    volume_dq_nm: float


def build_detector(p: SimulationParams, rng: np.random.Generator) -> Detector:
    """Regular AGIPD-like detector with beamstop, panel gap and dead pixels."""
    shape = (p.detector_size, p.detector_size)
    center = ((shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0)
    mask = standard_mask(shape, center, p.beamstop_radius_px, p.gap_width_px, "both",
                         p.dead_fraction, rng)
    return regular_detector(shape, p.wavelength_nm, p.distance_mm, p.pixel_size_mm, center,
                            p.binning, p.polarization, mask)


def _volume_grid(p: SimulationParams, detector: Detector) -> tuple[int, float]:
    """(L, dq) of the 3D intensity grid: covers every pixel at the largest size factor."""
    q_extent = float(detector.q_norm.max()) * (1.0 + 4.0 * p.size_jitter) * 1.02
    size = p.volume_size
    dq = q_extent / (size // 2 - 1)
    box_nm = 2 * np.pi / dq  # real-space period of the grid
    a = p.cube_edge_nm
    largest = max(np.sqrt(p.rod_length_nm**2 + 2 * p.rod_width_nm**2),  # rod diagonal
                  AGGREGATE_EXTENT_NM * a,
                  np.sqrt(6) * a,  # dimer (2a x a x a) diagonal
                  2 * melt_half_size(1.0, a, p.melt_volume_growth))
    if box_nm < 1.5 * largest:
        raise ParameterError(
            "simulate.volume_size",
            f"{size} voxels give a {box_nm:.0f} nm real-space box, too small for "
            f"{largest:.0f} nm particles at this q range; increase volume_size")
    return size, dq


def _grid_q(size: int, dq: float) -> np.ndarray:
    axis = (np.arange(size) - size // 2) * dq
    qx, qy, qz = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([qx, qy, qz], axis=-1)


def shape_volumes(p: SimulationParams, detector: Detector):
    """Intensity volumes of all shapes the mixture needs.

    Returns (volumes (V, L, L, L) float32, names, melt t per volume, dq_nm).
    Melt levels are ``t = linspace(0, 1, melt_levels)``; level 0 is the
    closed-form cube and the last the closed-form sphere.
    """
    size, dq = _volume_grid(p, detector)
    q = _grid_q(size, dq)
    a = p.cube_edge_nm
    volumes, names, ts = [], [], []
    levels = np.linspace(0.0, 1.0, p.melt_levels)
    for t in tqdm(levels, desc="shape volumes", leave=False, disable=None):
        half = melt_half_size(float(t), a, p.melt_volume_growth)
        if t == 0:
            vol = cube_intensity(q, 2 * half)
        elif t == 1:
            vol = sphere_intensity(q, half)
        else:
            vol = superellipsoid_intensity_volume(size, dq, p.volume_oversample, half,
                                                  superellipsoid_exponent(float(t)))
        volumes.append(vol.astype(np.float32))
        names.append(f"melt_t{t:.3f}")
        ts.append(float(t))
    if p.fractions.get("dimer", 0) > 0:
        # two touching cubes along x: F = F_cube * 2 cos(qx a / 2)
        volumes.append((cube_intensity(q, a) * 4 * np.cos(q[..., 0] * a / 2) ** 2)
                       .astype(np.float32))
        names.append("dimer")
        ts.append(np.nan)
    if p.fractions.get("rod", 0) > 0:
        h = np.array([p.rod_width_nm, p.rod_width_nm, p.rod_length_nm]) / 2
        amp = np.prod([np.sinc(q[..., i] * h[i] / np.pi) for i in range(3)], axis=0)
        volumes.append(((8 * h.prod() * amp) ** 2).astype(np.float32))
        names.append("rod")
        ts.append(np.nan)
    if p.fractions.get("aggregate", 0) > 0:
        agg_rng = np.random.default_rng(np.random.SeedSequence([p.seed, 7]))
        for i in range(p.aggregate_shapes):
            volumes.append(aggregate_intensity(q, a, agg_rng).astype(np.float32))
            names.append(f"aggregate_{i}")
            ts.append(np.nan)
    return np.stack(volumes), names, np.asarray(ts), dq


AGGREGATE_EXTENT_NM = 1.6  # aggregates fit in a sphere of this many cube edges


def aggregate_intensity(q: np.ndarray, cube_edge_nm: float, rng: np.random.Generator):
    """|F|^2 of an irregular cluster of 3-6 spheres (an "assorted" contaminant).

    Sphere radii 0.25-0.45 a (so the cluster scatters about as strongly as a
    cube), centres random within 0.5 a of the cluster's centre of mass:
    ``F = sum_j F_sphere(q; r_j) exp(-i q . x_j)``.
    q : (..., 3) rad/nm -> (...) nm^6.
    """
    n = int(rng.integers(3, 7))
    radii = rng.uniform(0.25, 0.45, n) * cube_edge_nm
    centres = rng.normal(0.0, 0.3, (n, 3)) * cube_edge_nm
    centres -= centres.mean(axis=0)
    scale = 0.5 * cube_edge_nm / max(np.linalg.norm(centres, axis=1).max(), 1e-9)
    centres *= min(1.0, scale)  # keep the cluster compact (within AGGREGATE_EXTENT_NM * a)
    amp = np.zeros(q.shape[:-1], dtype=np.complex128)
    for r, x in zip(radii, centres):  # a handful of spheres, each a whole-grid expression
        amp += (4.0 / 3.0 * np.pi * r**3) * _sphere_form(q, r) * np.exp(-1j * (q @ x))
    return np.abs(amp) ** 2


def _sphere_form(q: np.ndarray, radius: float) -> np.ndarray:
    """Sign-carrying sphere form factor 3 (sin x - x cos x)/x^3 (1 at q = 0)."""
    x = np.linalg.norm(q, axis=-1) * radius
    xs = np.maximum(x, 1e-2)
    # series below x = 0.01, where the closed form cancels catastrophically
    return np.where(x < 1e-2, 1.0 - x * x / 10.0, 3.0 * (np.sin(xs) - xs * np.cos(xs)) / xs**3)


def draw_frame_parameters(p: SimulationParams, rng: np.random.Generator) -> dict:
    """Class, melt t, orientation, fluence and size factor of every frame."""
    names = [c for c in CLASSES if float(p.fractions.get(c, 0)) > 0]
    weights = np.array([float(p.fractions[c]) for c in names])
    cls = rng.choice(len(names), size=p.n_frames, p=weights / weights.sum())
    class_name = np.array(names, dtype=object)[cls]
    melt_t = np.full(p.n_frames, np.nan)
    melt_t[class_name == "cube"] = 0.0
    melt_t[class_name == "sphere"] = 1.0
    is_melt = class_name == "melt"
    melt_t[is_melt] = rng.uniform(0.0, 1.0, is_melt.sum())
    # Gaussian beam, particle uniform over the disc where fluence >= fluence_min:
    # r^2 uniform -> log(fluence) uniform.
    fluence = np.exp(rng.uniform(np.log(p.fluence_min), 0.0, p.n_frames))
    size_scale = np.clip(1.0 + p.size_jitter * rng.standard_normal(p.n_frames), 0.8, 1.2)
    quats = random_quaternions(p.n_frames, rng)
    variant = rng.integers(0, p.aggregate_shapes, p.n_frames)  # which aggregate volume
    return dict(class_name=class_name, melt_t=melt_t, fluence=fluence, size_scale=size_scale,
                quaternion=quats, variant=variant)


def _volume_weights(class_name, melt_t, names, volume_t, variant=None) -> sp.csr_matrix:
    """(N, V) mixing weights of the volumes for each frame (melt: linear in t)."""
    n = len(class_name)
    rows, cols, vals = [], [], []
    levels = volume_t[np.isfinite(volume_t)]
    has_t = np.isfinite(melt_t)
    idx = np.nonzero(has_t)[0]
    pos = np.clip(melt_t[idx] * (len(levels) - 1), 0, len(levels) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(levels) - 2)
    frac = pos - lo
    rows += [idx, idx]
    cols += [lo, lo + 1]
    vals += [1.0 - frac, frac]
    for other in ("dimer", "rod"):
        sel = np.nonzero(class_name == other)[0]
        if len(sel):
            rows.append(sel)
            cols.append(np.full(len(sel), names.index(other)))
            vals.append(np.ones(len(sel)))
    sel = np.nonzero(class_name == "aggregate")[0]
    if len(sel):
        rows.append(sel)
        cols.append(np.array([names.index(f"aggregate_{v}") for v in variant[sel]]))
        vals.append(np.ones(len(sel)))
    w = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n, len(names)))
    w.eliminate_zeros()
    return w


def _expected_patterns(samplers, weights: sp.csr_matrix, q_lab: np.ndarray, quats, scale,
                       pixel_factor: np.ndarray) -> np.ndarray:
    """Noise-free patterns ``sum_v w_nv s^6 I_v(s R^T q) * pixel_factor``, (n, P) float32."""
    out = np.zeros((len(quats), q_lab.shape[0]), dtype=np.float32)
    wc = weights.tocsc()
    for v, sampler in enumerate(samplers):  # a handful of volumes, not a per-frame loop
        col = wc[:, v]
        frames = col.indices
        if len(frames) == 0:
            continue
        out[frames] += sampler.slices(q_lab, quats[frames], scale[frames]) \
            * col.data.astype(np.float32)[:, None]
    out *= (scale.astype(np.float32) ** 6)[:, None]
    out *= pixel_factor[None, :]
    return out


def poisson_sparse(lam: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """Poisson counts of expected photons ``lam`` (n, P) as a CSR matrix.

    Exact and O(photons) rather than O(pixels): a Poisson process is a
    Poisson total per frame with photons placed independently with
    probability proportional to ``lam`` (inverse CDF on the cumulative sum).
    """
    n, n_pix = lam.shape
    cumulative = np.cumsum(lam, axis=None, dtype=np.float64)  # flat, row-major
    row_end = cumulative[n_pix - 1::n_pix]
    row_start = np.concatenate([[0.0], row_end[:-1]])
    totals = row_end - row_start
    n_photons = rng.poisson(totals)
    frame_of = np.repeat(np.arange(n), n_photons)
    u = row_start[frame_of] + rng.random(len(frame_of)) * totals[frame_of]
    flat = np.searchsorted(cumulative, u, side="right")
    flat = np.minimum(flat, frame_of * n_pix + n_pix - 1)  # guard the last bin's rounding
    cells, counts = np.unique(flat, return_counts=True)
    rows = cells // n_pix
    indptr = np.searchsorted(rows, np.arange(n + 1))
    return sp.csr_matrix((counts.astype(np.int32), (cells % n_pix).astype(np.int32), indptr),
                         shape=(n, n_pix))


def simulate(p: SimulationParams, progress: bool = True) -> tuple[FrameSet, Truth]:
    """Simulate ``p.n_frames`` frames; deterministic for ``p.seed``."""
    seeds = np.random.SeedSequence(p.seed)
    geo_seed, par_seed, noise_seed = seeds.spawn(3)
    detector = build_detector(p, np.random.default_rng(geo_seed))
    log.info("detector %s pixels, q_max %.3f rad/nm, %d good", detector.shape,
             detector.q_max_nm, detector.mask.sum())
    volumes, names, volume_t, dq = shape_volumes(p, detector)
    log.info("%d intensity volumes of %d^3, dq %.4f rad/nm", len(volumes), volumes.shape[1], dq)
    frames = draw_frame_parameters(p, np.random.default_rng(par_seed))
    weights = _volume_weights(frames["class_name"], frames["melt_t"], names, volume_t,
                              frames["variant"])
    samplers = [VolumeSampler(v, dq) for v in volumes]
    pixel_factor = (detector.correction() * detector.mask).astype(np.float32)
    q_lab = detector.q.astype(np.float32)
    n, n_pix = p.n_frames, detector.n_pixels
    chunks = [slice(s, min(s + p.chunk_frames, n)) for s in range(0, n, p.chunk_frames)]

    def patterns(ch):
        return _expected_patterns(samplers, weights[ch], q_lab, frames["quaternion"][ch],
                                  frames["size_scale"][ch], pixel_factor) \
            * frames["fluence"][ch, None].astype(np.float32)

    keep = n * n_pix * 4 <= _MEMORY_BUDGET_BYTES
    kept, totals = [], np.empty(n)
    for ch in tqdm(chunks, desc="slicing", disable=not progress, leave=False):
        pat = patterns(ch)
        totals[ch] = pat.sum(axis=1, dtype=np.float64)
        if keep:
            kept.append(pat)
    if not np.all(totals > 0):
        raise ParameterError("simulate", "some frames have no signal; check the geometry")
    c = p.photons_mean / totals.mean()
    noise_rngs = [np.random.default_rng(s) for s in noise_seed.spawn(len(chunks))]
    blocks = []
    for i, ch in enumerate(tqdm(chunks, desc="photons", disable=not progress, leave=False)):
        lam = (kept[i] if keep else patterns(ch)) * np.float32(c)
        blocks.append(poisson_sparse(lam, noise_rngs[i]))
        if keep:
            kept[i] = None
    counts = sp.vstack(blocks, format="csr")
    frameset = FrameSet(counts=counts, frame_id=np.arange(n), detector=detector)
    size_nm = p.cube_edge_nm * frames["size_scale"] * np.where(
        np.isfinite(frames["melt_t"]),
        (1 + p.melt_volume_growth * np.nan_to_num(frames["melt_t"])) ** (1 / 3), 1.0)
    truth = Truth(frame_id=np.arange(n), class_name=frames["class_name"].astype(str),
                  melt_t=frames["melt_t"], quaternion=frames["quaternion"],
                  fluence=frames["fluence"], size_scale=frames["size_scale"], size_nm=size_nm,
                  photons_expected=totals * c, volumes=volumes, volume_names=names,
                  volume_t=volume_t, volume_dq_nm=dq)
    return frameset, truth
