"""The reference volume of ``orient`` (``volume`` or ``volumes[volume_index]``, attribute
``dq_nm``)."""

from __future__ import annotations

from functools import partial

import h5py
import numpy as np
import pytest

from .corpus import Cases, cases_test, h5_file, orient_cmd, run_ok

CASES = Cases()


def orient_reference(base, d, path):
    return orient_cmd(d, base / "averages.h5", reference=str(path))


CASES.add_file_defects("reference", "volume.h5", orient_reference)


def written_reference(base, d, **datasets):
    """Case: orient with a new volume.h5 holding ``datasets``; the error names volume.h5."""
    return orient_reference(base, d, h5_file(d, "volume.h5", **datasets)), ["volume.h5"]


CASES.add("reference-no-volume-dataset", "missing-field", partial(written_reference, other=np.ones(3)))
CASES.add("reference-2d-volume", "wrong-shape", partial(written_reference, volume=np.ones((5, 5))))
CASES.add("reference-string-volume", "wrong-dtype", partial(written_reference, volume=np.array([b"abc"])))
CASES.add("reference-no-dq", "missing-field", partial(written_reference, volume=np.ones((5, 5, 5))))


@CASES.case("reference-nan", "non-finite")
def reference_nan(base, d):
    vol = np.ones((5, 5, 5), np.float32)
    vol[2, 2, 2] = np.nan
    p = h5_file(d, "volume.h5", volume=vol)
    with h5py.File(p, "a") as h5:
        h5.attrs["dq_nm"] = 0.03
    return orient_reference(base, d, p), ["volume.h5", "volume", "NaN"]


@CASES.case("reference-index-out-of-range", "out-of-range")
def reference_index_out_of_range(base, d):
    p = h5_file(d, "volume.h5", volumes=np.ones((2, 5, 5, 5), np.float32), dq_nm=0.03)
    return (orient_cmd(d, base / "averages.h5", reference=str(p), volume_index=5),
            ["volume.h5", "volumes", "index 5"])


test_bad_input_fails_cleanly = cases_test(CASES)


@pytest.mark.slow
def test_intact_reference_passes(base, tmp_path):
    import pandas as pd

    run_ok(orient_cmd(tmp_path, base / "averages.h5", reference=str(base / "volume.h5"), edge_nm=20.0), tmp_path)
    assert len(pd.read_parquet(tmp_path / "out" / "o.parquet")) == 6
