"""Real browser: two tabs on the Selections page, a delete race and a read-only folder.

Tab A deletes a selection; tab B, still showing it, then presses Delete too: B must say
the selection no longer exists and change nothing (in particular not delete the other
selection its rerun now points at), with no error box.  Then the selections folder is
made read-only and a rename is refused with a message, not a traceback.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.dashboard.browser_util import chromium, need_chromium, streamlit_server
from tests.dashboard.dashboard_project import make_project

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def open_selections(browser, url):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(f"{url}/Selections")
    page.get_by_role("heading", name="Selections").first.wait_for(timeout=60_000)
    page.get_by_text("delete alpha").wait_for(timeout=60_000)
    return page


def press_delete(page):
    page.get_by_text("delete alpha").click()  # the confirmation checkbox
    page.get_by_role("button", name="Delete").click()


def test_delete_race_between_two_tabs_and_a_read_only_folder(tmp_path):
    need_chromium()
    project = make_project(tmp_path / "proj")
    folder = project / "selections"
    folder.mkdir(exist_ok=True)
    for name, ids in (("alpha", [1, 2, 3]), ("beta", [4, 5])):
        (folder / f"{name}.json").write_text(json.dumps({"name": name, "kind": "averages", "average_ids": ids}))
    with streamlit_server(project) as url, chromium() as browser:
        tab_a, tab_b = open_selections(browser, url), open_selections(browser, url)
        press_delete(tab_a)
        tab_a.get_by_text("delete beta").wait_for(timeout=60_000)  # A moved on to the remaining one
        assert not (folder / "alpha.json").exists()
        press_delete(tab_b)  # B still shows alpha
        tab_b.get_by_text("no longer exists").wait_for(timeout=60_000)
        assert (folder / "beta.json").exists(), "the stale tab deleted another selection"
        for tab in (tab_a, tab_b):
            assert tab.locator("[data-testid='stException']").count() == 0
        if os.geteuid() != 0:  # root writes into read-only folders anyway
            folder.chmod(0o555)
            try:
                tab_a.get_by_role("textbox", name="new name").fill("gamma")
                tab_a.get_by_role("button", name="Rename").click()
                tab_a.get_by_text("Cannot rename beta").wait_for(timeout=60_000)
                assert tab_a.locator("[data-testid='stException']").count() == 0
            finally:
                folder.chmod(0o755)
