"""The ``frames`` stage's input as a Dragonfly photon file (``photons.emc``: sparse counts in
``place_ones``, ``place_multi``, ``count_multi``) and its detector file (``det.h5``: ``qx``,
``qy``, ``qz``, ``corr``, ``mask``, ``ewald_rad``)."""

from __future__ import annotations

from functools import partial

import h5py
import numpy as np
import pytest

from .corpus import (
    DRAGONFLY,
    SIDE,
    Cases,
    cases_test,
    check_ingests_intact,
    cut,
    delete,
    edit_vlen,
    edited_copy,
    frames_cmd,
    poke,
    replace,
)

CASES = Cases()


def photons_input(base, d, path):
    return frames_cmd(d, input=str(path), detector=str(base / "det.h5"), format="dragonfly", **DRAGONFLY)


def detector_input(base, d, path):
    return dragonfly_cmd(d, base / "photons.emc", path)


def dragonfly_cmd(d, photons, detector, **data):
    return frames_cmd(d, input=str(photons), detector=str(detector), **{**DRAGONFLY, **data})


CASES.add_file_defects("input-dragonfly", "photons.emc", photons_input)
CASES.add_file_defects("dragonfly-detector", "det.h5", detector_input)


# ---- the detector file
def edited_detector(base, d, *, edits, needles):
    """Case: the intact photons with a copy of det.h5 broken by ``edits``."""
    det = edited_copy(base / "det.h5", d, *edits)
    return dragonfly_cmd(d, base / "photons.emc", det), needles


N_SHORT = SIDE * SIDE - 5
# the detector file describes fewer pixels than the photon file's num_pix: it names both
CASES.add("dragonfly-detector-pixel-count-mismatch", "wrong-shape",
          partial(edited_detector, edits=[cut(("qx", "qy", "qz", "corr", "mask"), N_SHORT)],
                  needles=["photons.emc", "num_pix", str(N_SHORT)]))
CASES.add("dragonfly-detector-qx-missing", "missing-field",
          partial(edited_detector, edits=[delete("qx")], needles=["det.h5", "qx", "missing"]))
CASES.add("dragonfly-detector-nan", "non-finite",
          partial(edited_detector, edits=[poke("qx", 3, np.nan)], needles=["det.h5", "qx", "NaN"]))
CASES.add("dragonfly-detector-lengths-differ", "wrong-shape",
          partial(edited_detector, edits=[replace("corr", np.ones(7))], needles=["det.h5", "corr", "entries"]))
CASES.add("dragonfly-detector-all-masked", "nothing-left",
          partial(edited_detector, edits=[replace("mask", np.full(SIDE * SIDE, 2, np.uint8))],
                  needles=["photons.emc", "mask", "masked"]))
CASES.add("dragonfly-detector-ewald-negative", "negative",
          partial(edited_detector, edits=[replace("ewald_rad", -3.0)], needles=["det.h5", "ewald_rad"]))


@CASES.case("dragonfly-no-detector-param", "missing-field")
def no_detector_param(base, d):
    return frames_cmd(d, input=str(base / "photons.emc"), **DRAGONFLY), ["data.detector"]


@CASES.case("dragonfly-no-wavelength", "missing-field")
def no_wavelength(base, d):
    return (frames_cmd(d, input=str(base / "photons.emc"), detector=str(base / "det.h5")),
            ["det.h5", "wavelength"])


# ---- the photon file
def edited_photons(base, d, *, edits, needles, data=None):
    """Case: a copy of photons.emc broken by ``edits`` with the intact detector file."""
    p = edited_copy(base / "photons.emc", d, *edits)
    return dragonfly_cmd(d, p, base / "det.h5", **(data or {})), ["photons.emc", *needles]


def one_more_count(rows):
    """count_multi of frame 0 gets one entry more than place_multi."""
    rows[0] = np.append(rows[0], 5).astype(np.int32)


def pixel_beyond_detector(rows):
    """place_ones of frame 1 gets a pixel index past the detector's last pixel."""
    rows[1] = np.append(rows[1], SIDE * SIDE + 3).astype(np.int32)


def negate_first_counts(rows):
    """The first non-empty count_multi row is made negative."""
    i = next(i for i, a in enumerate(rows) if len(a))
    rows[i] = -rows[i]


CASES.add("dragonfly-count-multi-length", "wrong-shape",
          partial(edited_photons, edits=[edit_vlen("count_multi", one_more_count)], needles=["count_multi"]))
CASES.add("dragonfly-pixel-index-out-of-range", "out-of-range",
          partial(edited_photons, edits=[edit_vlen("place_ones", pixel_beyond_detector)], needles=["place_ones"]))
CASES.add("dragonfly-negative-counts", "negative",
          partial(edited_photons, edits=[edit_vlen("count_multi", negate_first_counts)], needles=["count_multi"]))
CASES.add("dragonfly-place-ones-missing", "missing-field",
          partial(edited_photons, edits=[delete("place_ones")], needles=["place_ones", "missing"],
                  data={"format": "dragonfly"}))


def claims_frames(base, d, n):
    """A tiny photon file whose chunked vlen datasets claim ``n`` frames; only frame 0 is set."""
    p = d / "claims.emc"
    vint = h5py.vlen_dtype(np.int32)
    with h5py.File(p, "w") as h5:
        h5["num_pix"] = np.array([SIDE * SIDE], np.int32)
        for key in ("place_ones", "place_multi", "count_multi"):
            ds = h5.create_dataset(key, (n,), dtype=vint, chunks=(1024,))
            ds[0] = np.array([1, 2], np.int32) if key != "count_multi" else np.array([2, 2], np.int32)
    return dragonfly_cmd(d, p, base / "det.h5"), ["claims.emc", "place_ones", str(n)]


CASES.add("dragonfly-claims-1e6-frames", "too-large", partial(claims_frames, n=10**6))
CASES.add("dragonfly-claims-1e8-frames", "too-large", partial(claims_frames, n=10**8))


test_bad_input_fails_cleanly = cases_test(CASES)


@pytest.mark.slow
def test_intact_dragonfly_ingests(base, tmp_path):
    check_ingests_intact(base, tmp_path, "photons.emc", detector=str(base / "det.h5"), **DRAGONFLY)
