"""Central sections, projections and display downsampling of volumes."""

import numpy as np
import pytest

from spicompute.views import (DIRECTIONS, block_mean, central_section, frame_for, log_display, projection,
                              quantize_uint8)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_frames_are_orthonormal_and_right_handed(name):
    f = frame_for(DIRECTIONS[name])
    np.testing.assert_allclose(f @ f.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(f) == pytest.approx(1.0)


def test_central_section_along_100_is_the_middle_plane(rng):
    vol = rng.random((9, 9, 9))
    sec = central_section(vol, DIRECTIONS["<100>"])
    # u = (0, -1, 0)?  whatever the in-plane axes, the values are those of the z = c plane
    assert np.allclose(np.sort(sec.ravel()), np.sort(vol[:, :, 4].ravel()))


def test_sections_of_a_cube_intensity_show_its_symmetry():
    from spicompute.shapes import cube_intensity

    size, dq = 33, 0.03
    a = (np.arange(size) - 16) * dq
    q = np.stack(np.meshgrid(a, a, a, indexing="ij"), -1)
    vol = cube_intensity(q.reshape(-1, 3), 42.0).reshape(size, size, size)
    s100 = central_section(vol, DIRECTIONS["<100>"])
    s111 = central_section(vol, DIRECTIONS["<111>"])
    np.testing.assert_allclose(s100, np.rot90(s100), rtol=1e-6)  # 4-fold axis
    # <111> is a 3-fold axis: rotating the section by 120 degrees maps it onto itself (interpolated)
    from scipy import ndimage

    rot = ndimage.rotate(s111, 120, reshape=False, order=1)
    inner = np.hypot(*np.meshgrid(a, a, indexing="ij")) < 0.3
    assert np.corrcoef(np.log(rot[inner]), np.log(s111[inner]))[0, 1] > 0.98


def test_projections_conserve_mass_and_see_a_rod_end_on(rng):
    size = 31
    dens = np.zeros((size, size, size))
    dens[15, 15, 5:26] = 1.0  # a rod along z
    p100 = projection(dens, DIRECTIONS["<100>"])
    assert p100.max() == pytest.approx(21.0) and (p100 > 0).sum() == 1  # end-on: one bright pixel
    p110 = projection(dens, DIRECTIONS["<110>"])
    assert (p110 > 0.1).sum() > 15  # side-on: a line
    cube = np.zeros((size, size, size))
    cube[10:21, 10:21, 10:21] = 1.0
    for name in DIRECTIONS:  # a rotation keeps the mass of a smooth-enough body
        assert projection(cube, DIRECTIONS[name]).sum() == pytest.approx(cube.sum(), rel=0.02)
    p111 = projection(cube, DIRECTIONS["<111>"])
    assert p111.max() == pytest.approx(11 * np.sqrt(3), rel=0.1)  # the body diagonal


def test_block_mean_and_quantisation(rng):
    vol = rng.random((130, 130, 130)).astype(np.float32)
    small, f = block_mean(vol, 64)
    assert f == 3 and small.shape == (43, 43, 43)
    assert small.mean() == pytest.approx(vol[:129, :129, :129].mean(), rel=1e-5)
    same, f1 = block_mean(vol[:40, :40, :40], 64)
    assert f1 == 1 and same.shape == (40, 40, 40)
    q, lo, hi = quantize_uint8(log_display(small))
    assert q.dtype == np.uint8 and q.min() == 0 and q.max() == 255 and hi > lo
