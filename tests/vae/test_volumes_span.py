"""End points of the default latent line (volumes stage, d = 1)."""

from __future__ import annotations

import numpy as np
import pytest

from spicompute.errors import ParameterError
from spicompute.stages.volumes import options
from spicompute.vae.line import latent_points, latent_span


def family_z(seed=0, n=300):
    """Encoded z of a family whose cube end (low z) is sparse: t ~ Beta(2, 1) mapped to z in [-2, 2.5]."""
    rng = np.random.default_rng(seed)
    t = rng.beta(2.0, 1.0, n)
    return (-2.0 + 4.5 * t)[:, None], t


def test_auto_line_reaches_both_ends_of_the_family():
    z, t = family_z()
    line = latent_points(z, options({}))
    assert line.shape == (12, 1) and np.all(np.diff(line[:, 0]) > 0)
    # every trained average but the single most extreme at each end lies on the line
    outside = (z[:, 0] < line[0, 0]) | (z[:, 0] > line[-1, 0])
    assert outside.sum() == 2
    # the cube-end point is as close to the cube as the second most cube-like average
    assert line[0, 0] == np.sort(z[:, 0])[1]
    # negative control: the 2/98 percentile override clips the sparse cube end
    clipped = latent_points(z, options({"percentiles": [2, 98]}))
    assert clipped[0, 0] > line[0, 0] + 0.1 and (z[:, 0] < clipped[0, 0]).sum() >= 6


def test_a_single_stray_average_does_not_set_the_end():
    z, _ = family_z(1)
    stray = np.concatenate([z, [[25.0]]])
    lo, hi = latent_span(stray)
    assert hi[0] == pytest.approx(z.max()) and lo[0] == pytest.approx(np.sort(z[:, 0])[1])


def test_large_sets_use_half_a_percent_and_grids_use_the_same_box():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(2000, 2))
    lo, hi = latent_span(z)
    assert lo == pytest.approx(np.sort(z, axis=0)[9]) and hi == pytest.approx(np.sort(z, axis=0)[-10])
    grid = latent_points(z, options({"grid_per_axis": 5}))
    assert grid.shape == (25, 2) and grid.min(0) == pytest.approx(lo) and grid.max(0) == pytest.approx(hi)


@pytest.mark.parametrize("bad", [[98, 2], [-1, 50], "high", [1, 2, 3], [None, 5]])
def test_bad_percentiles_name_the_parameter(bad):
    with pytest.raises(ParameterError, match="volumes.percentiles"):
        options({"percentiles": bad})
