"""One image convention, checked on the pixels Chromium really draws.

The same asymmetric average (tests/dashboard/convention_workspace.py) is opened on the
Averages, Landscape and Orientation pages of the running dashboard.  For every heatmap,
plotly.js's own axis mapping in the page gives where the q = 0 point and the average's
bright pixel land on screen; a screenshot of the plot then shows what was drawn there:
the bright pixel must be 4 cells right of and 4 cells *below* the beam (qx = +0.2,
qy = −0.2 nm⁻¹, qy upwards) on every page, brighter than the three places a flip or a
transpose would have put it, and the never-observed pixel must be the grey background.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.dashboard.browser_util import chromium, need_chromium, open_page, streamlit_server
from tests.dashboard.convention_workspace import (
    BLUR_IN,
    BLUR_OUT,
    C,
    HOLE,
    SPOT,
    VAE_BLUR,
    make_convention_workspace,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGES = {"Averages": "2D class averages", "Landscape": "Structural landscape",
         "Orientation": "Orientation and gain"}

# every heatmap of the page: where plotly.js puts the array's brightest cell, the q = 0
# point and one cell's size, in pixels relative to the plot element
LOCATE = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap((gd, g) =>
  (gd._fullData || []).filter(t => t.type === 'heatmap').map(t => {
    let best = -Infinity, bi = -1, bj = -1;
    for (let i = 0; i < t.z.length; i++) for (let j = 0; j < t.z[i].length; j++) {
      const v = t.z[i][j];
      if (v !== null && Number.isFinite(v) && v > best) { best = v; bi = i; bj = j; }
    }
    const xa = gd._fullLayout['xaxis' + t.xaxis.slice(1)], ya = gd._fullLayout['yaxis' + t.yaxis.slice(1)];
    const X = v => xa._offset + xa.l2p(v), Y = v => ya._offset + ya.l2p(v);
    return {plot: g, row: bi, col: bj, spot: [X(t.x[bj]), Y(t.y[bi])], origin: [X(0), Y(0)],
            cell: [X(t.x[1]) - X(t.x[0]), Y(t.y[1]) - Y(t.y[0])]};
  }))"""


def luminance(rgb) -> float:
    r, g, b = rgb[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


@pytest.fixture()
def server(tmp_path):
    need_chromium()
    make_convention_workspace(tmp_path)
    with streamlit_server(tmp_path) as url:
        yield url


def test_the_same_pixel_is_drawn_in_the_same_place_on_every_page(server):
    from PIL import Image

    seen = {}
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        for slug, heading in PAGES.items():
            open_page(page, f"{server}/{slug}", heading)
            page.locator(".js-plotly-plot .heatmaplayer image").first.wait_for(timeout=90_000)
            assert page.locator("[data-testid='stException']").count() == 0, slug
            plots = page.locator(".js-plotly-plot")
            found = page.evaluate(LOCATE)
            assert found, f"{slug}: no heatmap drawn"
            for k, hm in enumerate(found):
                assert (hm["row"], hm["col"]) == SPOT, (slug, hm)
                cx, cy = hm["cell"]
                assert cx > 0 and cy < 0, (slug, "axes must run right and up", hm)
                # cells from the beam, on screen: x to the right, y downwards
                offset = ((hm["spot"][0] - hm["origin"][0]) / cx,
                          (hm["spot"][1] - hm["origin"][1]) / -cy)
                seen[(slug, k)] = offset
                plot = plots.nth(hm["plot"])
                plot.scroll_into_view_if_needed()
                page.wait_for_timeout(300)
                shot = np.asarray(Image.open(io.BytesIO(plot.screenshot())).convert("RGB"), float)

                def colour_at(row: int, col: int) -> np.ndarray:
                    x = hm["origin"][0] + (col - C) * cx
                    y = hm["origin"][1] + (row - C) * cy
                    return shot[int(round(y)), int(round(x))]

                bright = luminance(colour_at(*SPOT))
                r, c = SPOT
                for flipped in ((2 * C - r, c), (r, 2 * C - c), (c, r)):  # up-down, left-right, transpose
                    assert bright > luminance(colour_at(*flipped)) + 40, (slug, k, flipped)
                grey = colour_at(*HOLE)
                assert np.abs(grey - 0x88).max() <= 6, (slug, k, "unobserved pixel not grey", grey)
    assert set(s for s, _ in seen) == set(PAGES)
    for key, offset in seen.items():
        # column 11 is 4 right of the centre; row 3 is qy = -0.2: 4 cells below it on screen
        assert offset == pytest.approx((SPOT[1] - C, C - SPOT[0]), abs=0.05), key


BLUR_PLOT = """() => Array.from(document.querySelectorAll('.js-plotly-plot'))
  .filter(gd => String(((gd.layout || {}).title || {}).text || '').includes('Class blur against gain'))
  .map(gd => ({traces: gd._fullData.map(t => ({name: t.name, y: Array.from(t.y)})),
               dashed: gd._fullLayout.shapes.map(sh => sh.y0),
               drawn: gd.querySelectorAll('.shapelayer path').length}))"""


def test_orientation_page_draws_the_class_blur_and_a_click_shows_one_averages(server):
    """In Chromium: the blur chart is drawn with both axes' values and the VAE's two dashed lines; picking
    another average in the select box (a real click) puts that average's blur in its caption."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        open_page(page, f"{server}/Orientation", PAGES["Orientation"])
        page.get_by_text("Class blur against gain").first.wait_for(timeout=90_000)
        (blur,) = page.evaluate(BLUR_PLOT)
        assert [t["name"] for t in blur["traces"]] == ["out of plane (detector axes)", "in plane (beam axis)"]
        assert sorted(blur["traces"][0]["y"]) == BLUR_OUT and sorted(blur["traces"][1]["y"]) == BLUR_IN
        assert sorted(blur["dashed"]) == sorted(VAE_BLUR) and blur["drawn"] == 2
        # default: the highest-gain average (id 10); pick id 7, the lowest
        caption = page.get_by_text("class blur 12.0° out of plane / 7.5° in plane")
        caption.first.wait_for(timeout=30_000)
        box = page.get_by_label("average (sorted by gain)")
        box.click()
        box.press("ArrowDown")   # this Streamlit's combobox opens its list from the keyboard, not on a click
        page.get_by_role("option", name="7", exact=True).click()
        page.get_by_text("average 7: gain 1.100").first.wait_for(timeout=30_000)
        assert page.get_by_text("class blur 3.0° out of plane / 2.0° in plane").count() == 1
        assert page.locator("[data-testid='stException']").count() == 0
