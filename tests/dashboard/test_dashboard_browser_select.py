"""Real browser: click a point -> its drill-down; switch run, box-select on the landscape,
name it -> selections/*.json -> dvc status.

Starts `streamlit run` on a free loopback port against a tiny git + DVC project
(tests/dashboard_project.py), drives headless Debian Chromium with Playwright,
and stops the server by its pid.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.dashboard.browser_util import chromium, need_chromium, streamlit_server
from tests.dashboard.dashboard_project import dvc, make_project

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def choose_run(page, label_part: str) -> None:
    """Pick a run in the sidebar's run selectbox by part of its label."""
    box = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").first
    box.click()
    page.get_by_role("option").filter(has_text=label_part).first.click()


def isolated_point(table: pd.DataFrame) -> int:
    """The average farthest from its nearest neighbour in (pc_1, pc_2), in units of each
    axis's range (what the plot's pixels are), and not the one shown first (id 0)."""
    xy = table[["pc_1", "pc_2"]].to_numpy()
    xy = (xy - xy.min(0)) / np.ptp(xy, axis=0)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    gap = d.min(1)
    gap[table["average_id"].to_numpy() == 0] = -1
    return int(table["average_id"].iloc[int(np.argmax(gap))])


def click_point(page, plot, x: float, y: float) -> None:
    """A real mouse click at the data point (x, y), placed by plotly's own axis mapping."""
    px_x, px_y = plot.evaluate(
        """(gd, p) => { const fl = gd._fullLayout, xa = fl.xaxis, ya = fl.yaxis;
             return [xa._offset + xa.d2p(p[0]), ya._offset + ya.d2p(p[1])]; }""", [x, y])
    box = plot.bounding_box()
    page.mouse.move(box["x"] + px_x, box["y"] + px_y, steps=3)
    page.wait_for_timeout(300)  # let plotly register the hover before the click
    page.mouse.click(box["x"] + px_x, box["y"] + px_y)


def test_click_drills_down_and_box_selection_is_written_and_dvc_sees_it(tmp_path):
    need_chromium()
    project = make_project(tmp_path / "proj")
    dvc(["exp", "run", "-q", "-S", "toy.angle=40", "--name", "turned"], project)
    assert "select" not in json.loads(dvc(["status", "--json"], project) or "{}")
    table = pd.read_parquet(project / "results" / "parts" / "embed.parquet")
    with streamlit_server(project) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/Landscape")
        page.get_by_role("heading", name="Structural landscape").wait_for(timeout=60_000)
        plot = page.locator(".js-plotly-plot").first
        plot.locator(".nsewdrag").first.wait_for(timeout=60_000)
        page.wait_for_timeout(500)
        # a plain click in the page's default mouse mode drills down into that average
        target = isolated_point(table)
        row = table[table["average_id"] == target].iloc[0]
        click_point(page, plot, float(row["pc_1"]), float(row["pc_2"]))
        page.get_by_text(f"Member frames of average #{target}").wait_for(timeout=60_000)
        # the drill-down's table names the same average
        info = page.get_by_role("row").filter(has=page.get_by_role("cell", name="average_id",
                                                                  exact=True))
        assert info.get_by_role("cell").nth(1).inner_text().strip() == str(target)
        # switch to the baseline commit (from the DVC cache) and back to the workspace
        choose_run(page, "commit")
        page.get_by_text("Browsing commit").wait_for(timeout=60_000)
        choose_run(page, "workspace")
        page.get_by_text("Browsing commit").wait_for(state="detached", timeout=60_000)
        plot = page.locator(".js-plotly-plot").first
        drag = plot.locator(".nsewdrag").first
        drag.wait_for(timeout=60_000)
        page.get_by_text("drag: box select").click()
        page.wait_for_timeout(1000)
        drag = plot.locator(".nsewdrag").first
        box = drag.bounding_box()
        # a real mouse drag over the middle of the plot (plotly box select)
        x0, x1 = box["x"] + 0.30 * box["width"], box["x"] + 0.75 * box["width"]
        y0, y1 = box["y"] + 0.20 * box["height"], box["y"] + 0.80 * box["height"]
        # the data range of that pixel box, from plotly's own axis mapping
        rng = plot.evaluate(
            """(gd, b) => { const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                 return [xa.p2d(b[0]), xa.p2d(b[1]), ya.p2d(b[2]), ya.p2d(b[3])]; }""",
            [x0 - box["x"], x1 - box["x"], y0 - box["y"], y1 - box["y"]])
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
        page.mouse.move(x1, y1, steps=5)
        page.mouse.up()
        name_box = page.get_by_role("textbox", name="selection name")
        name_box.wait_for(timeout=60_000)
        name_box.fill("middle-region")
        page.get_by_role("button", name="Save selection").click()
        page.get_by_text("Saved").first.wait_for(timeout=60_000)
        assert page.locator("[data-testid='stException']").count() == 0

    saved = json.loads((project / "selections" / "middle-region.json").read_text())
    assert saved["kind"] == "averages" and saved["name"] == "middle-region"
    # which averages lie inside the dragged box, by plotly's own pixel -> data mapping;
    # points within 2 px of an edge may fall either way (rounding of the mouse position)
    xs, ys = table["pc_1"].to_numpy(), table["pc_2"].to_numpy()
    px_x = abs(rng[1] - rng[0]) / (x1 - x0)
    px_y = abs(rng[3] - rng[2]) / (y1 - y0)
    margin_x = np.minimum(xs - min(rng[:2]), max(rng[:2]) - xs) / px_x
    margin_y = np.minimum(ys - min(rng[2:]), max(rng[2:]) - ys) / px_y
    margin = np.minimum(margin_x, margin_y)
    ids = table["average_id"].to_numpy()
    surely_in, surely_out = set(ids[margin > 2].tolist()), set(ids[margin < -2].tolist())
    assert len(surely_in) >= 3 and len(surely_out) >= 3
    assert surely_in <= set(saved["average_ids"])
    assert not surely_out & set(saved["average_ids"])
    status = json.loads(dvc(["status", "--json"], project))
    assert "select" in status and "toy" not in status
    assert "selections" in json.dumps(status["select"])
