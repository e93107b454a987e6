"""Low-q anisotropy of 2D patterns (spicompute.orient.gyration) and the family's dimer test."""

from __future__ import annotations

import numpy as np
import pytest

from spicompute.landscape.family import elongated_members
from spicompute.orient.gyration import GUINIER_QR, cube_sphere_radius_nm, guinier_band, low_q_anisotropy
from spicompute.orient.quaternions import rotation_matrices, random_quaternions
from spicompute.shapes import cube_amplitude, sphere_intensity

EDGE = 42.0


def patterns(kind: str, n: int, size: int, dq_nm: float, photons: float | None, seed: int):
    """(n, size, size) flat-Ewald slices of a cube, a dimer of two touching cubes or a sphere of the
    cube's volume, each at a random orientation; Poisson counts scaled to ``photons`` per pattern
    (None: noiseless), with a beamstop of radius 2 px."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - size // 2
    q_plane = np.stack([x * dq_nm, y * dq_nm, np.zeros_like(x, float)], -1)
    rot = rotation_matrices(random_quaternions(n, rng))
    q = np.einsum("nij,hwj->nhwi", rot, q_plane)
    if kind == "cube":
        out = cube_amplitude(q, EDGE) ** 2
    elif kind == "dimer":   # centres at +-a/2 along x: |F|^2 4 cos^2(qx a / 2)
        out = cube_amplitude(q, EDGE) ** 2 * 4 * np.cos(q[..., 0] * EDGE / 2) ** 2
    else:
        out = sphere_intensity(q, cube_sphere_radius_nm(EDGE))
    observed = np.broadcast_to(np.hypot(x, y) > 2, out.shape).copy()
    if photons is not None:
        out = rng.poisson(out / (out * observed).sum(axis=(1, 2), keepdims=True) * photons).astype(float)
    return out, observed


@pytest.mark.parametrize("size, dq_nm", [(65, 0.0172), (97, 0.0115)])
@pytest.mark.parametrize("photons", [None, 1e5, 2e4])
def test_dimers_read_elongated_cubes_and_spheres_round(size, dq_nm, photons):
    """Two detector geometries (the band holds 2 and 4 rings), noiseless and two photon levels
    (per pattern, as in a class average of ~100-200 frames)."""
    band = (3 * dq_nm, GUINIER_QR / cube_sphere_radius_nm(EDGE))
    values = {k: low_q_anisotropy(*patterns(k, 24, size, dq_nm, photons, seed=i), dq_nm, *band)
              for i, k in enumerate(("cube", "dimer", "sphere"))}
    assert np.percentile(values["cube"], 90) < 0.05 and values["sphere"].max() < 0.03
    # seen end-on a dimer is a cube: most views are elongated, not all
    assert np.median(values["dimer"]) > 0.2
    assert np.median(values["dimer"]) > 10 * np.median(values["cube"])


def test_rotating_a_pattern_keeps_its_anisotropy_and_masked_pixels_do_not_count():
    dq = 0.0172
    img, obs = patterns("dimer", 1, 65, dq, None, seed=3)
    band = (3 * dq, 0.1)
    a = low_q_anisotropy(img, obs, dq, *band)[0]
    assert low_q_anisotropy(np.rot90(img, axes=(1, 2)), obs, dq, *band)[0] == pytest.approx(a, rel=1e-6)
    # a masked wedge changes what is seen, not the scale; garbage under the mask is ignored
    wedge = obs.copy()
    wedge[:, :32, 40:] = False
    junk = np.where(wedge, img, 1e9)
    assert low_q_anisotropy(junk, wedge, dq, *band)[0] == pytest.approx(
        low_q_anisotropy(img, wedge, dq, *band)[0])
    # nothing observed in the band: NaN, not 0
    assert np.isnan(low_q_anisotropy(img, np.zeros_like(obs), dq, *band)[0])


class _Grid:
    """The parts of an AverageSet that :func:`guinier_band` reads."""

    def __init__(self, size, dq_nm, beamstop_px):
        from spicompute.io.averages import AverageSet

        y, x = np.mgrid[:size, :size] - size // 2
        w = (np.hypot(x, y) > beamstop_px).astype(np.float32)
        self.avg = AverageSet(intensity=np.ones((2, size, size), np.float32), weight=np.stack([w, w]),
                              n_frames=np.array([10.0, 10.0]), dq_nm=dq_nm, wavelength_nm=0.2,
                              average_id=np.arange(2), run=np.zeros(2, int), model=np.arange(2))


def test_guinier_band_in_physical_units():
    band = guinier_band(_Grid(65, 0.0172, 2.0).avg, cube_sphere_radius_nm(EDGE))
    assert band[0] == pytest.approx(3 * 0.0172)                # first ring observed >= 90 %
    assert band[1] == pytest.approx(2.5 / (0.6204 * EDGE), rel=1e-3)
    # a beamstop past q R = 2.5 leaves no band
    assert guinier_band(_Grid(65, 0.0172, 6.0).avg, cube_sphere_radius_nm(EDGE)) is None
    # the band scales with the particle: a 4x larger one has its Guinier range inside the beamstop
    assert guinier_band(_Grid(65, 0.0172, 2.0).avg, cube_sphere_radius_nm(4 * EDGE)) is None


def test_elongated_members_scale_with_the_cube_end():
    seed = np.r_[np.ones(5, bool), np.zeros(7, bool)]
    members = np.ones(12, bool)
    a = np.r_[0.004, 0.005, 0.006, 0.005, 0.3, 0.01, 0.02, 0.049, 0.051, 0.4, np.nan, 0.2]
    drop, limit = elongated_members(a, members, seed, 10.0)
    assert limit == pytest.approx(0.05)                        # 10 x the seed's median, robust to its dimer
    assert drop.tolist() == [False] * 4 + [True] + [False] * 3 + [True, True, False, True]
    # an elongated family (its cube end reads 0.3): nothing in it is dropped
    drop, limit = elongated_members(np.full(12, 0.3) + np.linspace(0, 0.2, 12), members, seed, 10.0)
    assert not drop.any() and limit > 1
    # not measured: the test is off
    drop, limit = elongated_members(np.full(12, np.nan), members, seed, 10.0)
    assert limit is None and not drop.any()
    # only members can be dropped
    assert not elongated_members(a, np.zeros(12, bool), seed, 10.0)[0].any()
