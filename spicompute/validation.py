"""Does a landscape axis follow shape or nuisance?  Checks against simulation truth.

Issue 8's criterion for a CLPCA space: a component follows the melt parameter,
and no component follows photons per frame or occupancy more than it follows
shape.  With a few dozen to a few hundred averages, a Spearman |rho| carries a
sampling error of ~1/sqrt(M) (0.1 at M = 100), so a component that follows
nothing in particular "exceeds" by chance about half the time.
:func:`nuisance_excess` therefore reports, per component, the point excess
and its bootstrap distribution over averages; the benchmark and the tests
read both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


def _abs_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|Spearman rho| of the columns of x (n, k) with y (n,) -> (k,); 0 where undefined."""
    rx = rankdata(x, axis=0)
    ry = rankdata(y)
    rx = rx - rx.mean(0)
    ry = ry - ry.mean()
    den = np.sqrt((rx ** 2).sum(0) * (ry ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (rx * ry[:, None]).sum(0) / den, 0.0)
    return np.abs(rho)


@dataclass
class NuisanceExcess:
    """Per component (k,): ``excess`` = max |rho| with a nuisance minus max |rho| with
    shape (> 0: follows nuisance more); ``p_positive`` = bootstrap share of
    resamples with excess > 0; ``upper`` / ``lower`` = its 95th / 5th percentile."""

    excess: np.ndarray
    p_positive: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @property
    def significant(self) -> np.ndarray:
        """(k,) bool: excess > 0 in at least 95 % of the resamples."""
        return self.lower > 0


def _excess(coords, shape, shape_mask, nuisance) -> np.ndarray:
    follow_shape = np.zeros(coords.shape[1])
    for name, values in shape.items():
        rows = shape_mask.get(name, np.ones(len(values), bool))
        if rows.sum() >= 3:
            follow_shape = np.maximum(follow_shape, _abs_spearman(coords[rows], values[rows]))
    follow_nuisance = np.zeros(coords.shape[1])
    for values in nuisance.values():
        follow_nuisance = np.maximum(follow_nuisance, _abs_spearman(coords, values))
    return follow_nuisance - follow_shape


def nuisance_excess(coords: np.ndarray, shape: dict, nuisance: dict, *,
                    shape_mask: dict | None = None, n_boot: int = 1000,
                    seed: int = 0) -> NuisanceExcess:
    """How much more each component follows a nuisance than shape.

    coords : (M, k) landscape coordinates of the usable averages
    shape : name -> (M,) structural truth per average (e.g. mean melt parameter,
        contaminant fraction)
    nuisance : name -> (M,) e.g. mean photons per frame, occupancy
    shape_mask : name -> (M,) bool, the averages a shape variable is defined on
        (melt: the cube-sphere family only)
    n_boot : resamples of the averages (with replacement)
    """
    coords = np.asarray(coords, np.float64)
    shape = {k: np.asarray(v, np.float64) for k, v in shape.items()}
    nuisance = {k: np.asarray(v, np.float64) for k, v in nuisance.items()}
    shape_mask = {k: np.asarray(v, bool) for k, v in (shape_mask or {}).items()}
    point = _excess(coords, shape, shape_mask, nuisance)
    rng = np.random.default_rng(seed)
    m = coords.shape[0]
    boot = np.empty((n_boot, coords.shape[1]))
    for b in range(n_boot):
        i = rng.integers(0, m, m)
        boot[b] = _excess(coords[i], {k: v[i] for k, v in shape.items()},
                          {k: v[i] for k, v in shape_mask.items()},
                          {k: v[i] for k, v in nuisance.items()})
    return NuisanceExcess(point, (boot > 0).mean(0), np.percentile(boot, 5, axis=0),
                          np.percentile(boot, 95, axis=0))


def landscape_excess(averages, components=("pc_1", "pc_2", "pc_3"), *, n_boot: int = 1000,
                     seed: int = 0) -> NuisanceExcess:
    """:func:`nuisance_excess` of a per-average table (usable averages only).

    averages : DataFrame with the components, the members' mean ``melt_t``
        (NaN where undefined), ``contaminant`` fraction, mean ``size_nm``, the
        member count ``members``, and the nuisances ``mean_photons`` and
        ``n_frames`` (:func:`spicompute.stages.embed.nuisance_table`).  Melt
        counts on the cube-sphere family: contaminant < 0.2 and >= 5 members.
    """
    family = ((averages["contaminant"] < 0.2) & (averages["members"] >= 5)).to_numpy()
    return nuisance_excess(averages[list(components)].to_numpy(),
                           {"melt": averages["melt_t"].fillna(0).to_numpy(),
                            "contaminant": averages["contaminant"].to_numpy(),
                            "size_nm": averages["size_nm"].to_numpy()},
                           {"mean_photons": averages["mean_photons"].to_numpy(),
                            "n_frames": averages["n_frames"].to_numpy()},
                           shape_mask={"melt": family}, n_boot=n_boot, seed=seed)
