"""The dashboard really renders in headless Chromium (Debian package) via Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from spicompute.io.frames import write_frames
from tests.conftest import REPO
from tests.volume_workspace import make_volume_workspace

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.browser


def _need_chromium():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium for the browser test (make browser)")
        pytest.skip("chromium not installed (make browser installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path, small_simulation):
    _need_chromium()
    write_frames(tmp_path / "data" / "frames.h5", small_simulation[0])
    make_volume_workspace(tmp_path)
    port = _free_port()
    env = dict(os.environ, SPI_WORKSPACE=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"),
         "--server.headless", "true", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("streamlit did not become healthy within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_pages_render_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        try:
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
        finally:
            browser.close()
