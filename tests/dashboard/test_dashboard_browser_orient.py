"""Real browser: the Orientation page names the round averages the VAE slices at random
orientations, and choosing one in the selectbox says so in its caption."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.dashboard.browser_util import chromium, need_chromium, streamlit_server
from tests.dashboard.test_dashboard_orient_regress import M, workspace  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_choosing_a_round_average_says_the_vae_does_not_use_its_orientation(workspace):  # noqa: F811
    need_chromium()
    ids = np.arange(M) + 500
    fitted = np.ones(M, bool)
    fitted[:3] = False   # the three lowest gains are round
    pd.DataFrame({"average_id": ids, "z_1": np.linspace(-1, 1, M), "anisotropy": np.where(fitted, 0.8, 0.012),
                  "orientation_fitted": fitted}).to_parquet(workspace / "results" / "parts" / "vae.parquet")
    note = "the VAE slices it at a random orientation, not this one"
    with streamlit_server(workspace) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/Orientation")
        page.get_by_role("heading", name="Orientation and gain").wait_for(timeout=60_000)
        page.get_by_text("3 averages are round").wait_for(timeout=60_000)
        # the page opens on the highest-gain average, which keeps its fitted orientation
        page.get_by_text("average 511: gain").wait_for(timeout=30_000)
        assert page.get_by_text(note).count() == 0
        page.get_by_test_id("stSelectbox").filter(has_text="average (sorted by gain)").click()
        page.get_by_role("option", name="500", exact=True).click()
        page.get_by_text("round (anisotropy 0.012): " + note).wait_for(timeout=60_000)
        page.get_by_text("average 500: gain").wait_for(timeout=30_000)
        assert page.locator("[data-testid='stException']").count() == 0
