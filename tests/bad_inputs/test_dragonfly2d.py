"""Dragonfly 2D output (``output_NNN.h5``: ``intens`` (K, L, L), ``inter_weight``, ``occupancies``
(N, K), ``orientations``, ``scale``, ``quaternions``) and its detector file, as
``import-dragonfly2d`` reads them."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from .corpus import (
    DF2D_K,
    DF2D_L,
    N_FRAMES,
    Cases,
    cases_test,
    delete,
    edited_copy,
    import_cmd,
    not_hdf5,
    replace,
    run_ok,
)

CASES = Cases()
K, L = DF2D_K, DF2D_L


def import_output(base, d, path):
    return import_cmd(d, path, base / "det.h5")


CASES.add_file_defects("dragonfly2d", "output_010.h5", import_output)


def edited_output(base, d, *, edits, needles):
    """Case: import of a copy of the intact output_010.h5 broken by ``edits``."""
    p = edited_copy(base / "output_010.h5", d, *edits)
    return import_cmd(d, p, base / "det.h5"), ["output_010.h5", *needles]


OUTPUT_EDITS = {
    "intens-missing": ("missing-field", delete("intens"), ["intens", "missing"]),
    "intens-2d": ("wrong-shape", replace("intens", np.ones((L, L))), ["intens", "(K, L, L)"]),
    "intens-3d-volume": ("wrong-shape", replace("intens", np.ones((K, L, L - 1))), ["intens"]),
    "intens-nan": ("non-finite", replace("intens", np.full((K, L, L), np.nan)), ["intens", "NaN"]),
    "intens-strings": ("wrong-dtype", replace("intens", np.array([b"a", b"b"])), ["intens"]),
    "occupancies-wrong-shape": ("wrong-shape", replace("occupancies", np.ones((N_FRAMES, 5))), ["occupancies"]),
    "scale-missing": ("missing-field", delete("scale"), ["scale", "missing"]),
    "orientations-out-of-range": ("out-of-range", replace("orientations", np.full(N_FRAMES, 10**6)),
                                  ["orientations"]),
    "inter-weight-shape": ("wrong-shape", replace("inter_weight", np.ones((K, 5, 5))), ["inter_weight"]),
    "intens-negative": ("negative", replace("intens", -np.ones((K, L, L))), ["intens", "negative"]),
}
for _name, (_kind, _edit, _needles) in OUTPUT_EDITS.items():
    CASES.add(f"dragonfly2d-{_name}", _kind, partial(edited_output, edits=[_edit], needles=_needles))


@CASES.case("dragonfly2d-no-wavelength", "missing-field")
def no_wavelength(base, d):
    return import_cmd(d, base / "output_010.h5", base / "det.h5", wavelength=None), ["wavelength_nm"]


@CASES.case("dragonfly2d-detector-not-hdf5", "not-hdf5")
def detector_not_hdf5(base, d):
    return import_cmd(d, base / "output_010.h5", not_hdf5(base / "det.h5", d)), ["det.h5"]


@CASES.case("dragonfly2d-detector-no-ewald", "missing-field")
def detector_no_ewald(base, d):
    det = edited_copy(base / "det.h5", d, delete("ewald_rad"))
    return import_cmd(d, base / "output_010.h5", det), ["det.h5", "ewald_rad"]


test_bad_input_fails_cleanly = cases_test(CASES)


@pytest.mark.slow
def test_intact_dragonfly2d_imports(base, tmp_path):
    run_ok(import_cmd(tmp_path, base / "output_010.h5", base / "det.h5"), tmp_path)
    assert (tmp_path / "out" / "averages.h5").exists()
