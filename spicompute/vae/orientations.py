"""Which averages carry an orientation, and where the VAE slices the others.

The orient stage fits every average against a reference (a cube by default) and
always returns a best orientation.  For an average whose pattern is rings -- a
near-sphere, or any view that looks round within the q range -- that best
orientation says more about the reference than about the particle: against a
cube, the bright default set's sphere end lands near the cube's body diagonal
(the beam direction in the particle frame, |components| sorted, averages
(0.64, 0.56, 0.51) against (0.83, 0.46, 0.21) for uniform orientations).
Sliced at those orientations the volume is held only on a few planes and left
free elsewhere, where the decoder carries on the cube it learned next to them:
the sphere end of the line came out cube-like (docs/validation.md, "Orientations
the averages do not hold").

So the VAE keeps an average's fitted orientation only where the average itself
shows a particle's anisotropy: :func:`angular_anisotropy` measures the part of
its angular contrast that is centrosymmetric, which shot noise is not (noise at
q and -q is independent) and a particle's diffraction is (Friedel's law).  An
average below ``vae.isotropic_below`` is sliced at a random orientation, one per
average, fixed by ``vae.seed`` and its ``average_id``
(:func:`random_orientations`): many round averages at random orientations hold
the volume round in every direction, as the data say, instead of a cube's
[111] planes.  The class blur, scale and size fits are unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

RADIAL_STEP_PX = 0.5   # ring means in half-pixel bins, interpolated at each pixel's radius


def angular_anisotropy(x: np.ndarray, observed: np.ndarray, radial_step: float = RADIAL_STEP_PX) -> np.ndarray:
    """Centrosymmetric angular contrast of each average, (M,) dimensionless.

    x : (M, n, n) intensity in units of the data set's radial profile
        (:attr:`spicompute.vae.data.VaeInputs.x`), q = 0 at pixel (n // 2, n // 2)
    observed : (M, n, n) bool

    ``dev`` is an average minus its ring means (means over ``radial_step``-pixel rings of
    the observed pixels, interpolated linearly at each pixel's radius).  The result is the
    mean of ``dev(q) dev(-q)`` over observed Friedel pairs divided by the mean square of the
    ring means: the share of the average's power that is anisotropic *and* centrosymmetric.
    Shot noise adds nothing to it on average (independent at q and -q), so a noisy round
    average reads ~0; a cube's views read 0.1-3 on the default sets, their spheres 0.01-0.04
    (the ring means' own interpolation error on sharp fringes); negative values are noise.
    NaN for an average without observed Friedel pairs.
    """
    from spicompute.qrange import ring_sums

    x = np.asarray(x, np.float64)
    observed = np.asarray(observed, bool)
    m, n = x.shape[0], x.shape[-1]
    axis = np.arange(n) - n // 2
    radius = np.hypot(axis[:, None], axis[None, :])
    ring = np.floor(radius / radial_step).astype(np.int64)
    n_rings = int(ring.max()) + 1
    # the Friedel partner of pixel i is 2 c - i (c = n // 2); on an even grid row/column 0 has none
    mirror = 2 * (n // 2) - np.arange(n)
    has_partner = mirror < n
    partner_ok = has_partner[:, None] & has_partner[None, :]
    mirror = np.minimum(mirror, n - 1)
    obs2 = observed.reshape(m, -1)
    sums, counts = ring_sums(x.reshape(m, -1), obs2, ring.ravel(), n_rings)
    r_sums, _ = ring_sums(np.broadcast_to(radius.ravel(), obs2.shape), obs2, ring.ravel(), n_rings)
    profile = np.zeros_like(x)
    usable = (counts > 0).sum(axis=1) >= 2
    for i in np.flatnonzero(usable):   # one interpolation per average over its own populated rings
        good = counts[i] > 0
        profile[i] = np.interp(radius, r_sums[i, good] / counts[i, good], sums[i, good] / counts[i, good])
    dev = np.where(observed, x - profile, 0.0)
    pairs = observed & observed[:, mirror][:, :, mirror] & partner_ok & usable[:, None, None]
    n_pairs = pairs.sum(axis=(1, 2))
    power = (np.where(observed, profile, 0.0) ** 2).sum(axis=(1, 2)) / np.maximum(observed.sum(axis=(1, 2)), 1)
    cross = np.where(pairs, dev * dev[:, mirror][:, :, mirror], 0.0).sum(axis=(1, 2))
    out = np.full(m, np.nan)
    ok = (n_pairs > 0) & (power > 0)
    out[ok] = cross[ok] / n_pairs[ok] / power[ok]
    return out


def random_orientations(average_id: np.ndarray, seed: int) -> np.ndarray:
    """(M, 4) uniformly random unit quaternions (scalar first), one per ``average_id``.

    Each is drawn from its own stream seeded by ``(seed, average_id)``: an average gets the
    same orientation whatever else is in the set or selected.
    """
    from spicompute.orient.quaternions import random_quaternions

    ids = np.asarray(average_id)
    return np.array([random_quaternions(1, np.random.default_rng([int(seed), int(a) % 2 ** 63]))[0]
                     for a in ids]).reshape(len(ids), 4)


def member_fluence(weight: np.ndarray, n_frames: np.ndarray) -> np.ndarray:
    """(M,) the mean fluence of each average's members, in the averages' own weight units.

    weight : (M, L, L) the averages' coverage (:class:`spicompute.io.averages.AverageSet`, the
        fluence-weighted membership of each pixel); n_frames : (M,) their occupancies.
    The median over an average's observed pixels of ``weight / n_frames``; NaN where an average
    has no observed pixel or no members.
    """
    w = np.asarray(weight, np.float64).reshape(len(weight), -1)
    n = np.asarray(n_frames, np.float64)
    ok = (w > 0).any(axis=1) & (n > 0)
    out = np.full(len(w), np.nan)
    out[ok] = np.nanmedian(np.where(w[ok] > 0, w[ok], np.nan), axis=1) / n[ok]
    return out


def training_orientations(quaternions: np.ndarray, anisotropy: np.ndarray, isotropic_below: float,
                          average_id: np.ndarray, seed: int, fluence: np.ndarray | None = None,
                          min_fluence: float = 0.0, reference: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The orientations the VAE slices at: (quaternions (M, 4), fitted (M,) bool).

    The fitted ``quaternions`` (M, 4) where ``anisotropy`` (M,) is at least ``isotropic_below``
    (and finite); elsewhere :func:`random_orientations`.  ``isotropic_below`` 0 keeps every
    fitted orientation.  With ``fluence`` (M,, :func:`member_fluence`) and ``min_fluence`` > 0, a
    round average keeps its fitted orientation unless its members' fluence is at least
    ``min_fluence`` times the median over ``reference`` (indices; default all): a class of weak
    hits is round because the particle's signal is weak, not because the particle is.
    """
    quaternions = np.asarray(quaternions, np.float64)
    anisotropy = np.asarray(anisotropy, np.float64)
    fitted = ~(anisotropy < isotropic_below) if isotropic_below > 0 else np.ones(len(quaternions), bool)
    if fluence is not None and min_fluence > 0:
        fluence = np.asarray(fluence, np.float64)
        ref = fluence if reference is None else fluence[np.asarray(reference)]
        typical = np.nanmedian(ref) if np.isfinite(ref).any() else np.nan
        fitted |= ~(fluence >= min_fluence * typical)
    out = quaternions.copy()
    if (~fitted).any():
        out[~fitted] = random_orientations(np.asarray(average_id)[~fitted], seed)
    return out, fitted


def with_orientations(inputs, quaternions: np.ndarray):
    """``inputs`` (:class:`spicompute.vae.data.VaeInputs`) with the slicer's rotations and the
    encoder's quaternion condition from ``quaternions`` (M, 4): the encoder is told the
    orientation its average is sliced at.  The log gain is kept."""
    from spicompute.orient.quaternions import rotation_matrices

    q = np.asarray(quaternions, np.float64)
    condition = inputs.condition.copy()
    condition[:, :4] = q.astype(np.float32)
    return replace(inputs, rotations=rotation_matrices(q).astype(np.float32), condition=condition)
