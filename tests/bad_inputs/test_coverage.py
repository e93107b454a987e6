"""The corpus covers what it claims: every input family has its module, and each module's cases
cover exactly the defect kinds ``corpus.COVERAGE`` declares for that family."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from .corpus import COVERAGE


def family_cases(family):
    return importlib.import_module(f"{__package__}.test_{family}").CASES


@pytest.mark.parametrize("family", sorted(COVERAGE))
def test_family_covers_the_defects_it_claims(family):
    kinds = family_cases(family).kinds()
    assert kinds >= COVERAGE[family], f"{family}: no case of {sorted(COVERAGE[family] - kinds)}"
    assert kinds <= COVERAGE[family], f"{family}: cases of undeclared {sorted(kinds - COVERAGE[family])}"


def test_every_family_module_declares_its_coverage():
    """A family module added to the package must state in COVERAGE what it covers."""
    modules = {p.stem.removeprefix("test_") for p in Path(__file__).parent.glob("test_*.py")}
    assert modules - {"coverage"} == set(COVERAGE)


def test_case_names_are_unique_across_families():
    names = [name for family in COVERAGE for name in family_cases(family)]
    assert len(names) == len(set(names))


def test_in_process_runner_sees_what_a_process_would_print(tmp_path, monkeypatch):
    """Cases run ``cli.main`` in the test process (one per family still as a real process):
    that runner must be as strict as a subprocess, so a Python warning, a logged warning and
    a C-level write to file descriptor 2 made while the stage runs all reach its stderr."""
    import logging
    import os
    import warnings

    from spicompute import cli

    from .corpus import frames_cmd, run_cli

    real = cli.check_writable

    def noisy(args):
        warnings.warn("a user warning", UserWarning)
        logging.getLogger("spicompute.noisy").warning("a logged warning")
        os.write(2, b"HDF5-DIAG: a C-level message\n")
        return real(args)

    monkeypatch.setattr(cli, "check_writable", noisy)
    proc = run_cli(frames_cmd(tmp_path, input=str(tmp_path / "missing.h5")), tmp_path,
                   in_process=True)
    assert proc.returncode == 2
    for text in ("a user warning", "a logged warning", "HDF5-DIAG: a C-level message",
                 "spicompute frames: error: "):
        assert text in proc.stderr, (text, proc.stderr)
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) >= 4
