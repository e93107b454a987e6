"""The dashboard really renders in headless Chromium (Debian package) via Playwright."""

from __future__ import annotations

import os
import shutil

import pytest

from spicompute.io.frames import write_frames
from tests.dashboard.browser_util import chromium, need_chromium, streamlit_server
from tests.dashboard.volume_workspace import make_volume_workspace

pytestmark = [pytest.mark.slow, pytest.mark.browser]  # `make test-fast` skips them


@pytest.fixture()
def server(tmp_path, small_simulation):
    need_chromium()
    write_frames(tmp_path / "data" / "frames.h5", small_simulation[0])
    make_volume_workspace(tmp_path)
    (tmp_path / "metrics").mkdir(exist_ok=True)
    (tmp_path / "metrics" / "classify2d.json").write_text(
        '{"resolved_min_photons": 250.0, "resolved_n_weak_frames": 17}')
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
        # the hit-strength cut: plotly draws its annotation into the histogram's SVG
        page.locator(".js-plotly-plot .annotation-text", has_text="classify2d.min_photons 250").wait_for(
            timeout=30_000)
        page.get_by_text("17 frames with fewer than 250 photons").wait_for(timeout=30_000)
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
        assert page.locator(".js-plotly-plot").count() >= 7  # sections, projections: one figure each
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(tmp_path / "volumes.png"), full_page=True)
        assert (tmp_path / "volumes.png").stat().st_size > 10_000


# (url slug, heading, shot name, a text drawn last: the page is complete once it is shown)
SHOT_PAGES = [("", "SPI Landscape", "home", "Pipeline outputs"),
              ("Landscape", "Structural landscape", "landscape", "Member frames of average"),
              ("Averages", None, "averages", None),
              ("Volumes", "VAE latent and volumes", "volumes", "Export for ChimeraX and slides"),
              ("Training", "Training curves", "training", None),
              ("Selections", "Selections", "selections", None)]


@pytest.mark.skipif(not os.environ.get("SPI_SCREENSHOT_WORKSPACE"),
                    reason="set SPI_SCREENSHOT_WORKSPACE to a workspace with real `dvc repro` outputs")
def test_screenshots_of_real_outputs(tmp_path):
    """Every main page renders on real pipeline outputs; small PNGs for docs/dashboard.md.

    SPI_SCREENSHOT_WORKSPACE: outputs of a real `dvc repro` (data/, results/, metrics/,
    dvclive/); SPI_SCREENSHOT_DIR: where the PNGs go (default: a temporary folder).
    """
    from PIL import Image

    need_chromium()
    out = os.environ.get("SPI_SCREENSHOT_DIR") or str(tmp_path)
    os.makedirs(out, exist_ok=True)
    with streamlit_server(os.environ["SPI_SCREENSHOT_WORKSPACE"]) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1300})
        for slug, heading, name, last in SHOT_PAGES:
            page.goto(f"{url}/{slug}")
            if heading:
                page.get_by_role("heading", name=heading).first.wait_for(timeout=120_000)
            if last:
                page.get_by_text(last).first.wait_for(timeout=120_000)
            page.locator("[data-testid='stStatusWidget']").wait_for(state="detached",
                                                                   timeout=120_000)
            if page.locator(".js-plotly-plot").count():
                page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=120_000)
            page.wait_for_timeout(1500)  # WebGL traces draw after the SVG layers
            assert page.locator("[data-testid='stException']").count() == 0, name
            shots = [name]
            if name == "landscape" and page.get_by_text("Member frames of average").count():
                shots.append("landscape_drilldown")
            if name == "volumes":
                shots.append("volumes_export")
            for shot in shots:
                if shot == "landscape_drilldown":  # the average, its reference, member frames
                    page.locator(".js-plotly-plot").last.scroll_into_view_if_needed()
                    page.wait_for_timeout(1500)
                elif shot == "volumes_export":  # the 3D view and sections above the export form
                    page.get_by_text("Export for ChimeraX and slides").first.evaluate(
                        "e => e.scrollIntoView({block: 'start'})")
                    page.wait_for_timeout(1500)
                png = os.path.join(out, f"{shot}.png")
                page.screenshot(path=png)
                # small PNGs for the repository: 1280 px wide, 128-colour palette
                Image.open(png).convert("RGB").quantize(128).save(png, optimize=True)
                assert os.path.getsize(png) > 10_000
