"""The ``frames`` stage's input as a CXI file (``entry_1/data_1/data`` and the detector and
source groups of ``entry_1/instrument_1``)."""

from __future__ import annotations

from functools import partial

import h5py
import numpy as np
import pytest

from .corpus import (
    SIDE,
    Cases,
    cases_test,
    check_ingests_intact,
    chunked_claim,
    delete,
    edited_copy,
    fill,
    frames_cmd,
    replace,
)

CASES = Cases()
DATA = "entry_1/data_1/data"
DETECTOR = "entry_1/instrument_1/detector_1"


def cxi_input(base, d, path):
    return frames_cmd(d, input=str(path), format="cxi")


CASES.add_file_defects("input-cxi", "run.cxi", cxi_input)


def edited_cxi(base, d, *, edits, needles, data=None):
    """Case: a copy of the intact run.cxi with ``edits``; the error names run.cxi and ``needles``."""
    p = edited_copy(base / "run.cxi", d, *edits)
    return frames_cmd(d, input=str(p), **(data or {})), ["run.cxi", *needles]


CASES.add("cxi-data-missing", "missing-field",
          partial(edited_cxi, edits=[delete(DATA)], needles=[DATA, "missing"], data={"format": "cxi"}))
# without ``format`` the file is no longer recognised as CXI at all
CASES.add("cxi-unrecognised-auto", "missing-field",
          partial(edited_cxi, edits=[delete(DATA)], needles=["unrecognised"]))
CASES.add("cxi-1d-data", "wrong-shape",
          partial(edited_cxi, edits=[replace(DATA, np.arange(20, dtype=np.int32))], needles=[DATA]))
CASES.add("cxi-mask-wrong-shape", "wrong-shape",
          partial(edited_cxi, edits=[replace(f"{DETECTOR}/mask", np.zeros((SIDE - 2, SIDE), np.uint16))],
                  needles=["detector_1/mask", "shape"]))
CASES.add("cxi-all-masked", "nothing-left",
          partial(edited_cxi, edits=[fill(f"{DETECTOR}/mask", 1)], needles=["mask", "masked"]))
# the corner position would also give the distance: both go
CASES.add("cxi-distance-missing", "missing-field",
          partial(edited_cxi, edits=[delete(f"{DETECTOR}/distance", f"{DETECTOR}/corner_position")],
                  needles=["detector_1/distance", "missing"]))
CASES.add("cxi-distance-string", "wrong-dtype",
          partial(edited_cxi, edits=[replace(f"{DETECTOR}/distance", b"far")], needles=["detector_1/distance"]))
CASES.add("cxi-no-energy", "missing-field",
          partial(edited_cxi, edits=[delete("entry_1/instrument_1/source_1")],
                  needles=["source_1/energy", "wavelength_nm"]))


def claims_frames(base, d, n):
    """run.cxi whose data, rewritten chunked, claims ``n`` frames of which 4 were written."""
    p = edited_copy(base / "run.cxi", d, delete(DATA), name="claims.cxi")
    with h5py.File(p, "a") as h5:
        chunked_claim(h5, DATA, n)
    return frames_cmd(d, input=str(p)), ["claims.cxi", DATA, str(n)]


CASES.add("cxi-claims-1e6-frames", "too-large", partial(claims_frames, n=10**6))
CASES.add("cxi-claims-1e8-frames", "too-large", partial(claims_frames, n=10**8))


test_bad_input_fails_cleanly = cases_test(CASES)


@pytest.mark.slow
def test_intact_cxi_ingests(base, tmp_path):
    check_ingests_intact(base, tmp_path, "run.cxi")
