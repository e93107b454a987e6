"""AGIPD 1M q-vectors from extra-geom geometry (spicompute.io.euxfel)."""

import numpy as np
import pytest

from spicompute.errors import InputError, ParameterError
from spicompute.io.euxfel import HC_KEV_NM, agipd_q, load_agipd_geometry, pixel_q


@pytest.mark.parametrize("distance_mm,energy_kev", [(705.0, 6.0), (300.0, 9.3)])
def test_q_agrees_with_extra_geom_positions(tmp_path, distance_mm, energy_kev):
    geom = load_agipd_geometry()
    # round trip through a CrystFEL .geom file: a second geometry source
    path = tmp_path / "agipd.geom"
    geom.write_crystfel_geom(str(path), photon_energy=energy_kev * 1e3, clen=distance_mm / 1e3)
    for g in (geom, load_agipd_geometry(path)):
        q = agipd_q(g, distance_mm, energy_kev)
        assert q.shape == (16 * 512 * 128, 3)
        pos = geom.get_pixel_positions().reshape(-1, 3) * 1e3  # mm
        k = 2 * np.pi * energy_kev / HC_KEV_NM
        # Ewald sphere: |q + k_in| = k
        kin = np.array([0, 0, k])
        np.testing.assert_allclose(np.linalg.norm(q + kin, axis=1), k, rtol=1e-9)
        # scattering angle from extra-geom's own positions
        rho = np.hypot(pos[:, 0], pos[:, 1])
        two_theta = np.arctan2(rho, distance_mm + pos[:, 2])
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), 2 * k * np.sin(two_theta / 2),
                                   rtol=1e-6, atol=1e-6)
        # in-plane direction follows the pixel position
        np.testing.assert_allclose(np.arctan2(q[:, 1], q[:, 0]), np.arctan2(pos[:, 1], pos[:, 0]),
                                   atol=1e-6)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError):
        load_agipd_geometry(tmp_path / "missing.geom")
    with pytest.raises(InputError):
        load_agipd_geometry(tmp_path / "geometry.h5")
    with pytest.raises(ParameterError):
        pixel_q(np.zeros((2, 3)), 0.0, 6.0)
    with pytest.raises(ParameterError):
        pixel_q(np.zeros((2, 3)), 700.0, -1.0)
