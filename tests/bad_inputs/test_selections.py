"""Selection files (``selections/<name>.json``) read by ``select`` in mode ``file``."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from .corpus import Cases, cases_test, copy_file, directory, missing, run_ok, select_cmd

CASES = Cases()


def written_selection(base, d, *, content, needles):
    """Case: select reading selections/bad.json holding ``content`` (str or bytes)."""
    (d / "selections").mkdir()
    p = d / "selections" / "bad.json"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return select_cmd(base, d, p), needles


SELECTIONS = {
    "not-json": ("not-parsable", "{not json", ["bad.json", "JSON"]),
    "truncated": ("not-parsable", json.dumps({"name": "bad", "kind": "averages", "average_ids": [0, 1]})[:25],
                  ["bad.json", "JSON"]),
    "not-an-object": ("not-parsable", "[1, 2, 3]", ["bad.json", "object"]),
    "bad-name": ("bad-value", json.dumps({"name": "../etc", "average_ids": [1]}), ["bad.json", "name"]),
    "unknown-kind": ("bad-value", json.dumps({"name": "bad", "kind": "frames", "average_ids": [1]}),
                     ["bad.json", "kind"]),
    "ids-strings": ("wrong-dtype", json.dumps({"name": "bad", "average_ids": ["a", "b"]}),
                    ["bad.json", "average_ids"]),
    "no-ids-no-rule": ("missing-field", json.dumps({"name": "bad"}), ["bad.json", "average_ids"]),
    "bad-rule": ("bad-value", json.dumps({"name": "bad", "rule": {"pc_1": "high"}}), ["bad.json", "rule.pc_1"]),
    "latent-points-kind": ("bad-value", json.dumps({"name": "bad", "kind": "latent_points", "points": [[0.1]]}),
                           ["bad.json", "kind"]),
    "ids-match-nothing": ("nothing-left", json.dumps({"name": "bad", "average_ids": [99, 100]}),
                          ["bad.json: average_ids", "keeps no average"]),
    "binary": ("not-parsable", b"\x89HDF\r\n\x1a\n\x00\x00\xff\xfe", ["bad.json"]),
}
for _name, (_kind, _content, _needles) in SELECTIONS.items():
    CASES.add(f"selection-{_name}", _kind, partial(written_selection, content=_content, needles=_needles))


@CASES.case("selection-missing", "missing")
def selection_missing(base, d):
    return select_cmd(base, d, missing(Path("gone.json"), d / "selections")), ["gone.json", "not found"]


@CASES.case("selection-directory", "directory")
def selection_directory(base, d):
    (d / "selections").mkdir()
    return select_cmd(base, d, directory(Path("sel.json"), d / "selections")), ["sel.json"]


test_bad_input_fails_cleanly = cases_test(CASES)


@pytest.mark.slow
def test_intact_selection_passes(base, tmp_path):
    import pandas as pd

    (tmp_path / "selections").mkdir()
    good = copy_file(base / "selections" / "good.json", tmp_path / "selections" / "good.json")
    run_ok(select_cmd(base, tmp_path, good), tmp_path)
    sel = pd.read_parquet(tmp_path / "out" / "select.parquet")
    assert sel.loc[sel["selected"], "average_id"].tolist() == [0, 2, 4]
