"""The dashboard really renders in headless Chromium (Debian package) via Playwright."""

from __future__ import annotations

import os
import shutil

import pytest

from spicompute.io.frames import write_frames
from tests.browser_util import chromium, need_chromium, streamlit_server
from tests.volume_workspace import make_volume_workspace

pytestmark = pytest.mark.browser


@pytest.fixture()
def server(tmp_path, small_simulation):
    need_chromium()
    write_frames(tmp_path / "data" / "frames.h5", small_simulation[0])
    make_volume_workspace(tmp_path)
    with streamlit_server(tmp_path) as url:
        yield url


def test_pages_render_in_headless_chromium(server, tmp_path):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server)
        page.get_by_role("heading", name="SPI Landscape").wait_for(timeout=60_000)
        page.get_by_text("Pipeline outputs").first.wait_for(timeout=30_000)
        page.goto(f"{server}/Frames")
        page.get_by_role("heading", name="Frames").wait_for(timeout=60_000)
        # plotly draws the heatmaps into the DOM once its JS has run
        page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
        assert page.locator(".js-plotly-plot").count() >= 2
        page.screenshot(path=str(tmp_path / "frames.png"), full_page=True)
        if os.environ.get("SPI_SCREENSHOT"):
            shutil.copy(tmp_path / "frames.png", os.environ["SPI_SCREENSHOT"])
        assert (tmp_path / "frames.png").stat().st_size > 10_000
        errors = page.locator("[data-testid='stException']").count()
        assert errors == 0
        # the Volumes page: latent plots, the 3D isosurface (WebGL), sections and projections
        page.goto(f"{server}/Volumes")
        page.get_by_role("heading", name="VAE latent and volumes").wait_for(timeout=60_000)
        page.get_by_text("projection along <111>").first.wait_for(timeout=60_000)
        page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
        assert page.locator(".js-plotly-plot").count() >= 9
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(tmp_path / "volumes.png"), full_page=True)
        assert (tmp_path / "volumes.png").stat().st_size > 10_000
