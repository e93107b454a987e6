"""Detector geometry: q on the Ewald sphere, solid angle, polarisation, masks."""

import numpy as np
import pytest

from spicompute.errors import ParameterError
from spicompute.geometry import (ewald_qz, grid_q, regular_detector, standard_mask,
                                 wavelength_from_energy_kev, wavenumber)


def test_wavelength_of_6kev():
    assert wavelength_from_energy_kev(6.0) == pytest.approx(0.20664, rel=1e-4)


def test_pixels_lie_on_the_ewald_sphere():
    det = regular_detector((65, 65), 0.2066, 705.0, 0.4)
    k = wavenumber(0.2066)
    # |k_in + q| = k for every pixel: q = k_out - k_in
    k_out = det.q + np.array([0, 0, k])
    np.testing.assert_allclose(np.linalg.norm(k_out, axis=1), k, rtol=1e-12)
    np.testing.assert_allclose(det.q[:, 2], ewald_qz(det.q[:, 0], det.q[:, 1], 0.2066),
                               atol=1e-12)
    assert np.all(det.q[:, 2] <= 0)


def test_q_matches_scattering_angle_and_spacing():
    det = regular_detector((129, 129), 0.2066, 705.0, 0.2, binning=2)
    two_theta = np.arctan(64 * 0.4 / 705.0)  # edge pixel on the row through the beam
    edge = det.q_norm.reshape(129, 129)[64, 128]
    assert edge == pytest.approx(4 * np.pi * np.sin(two_theta / 2) / 0.2066, rel=1e-9)
    assert det.dq_nm == pytest.approx(wavenumber(0.2066) * 0.4 / 705.0)
    assert det.scattering_angle_deg.max() < 3.0


def test_solid_angle_and_polarisation():
    det = regular_detector((101, 101), 0.2, 100.0, 1.0, polarization="x")
    omega = det.solid_angle.reshape(101, 101)
    assert omega[50, 50] == pytest.approx(1.0 / 100.0**2)
    assert omega[50, 100] < omega[50, 50]
    pol = det.polarization.reshape(101, 101)
    # x-polarised: weaker along x (columns) than along y (rows) at equal distance
    assert pol[50, 100] < pol[100, 50] == pytest.approx(1.0)
    assert det.correction().max() == pytest.approx(1.0)


def test_grid_q_center_and_axes():
    q = grid_q(5, 0.1, 0.2)
    assert np.allclose(q[2, 2], 0)
    assert q[2, 4, 0] == pytest.approx(0.2) and q[4, 2, 1] == pytest.approx(0.2)
    assert q[0, 0, 2] < 0


def test_standard_mask_blocks_beamstop_and_gaps():
    good = standard_mask((33, 33), (16, 16), beamstop_radius_px=3, gap_width_px=2,
                         dead_fraction=0.01, rng=np.random.default_rng(0))
    assert not good[16, 16] and not good[16, 0] and not good[0, 16]
    assert good[5, 5]
    assert 0.7 < good.mean() < 0.99


@pytest.mark.parametrize("kwargs", [dict(wavelength_nm=-1.0), dict(distance_mm=0.0),
                                    dict(pixel_size_mm=float("nan"))])
def test_absurd_geometry_is_rejected(kwargs):
    base = dict(shape=(8, 8), wavelength_nm=0.2, distance_mm=100.0, pixel_size_mm=0.2)
    base.update(kwargs)
    with pytest.raises(ParameterError, match=list(kwargs)[0]):
        regular_detector(**base)
