"""The starting likelihood temperature per frame or per run (``classify2d.beta_scope``).

``beta: auto`` starts a frame of n photons at β = min(1, beta_photons / n).  Per frame,
a weak hit starts at β = 1 while a strong one is tempered, so early on the weak hits commit
to classes sharply and gather in classes of their own: with a beam halo (30 % of hits a
decade weaker) the classes sort frames by fluence.  One β for the run (from its median
photons) treats every frame alike (docs/classify2d.md, "β").
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from spicompute.emc2d.run import EMCConfig, initial_beta
from spicompute.errors import ParameterError
from tests.conftest import REPO, run_stages


def test_auto_beta_per_frame_or_one_for_the_run():
    photons = np.array([50.0, 200.0, 400.0, 800.0, 4000.0])
    per_frame = initial_beta(photons, EMCConfig.from_params({"beta_scope": "frame"}))
    np.testing.assert_allclose(per_frame, [1.0, 0.5, 0.25, 0.125, 0.025])
    run = initial_beta(photons, EMCConfig.from_params({"beta_scope": "dataset"}))
    np.testing.assert_allclose(run, np.full(5, 100.0 / 400.0))
    assert initial_beta(np.array([20.0, 30.0]), EMCConfig.from_params({"beta_scope": "dataset"})).tolist() == [1, 1]
    fixed = initial_beta(photons, EMCConfig.from_params({"beta": 0.3, "beta_scope": "dataset"}))
    np.testing.assert_allclose(fixed, 0.3)   # a number is a number, whatever the scope


def test_a_bad_scope_names_the_parameter():
    with pytest.raises(ParameterError, match="classify2d.beta_scope"):
        EMCConfig.from_params({"beta_scope": "frames"})


@pytest.mark.slow
def test_one_beta_for_the_run_stops_weak_hits_gathering_in_their_own_classes(tmp_path):
    """65², 6,000 frames of 400 + 50 photons with 30 % of the hits a decade weaker: the
    classes' sorting by fluence (ANOVA F of the true fluence between classes, ~1 by chance)
    falls from ~30 per frame to ~10 with one β for the run; both sort by shape (F > 50)."""
    f = {}
    for scope in ("frame", "dataset"):
        root = tmp_path / scope
        root.mkdir()
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["simulate"].update(n_frames=6000, detector_size=65, binning=4, photons_mean=400,
                                  background_photons=50, seed=3, fluence_tail_fraction=0.3,
                                  fluence_tail_decades=1.0)
        params["classify2d"].update(n_runs=1, n_models="auto", max_iter=14, min_iter=8, beta_scope=scope)
        run_stages(root, params, ("frames", "classify2d"))
        f[scope] = json.loads((root / "metrics" / "classify2d.json").read_text())["truth_sorting_f"]
    assert f["dataset"]["fluence"] < 0.6 * f["frame"]["fluence"], f
    assert f["frame"]["scattering_strength"] > 50 and f["dataset"]["scattering_strength"] > 50, f


def test_the_per_frame_default_keeps_earlier_checkpoints_valid():
    """Checkpoints are keyed by the trajectory parameters: the default scope leaves the key as
    it was before the parameter existed, the other scope changes it."""
    frame = EMCConfig.from_params({}).trajectory_key()
    assert "beta_scope" not in frame
    assert EMCConfig.from_params({"beta_scope": "dataset"}).trajectory_key() == {**frame, "beta_scope": "dataset"}
