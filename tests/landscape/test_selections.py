"""Selection files (dashboard -> pipeline) and the select stage's rules."""

import json

import numpy as np
import pandas as pd
import pytest

from spicompute.errors import InputError, ParameterError
from spicompute.landscape.selections import (apply_rule, list_selections, members, read_selection, selection_path,
                                   validate_name, write_selection)
from spicompute.stages.select import options
from spicompute.landscape.training_set import select_averages


@pytest.fixture()
def table():
    rng = np.random.default_rng(0)
    n = 40
    return pd.DataFrame({"average_id": np.arange(n), "n_frames": np.r_[np.full(n - 4, 100.0), [1, 2, 3, 4]],
                         "pc_1": np.linspace(-1, 1, n), "cluster": np.arange(n) % 3,
                         "gain": rng.uniform(1, 2, n)})


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 65, "a b", "name.json", "a..b"])
def test_names_cannot_leave_the_folder(bad):
    with pytest.raises(ValueError):
        validate_name(bad)
    with pytest.raises(ValueError):
        selection_path("selections", bad)


def test_write_read_round_trip(tmp_path):
    path = write_selection(tmp_path, "early-melt", average_ids=[5, 3, 3], note="<b>not html</b>")
    sel = read_selection(path)
    assert sel["average_ids"] == [3, 5] and sel["kind"] == "averages" and sel["note"] == "<b>not html</b>"
    write_selection(tmp_path, "line", kind="latent_points", points=[[0.5], [-1.0]])
    assert [s["name"] for s in list_selections(tmp_path)] == ["early-melt", "line"]
    assert [s["name"] for s in list_selections(tmp_path, kind="latent_points")] == ["line"]
    with pytest.raises(FileExistsError):
        write_selection(tmp_path, "line", kind="latent_points", points=[[0.0]])


@pytest.mark.parametrize("payload,field", [
    ({"name": "x", "kind": "averages"}, "average_ids"),
    ({"name": "x", "average_ids": ["a"]}, "average_ids"),
    ({"name": "../x", "average_ids": [1]}, "name"),
    ({"name": "x", "kind": "bogus", "average_ids": [1]}, "kind"),
    ({"name": "x", "kind": "latent_points", "points": [[1.0], [float("nan")]]}, "points"),
    ({"name": "x", "rule": {"pc_1": "high"}}, "rule.pc_1"),
])
def test_bad_selection_files_name_the_field(tmp_path, payload, field):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(InputError) as exc:
        read_selection(path)
    assert str(path) in str(exc.value) and field in str(exc.value)


def test_not_json_is_an_input_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_selection(path)


def test_rules_ranges_and_values(table):
    keep = apply_rule(table, {"pc_1": {"min": 0.0}, "cluster": [0, 2]})
    expected = (table.pc_1 >= 0) & table.cluster.isin([0, 2])
    assert (keep == expected.to_numpy()).all()
    with pytest.raises(InputError, match="no such column"):
        apply_rule(table, {"nope": [1]})
    sel = {"name": "s", "average_ids": [1, 2, 30], "rule": {"pc_1": {"max": 0.0}}}
    assert table.average_id[members(table, sel)].tolist() == [1, 2]


def test_select_modes(table, tmp_path, monkeypatch):
    sel, reason, thr = select_averages(table, options({"mode": "all"}))
    assert thr == pytest.approx(20.0) and sel.sum() == 36 and set(reason[~sel]) == {"n_frames < 20"}
    sel, reason, _ = select_averages(table, options({"mode": "clusters", "clusters": [1]}))
    assert (table.cluster[sel] == 1).all() and sel.sum() == 12
    sel, _, _ = select_averages(table, options({"mode": "box", "box": {"pc_1": [-0.5, 0.5]}}))
    assert (table.pc_1[sel].abs() <= 0.5).all() and sel.sum() > 0
    sel, _, _ = select_averages(table, options({"mode": "gain", "gain": [1.5, None]}))
    assert (table.gain[sel] >= 1.5).all()
    monkeypatch.chdir(tmp_path)  # selection files live in the workspace's selections/
    path = write_selection(tmp_path / "selections", "few", average_ids=[0, 1, 39])
    sel, reason, _ = select_averages(table, options({"mode": "file", "file": str(path)}))
    assert table.average_id[sel].tolist() == [0, 1]  # 39 has too few frames
    assert reason[2] == "not in selection few"


@pytest.mark.parametrize("raw,name", [({"mode": "lasso"}, "select.mode"), ({"mode": "clusters"}, "select.clusters"),
                                      ({"mode": "box", "box": {"pc_1": 3}}, "select.box"),
                                      ({"min_frames": -1}, "select.min_frames"), ({"mdoe": "all"}, "select.mdoe"),
                                      ({"mode": "file"}, "select.file")])
def test_bad_select_params(raw, name):
    with pytest.raises(ParameterError, match=name.replace(".", r"\.")):
        options(raw)
