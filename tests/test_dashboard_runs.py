"""Runs page and run switching (AppTest) on a tiny git + DVC project with an experiment."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, decode_plotly_array
from tests.dashboard_project import dvc, make_project

pytestmark = pytest.mark.slow
RUNS = str(REPO / "dashboard" / "pages" / "7_Experiments.py")
APP = str(REPO / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("runs") / "proj")
    dvc(["exp", "run", "-q", "-S", "toy.angle=40", "-S", "toy.shift=1", "--name", "turned"], root)
    return root


def test_runs_table_and_two_run_comparison(project, monkeypatch):
    monkeypatch.setenv("SPI_WORKSPACE", str(project))
    at = AppTest.from_file(RUNS, default_timeout=120).run()
    assert not at.exception
    listing = at.dataframe[0].value
    assert {"workspace", "turned"} <= set(listing["name"])
    row = listing.set_index("name").loc["turned"]
    assert row["changed params"] == "toy.angle=40, toy.shift=1" and row["kind"] == "experiment"
    base = listing[listing["kind"] == "commit"].iloc[0]
    assert base["silhouette"] == pytest.approx(0.5)  # HEAD's metrics are in git
    # default comparison: the experiment (A) against the baseline commit (B)
    frames = [d.value for d in at.dataframe]
    pdiff = frames[1].set_index("key")
    assert pdiff.loc["toy.angle", "A"] == "40" and pdiff.loc["toy.angle", "B"] == "0"
    mdiff = frames[2].set_index("key")
    sil = [k for k in mdiff.index if k.endswith("silhouette")][0]
    assert mdiff.loc[sil, "B − A"] == pytest.approx(-0.1)
    assert any("relative residual 0.00" in m.value for m in at.markdown)  # a pure rotation
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    a, b = spec["data"][0], spec["data"][1]
    assert np.allclose(decode_plotly_array(a["x"]), decode_plotly_array(b["x"]), atol=1e-6)
    clusters = frames[-1]
    assert clusters["best match"].tolist() == [2, 0, 1] or clusters["best match"].tolist() == [1, 2, 0]
    assert np.allclose(clusters["jaccard"], 1.0)


def test_run_picker_switches_every_page(project, monkeypatch):
    monkeypatch.setenv("SPI_WORKSPACE", str(project))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/3_Landscape.py").run()
    assert not at.exception
    work = pd.read_parquet(project / "results/parts/embed.parquet")

    def xs():
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        return np.sort(np.concatenate([decode_plotly_array(t["x"]) for t in spec["data"]
                                       if t.get("name") != "selected"]))

    assert np.allclose(xs(), np.sort(work["pc_1"]))
    picker = at.sidebar.selectbox(key="_run_picker")
    from dashboard.data import runs

    commit = next(r.rev for r in runs.list_runs(project, 1) if r.kind == "commit")
    picker.select(commit).run()
    assert not at.exception
    assert at.session_state["run_rev"] == commit
    assert not np.allclose(xs(), np.sort(work["pc_1"]))  # the baseline, from the DVC cache
    # the choice holds on another page
    at.switch_page("pages/7_Experiments.py").run()
    assert not at.exception
    assert at.session_state["run_rev"] != "workspace"
