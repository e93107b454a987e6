"""The paper's regime: ~400 particle photons + ~50 background photons per frame.

frames -> classify2d -> ccmatrix -> embed with the default parameters (fewer
runs and iterations), then against the simulator's truth, which no stage reads:

* a CLPCA component follows the members' mean melt parameter, |rho| >= 0.8;
* the melt axis (the component that follows melt best) does not follow
  photons per frame or occupancy more than it follows melt;
* no component follows photons or occupancy more than shape (the members'
  mean melt parameter, contaminant fraction or particle size), neither in the
  point values nor significantly (one-sided 95 % bootstrap over the averages,
  :mod:`spicompute.validation`).

``n_models: auto`` -> 60 models of ~80 frames each: with 30 models (160 frames each) a secondary
component followed how *mixed* the classes were (the members' melt spread,
Spearman 0.79), and through it photons per frame; over four EMC seeds the
largest point excess of photons/occupancy over shape was +0.20 on average at
30 models and -0.04 at 60 (docs/low_photon.md, "Frames per class").
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import spearmanr

from spicompute.validation import landscape_excess
from tests.conftest import REPO, members_with_truth, run_stages
from spicompute.io.truth import read_truth
from spicompute.landscape.nuisance import nuisance_table

pytestmark = pytest.mark.slow


# the embedded simulator's distributions and two cells of issue 22's matrix that differ from them:
# twice the size spread (6 %), and a Gaussian beam's fluence law over a full decade
# (log-uniform in [0.1, 1] instead of [0.3, 1]: three times the dynamic range of hit strengths).
# A fluence halo (30 % weak hits a decade below) fails here (melt |rho| 0.78, classes sort frames
# by fluence, F 33): docs/low_photon.md, "The robustness matrix".
CELLS = {"embedded": {}, "size6": {"size_jitter": 0.06}, "fluence_decade": {"fluence_min": 0.1}}


@pytest.fixture(scope="module", params=list(CELLS))
def landscape(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("lowphoton")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["simulate"].update(n_frames=6000, detector_size=65, binning=4, photons_mean=400,
                              background_photons=50, seed=3, **CELLS[request.param])
    params["classify2d"].update(n_runs=2, n_models="auto", max_iter=14, min_iter=8)   # 4,800 / 80 = 60
    params["embed"].update(methods=["pc"])
    run_stages(root, params, ("frames", "classify2d", "ccmatrix", "embed"))
    members = members_with_truth(root, ("class_name", "melt_t", "size_nm"))
    per = members.groupby("average_id").agg(melt_t=("melt_t", "mean"),
                                            contaminant=("contaminant", "mean"),
                                            size_nm=("size_nm", "mean"), members=("frame_id", "size"))
    table = pd.read_parquet(root / "results" / "parts" / "embed.parquet").merge(
        per, on="average_id")
    table = table.merge(nuisance_table(str(root / "results" / "frames.parquet"),
                                       str(root / "data" / "frames.h5"), table["average_id"].to_numpy()),
                        on="average_id", suffixes=("", "_nuisance"))
    embed = json.loads((root / "metrics" / "embed.json").read_text())
    classify = json.loads((root / "metrics" / "classify2d.json").read_text())
    table.attrs["cell"] = request.param
    return table, embed, classify, read_truth(root / "data" / "truth.h5")


def request_cell(landscape) -> str:
    return landscape[0].attrs["cell"]


def _rho(a, b) -> float:
    return abs(float(spearmanr(a, b)[0]))


def test_background_is_estimated(landscape):
    _, _, classify, truth = landscape
    true = float(np.mean(truth["background_photons"]))
    assert classify["resolved_background_photons_per_frame"] == pytest.approx(true, rel=0.25)


def test_the_melt_axis_follows_shape_not_photons_or_occupancy(landscape):
    table, embed, _, _ = landscape
    usable = table[table["landscape_usable"].astype(bool)]
    family = usable[(usable["contaminant"] < 0.2) & (usable["members"] >= 5)]
    assert len(family) >= 15
    melt = [_rho(family[f"pc_{k}"], family["melt_t"]) for k in (1, 2, 3)]
    assert max(melt) >= 0.8, melt
    k = int(np.argmax(melt))
    nuisance = embed["nuisance_spearman"][f"pc_{k + 1}"]
    for name in ("mean_photons", "n_frames"):
        assert abs(nuisance[name] or 0.0) <= melt[k], (k + 1, name, nuisance, melt)
    # without truth, the run halves say the same: the melt axis is reproduced (issue 22)
    stability = embed["component_stability"]
    assert stability["split"] == "runs"
    assert stability["components"][f"pc_{k + 1}"]["reproduced"], stability


def test_no_component_follows_photons_or_occupancy_significantly_more_than_shape(landscape):
    table, _, classify, _ = landscape
    usable = table[table["landscape_usable"].astype(bool)]
    res = landscape_excess(usable)
    assert not res.significant.any(), (res.excess, res.lower)
    assert classify["resolved_n_models"] == 60
    sorting = classify["truth_sorting_f"]
    assert sorting["scattering_strength"] > 20
    if not CELLS[request_cell(landscape)]:
        assert res.excess.max() <= 0, res.excess   # -0.17 on this seed; +0.07 at worst over 4 EMC seeds
        assert sorting["fluence"] < 4              # classes do not sort frames by fluence (chance: F ~ 1)
    else:   # a decade of hit strengths: the classes sort by fluence somewhat (F 9.7), far less than by shape
        assert sorting["fluence"] < sorting["scattering_strength"] / 4, sorting
