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
