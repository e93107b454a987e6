"""The averages file (``averages/intensity``, ``averages/weight`` ...) as ``ccmatrix`` and
``orient`` read it."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from .corpus import (
    Cases,
    cases_test,
    cc_cmd,
    delete,
    edited_copy,
    intact_averages,
    orient_cmd,
    poke,
    replace,
    run_ok,
)

CASES = Cases()


def cc_input(base, d, path):
    return cc_cmd(d, path)


CASES.add_file_defects("averages", "averages.h5", cc_input)


def edited_averages(base, d, *, edits, needles):
    """Case: ccmatrix on a copy of the intact averages.h5 broken by ``edits``."""
    return cc_cmd(d, edited_copy(base / "averages.h5", d, *edits)), ["averages.h5", *needles]


CASES.add("averages-weight-missing", "missing-field",
          partial(edited_averages, edits=[delete("averages/weight")], needles=["averages/weight", "missing"]))
CASES.add("averages-nan", "non-finite",
          partial(edited_averages, edits=[poke("averages/intensity", (1, 3, 3), np.nan)],
                  needles=["averages/intensity", "NaN"]))
CASES.add("averages-1d-intensity", "wrong-shape",
          partial(edited_averages, edits=[replace("averages/intensity", np.ones(6, np.float32))],
                  needles=["averages/intensity"]))


def written_averages(base, d, *, needles, **make):
    """Case: ccmatrix on a valid averages file of ``intact_averages(**make)``."""
    from spicompute.io.averages import write_averages

    write_averages(d / "averages.h5", intact_averages(**make))
    return cc_cmd(d, d / "averages.h5"), ["averages.h5", *needles]


CASES.add("averages-all-unobserved", "nothing-left", partial(written_averages, empty=True, needles=["averages"]))
CASES.add("averages-single", "nothing-left", partial(written_averages, m=1, needles=["only 1"]))
CASES.add("averages-zero", "nothing-left", partial(written_averages, m=0, needles=["no averages"]))


@CASES.case("orient-averages-missing", "missing")
def orient_averages_missing(base, d):
    return orient_cmd(d, d / "averages.h5"), ["averages.h5", "not found"]


test_bad_input_fails_cleanly = cases_test(CASES)


@pytest.mark.slow
def test_intact_averages_pass(base, tmp_path):
    run_ok(cc_cmd(tmp_path, base / "averages.h5"), tmp_path)
    assert (tmp_path / "out" / "cc.h5").exists()
