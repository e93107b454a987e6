"""The Landscape page marks what the select stage keeps (AppTest on a tiny workspace)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from conftest import decode_plotly_array  # tests/ is on sys.path (rootdir conftest)
from test_dashboard_landscape import M, PAGE, workspace  # noqa: F401  (workspace is a fixture)

DROPPED = [101, 104, 105, 110]
SEED = [100, 102]


def _select_outputs(root, purity=0.97):
    ids = np.arange(M) + 100
    selected = ~np.isin(ids, DROPPED)
    pd.DataFrame({"average_id": ids, "selected": selected,
                  "reason": np.where(selected, "selected", "not in the cube-end family"),
                  "family": selected, "family_seed": np.isin(ids, SEED)}
                 ).to_parquet(root / "results/parts/select.parquet", index=False)
    (root / "metrics/select.json").write_text(json.dumps(
        {"mode": "family", "n_selected": int(selected.sum()), "n_averages": M,
         "family_purity": purity, "family_recall": 0.9}))


def _trace(at, name):
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    return [t for t in spec["data"] if t.get("name") == name]


def test_dropped_averages_and_seed_are_marked(workspace):  # noqa: F811
    _select_outputs(workspace)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    caption = " ".join(c.value for c in at.caption)
    assert "keeps 8 of 12 averages" in caption and "97.0%" in caption and "select.mode: file" in caption
    part = pd.read_parquet(workspace / "results/parts/embed.parquet").set_index("average_id")
    dropped = _trace(at, "dropped by select")
    assert len(dropped) == 1
    assert np.allclose(np.sort(decode_plotly_array(dropped[0]["x"])), np.sort(part.loc[DROPPED, "pc_1"]))
    seed = _trace(at, "cube-end seed")
    assert len(seed) == 1 and np.allclose(np.sort(decode_plotly_array(seed[0]["y"])),
                                          np.sort(part.loc[SEED, "pc_2"]))
    # the marks follow the view: 3D draws them too; the checkbox turns them off
    at.radio(key="dims").set_value("3D").run()
    assert not at.exception and len(_trace(at, "dropped by select")) == 1
    at.checkbox(key="show_training").uncheck().run()
    assert not at.exception and not _trace(at, "dropped by select") and not _trace(at, "cube-end seed")
    # "selected" is a colour option
    assert "selected" in at.selectbox(key="color").options


def test_no_marks_before_select_ran(workspace):  # noqa: F811
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert not _trace(at, "dropped by select")
    assert not any("keeps" in c.value for c in at.caption)
    assert not [c for c in at.checkbox if c.key == "show_training"]
