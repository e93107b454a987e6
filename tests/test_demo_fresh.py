"""benchmarks/demo_fresh.py: where the first make demo's time went, from its output lines."""

from __future__ import annotations

import pytest

from tests.conftest import load_benchmark


def test_stage_spans_run_from_one_stage_line_to_the_next_and_the_last_to_the_dashboard():
    m = load_benchmark("demo_fresh")
    events = [(0.0, "python3 -m venv .venv"), (50.0, "Running stage 'frames':"), (51.0, "> spicompute frames"),
              (66.5, "Running stage 'classify2d':"), (300.0, "Stage 'ccmatrix' didn't change, skipping"),
              (306.0, "Running stage 'validate':"), (312.5, 'Dashboard on http://127.0.0.1:8599 (Ctrl-C stops it)')]
    assert m.stage_spans(events) == {"frames": 16.5, "classify2d": 239.5, "validate": 6.5}
    assert m.stage_spans(events[:-1])["validate"] is None     # the pipeline never finished


def test_a_non_empty_keep_folder_is_refused(tmp_path):
    m = load_benchmark("demo_fresh")
    (tmp_path / "something").write_text("x")
    with pytest.raises(SystemExit, match="not empty"):
        m.main(["--keep", str(tmp_path)])
