"""Runs page and run switching (AppTest) on a tiny git + DVC project with an experiment."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, decode_plotly_array
from tests.dashboard.dashboard_project import dvc, make_project

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
    assert set(listing["outputs"]) == {"here"}   # every run's outputs are readable
    # default comparison: the baseline commit (A) against the experiment (B): B − A = B minus A
    frames = [d.value for d in at.dataframe]
    pdiff = frames[1].set_index("key")
    assert pdiff.loc["toy.angle", "A"] == "0" and pdiff.loc["toy.angle", "B"] == "40"
    mdiff = frames[2].set_index("key")
    sil = [k for k in mdiff.index if k.endswith("silhouette")][0]
    assert mdiff.loc[sil, "B − A"] == pytest.approx(+0.1)
    assert float(mdiff.loc[sil, "B"]) - float(mdiff.loc[sil, "A"]) == pytest.approx(0.1)
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
                                       if t.get("name") != "selected" and t["type"] != "contour"]))

    assert np.allclose(xs(), np.sort(work["pc_1"]))
    picker = at.sidebar.selectbox(key="_run_picker")
    from dashboard.data import runs

    commit = next(r.rev for r in runs.list_runs(project, 1) if r.kind == "commit")
    picker.select(commit).run()
    assert not at.exception
    assert at.session_state["run_rev"] == commit
    assert not np.allclose(xs(), np.sort(work["pc_1"]))  # the baseline, from the DVC cache
    assert not at.sidebar.warning                          # its outputs are in the cache
    # the choice holds on another page
    at.switch_page("pages/7_Experiments.py").run()
    assert not at.exception
    assert at.session_state["run_rev"] != "workspace"


def test_a_run_whose_outputs_are_not_in_the_cache_is_marked_with_the_command(project, monkeypatch,
                                                                             tmp_path):
    """Moving the commit's cached landscape away makes its outputs unreadable: the picker
    marks the run and says the command that brings them; the Landscape says the same."""
    import shutil

    from dashboard.data import runs

    commit = next(r for r in runs.list_runs(project, 1) if r.kind == "commit")
    cache = project / ".dvc" / "cache"
    aside = tmp_path / "cache"
    shutil.move(str(cache), str(aside))
    browsed = project / ".dvc" / "tmp" / "dashboard"
    shutil.rmtree(browsed, ignore_errors=True)
    runs._READABLE.clear()
    runs._filesystem.cache_clear()
    try:
        monkeypatch.setenv("SPI_WORKSPACE", str(project))
        at = AppTest.from_file(APP, default_timeout=120).run()
        label = at.sidebar.selectbox(key="_run_picker").format_func(commit.rev)
        assert "not in the local cache" in label
        at.sidebar.selectbox(key="_run_picker").select(commit.rev).run()
        assert any("dvc fetch --all-commits" in w.value for w in at.sidebar.warning)
        at.switch_page("pages/3_Landscape.py").run()
        assert not at.exception
        assert any("dvc fetch --all-commits" in i.value for i in at.info)
        assert not any("dvc repro embed" in i.value for i in at.info)
    finally:
        shutil.move(str(aside), str(cache))
        runs._READABLE.clear()
        runs._filesystem.cache_clear()
