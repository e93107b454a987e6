"""Selections, Training and home pages (AppTest) on tiny workspaces, incl. missing/corrupt files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO
from dashboard.data import selections

PAGES = REPO / "dashboard" / "pages"


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    parts = tmp_path / "results" / "parts"
    parts.mkdir(parents=True)
    pd.DataFrame({"average_id": [1, 2, 3], "run": 0, "model": [0, 1, 2],
                  "n_frames": [2.0, 1.0, 1.0]}).to_parquet(parts / "classify2d.parquet")
    pd.DataFrame({"frame_id": [10, 11, 12, 13], "run": 0, "average_id": [1, 1, 2, 3],
                  "rotation_deg": 0.0}).to_parquet(tmp_path / "results" / "frames.parquet")
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path


def test_selections_list_export_rename_delete(workspace):
    selections.save(workspace, "first", [1, 3], note="<script>alert(1)</script> **bold**")
    selections.save(workspace, "second", [2])
    (workspace / "selections" / "broken.json").write_text("{nope")
    at = AppTest.from_file(str(PAGES / "6_Selections.py"), default_timeout=60).run()
    assert not at.exception
    assert set(at.dataframe[0].value["name"]) == {"first", "second"}
    assert any("broken" in w.value and "not valid JSON" in w.value for w in at.warning)
    # the note is shown verbatim as text, not as markdown/HTML
    assert any(t.value == "note: <script>alert(1)</script> **bold**" for t in at.text)
    assert at.metric[0].value == "3"  # frames 10, 11 (average 1) and 13 (average 3)
    at.text_input(key="new_name").set_value("../escape")
    next(b for b in at.button if b.label == "Rename").click().run()
    assert not at.exception and any("selection name" in e.value for e in at.error)
    assert not (workspace / "escape.json").exists()
    at.text_input(key="new_name").set_value("[x](http://evil.example)")
    next(b for b in at.button if b.label == "Rename").click().run()
    # the name is echoed as inert text: markdown characters escaped, no link
    assert any("\\[x\\]\\(http\\://evil" in e.value for e in at.error)
    at.text_input(key="new_name").set_value("renamed")
    next(b for b in at.button if b.label == "Rename").click().run()
    assert not at.exception
    assert (workspace / "selections" / "renamed.json").exists()
    assert not (workspace / "selections" / "first.json").exists()
    at.selectbox(key="selection").select("second").run()
    at.checkbox(key="confirm_delete").check()
    next(b for b in at.button if b.label == "Delete").click().run()
    assert not at.exception
    assert not (workspace / "selections" / "second.json").exists()


def test_selections_page_without_selections(workspace):
    at = AppTest.from_file(str(PAGES / "6_Selections.py"), default_timeout=60).run()
    assert not at.exception and any("No selections yet" in i.value for i in at.info)


def _curve(folder, name, values):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"timestamp": 0, "step": np.arange(len(values)), name: values}).to_csv(
        folder / f"{name}.tsv", sep="\t", index=False)


def test_training_curves_missing_and_corrupt(workspace):
    at = AppTest.from_file(str(PAGES / "9_Training.py"), default_timeout=60).run()
    assert not at.exception and sum("No dvclive" in i.value for i in at.info) == 2
    reg = workspace / "dvclive" / "regress" / "plots" / "metrics"
    _curve(reg, "train_loss", [1.0, 0.5, 0.3])
    _curve(reg, "val_loss", [1.2, 0.7, 0.6])
    vae = workspace / "dvclive" / "vae" / "plots" / "metrics"
    _curve(vae, "loss", [3.0, 2.0])
    _curve(vae, "kl_beta", [0.0, 1.0])
    at = AppTest.from_file(str(PAGES / "9_Training.py"), default_timeout=60).run()
    assert not at.exception
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    names = sorted(t["name"] for s in specs for t in s["data"])
    assert names == ["kl_beta", "loss", "train_loss", "val_loss"]
    (vae / "loss.tsv").write_text("garbage\n1\n")
    at = AppTest.from_file(str(PAGES / "9_Training.py"), default_timeout=60).run()
    assert not at.exception
    assert any("loss.tsv" in e.value and "expected columns" in e.value for e in at.error)


def test_home_page_missing_outputs_and_invalid_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "embed.json").write_text("[1, 2")
    (tmp_path / "metrics" / "orient.json").write_text(json.dumps({"best_cc_mean": 0.8}))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("Nothing produced yet" in i.value for i in at.info)
    assert any("embed.json" in w.value and "invalid JSON" in w.value for w in at.warning)
    assert "best_cc_mean" in set(at.dataframe[1].value["metric"])
