"""The ``frames`` stage's input as plain HDF5: images under ``data.dataset``, the geometry from
parameters or from a ``data.geometry`` frames file."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest

from .corpus import (
    N_FRAMES,
    PLAIN,
    SIDE,
    Cases,
    cases_test,
    check_ingests_intact,
    chunked_claim,
    frames_cmd,
    h5_file,
    intact_images,
    not_hdf5,
    run_ok,
)

CASES = Cases()


def plain_input(base: Path, d: Path, path: Path) -> list[str]:
    return frames_cmd(d, input=str(path), format="hdf5", **PLAIN)


CASES.add_file_defects("input-hdf5", "plain.h5", plain_input)


def plain_content(base: Path, d: Path, *, data, needles, extra=None):
    """Case: plain.h5 holding ``data`` under ``data`` (or ``data(base)``: computed from the
    intact images); the error names plain.h5 and each of ``needles``."""
    p = h5_file(d, "plain.h5", data=data(base) if callable(data) else data)
    return frames_cmd(d, input=str(p), **{**PLAIN, **(extra or {})}), ["plain.h5", *needles]


def add_content(name, kind, data, needles, **extra):
    CASES.add(f"plain-{name}", kind, partial(plain_content, data=data, needles=needles, extra=extra))


def as_float(base):
    return intact_images(base).astype(np.float64)


def one_nan(base):
    x = as_float(base)
    return np.where(np.arange(x.size).reshape(x.shape) == 700, np.nan, x)


def one_inf(base):
    x = as_float(base)
    return np.where(np.arange(x.size).reshape(x.shape) == 900, np.inf, x)


def minus_two(base):
    return as_float(base) - 2


def non_integer(base):
    return as_float(base) * 37.3 + 11.7


def with_zero_photon_frame(base):
    x = as_float(base)
    return np.concatenate([x, np.zeros_like(x[:1])])


add_content("1d-data", "wrong-shape", np.arange(10, dtype=np.int32), ["data", "(N, rows, cols)"])
add_content("strings", "wrong-dtype", np.array([b"abc", b"def"]), ["data"])
add_content("string-frames", "wrong-dtype", np.full((3, SIDE, SIDE), b"x"), ["data", "dtype"])
add_content("nan", "non-finite", one_nan, ["data", "NaN"])
add_content("inf", "non-finite", one_inf, ["data", "Inf"])
add_content("negative-counts", "negative", minus_two, ["data", "negative"])
add_content("non-integer-counts", "bad-value", non_integer, ["data", "integer"])
add_content("zero-frames", "nothing-left", np.zeros((0, SIDE, SIDE), np.int32), ["data", "no frames"])
add_content("zero-photon-frame", "nothing-left", with_zero_photon_frame, ["data", "no photons", "empty_frames"])
add_content("all-frames-empty-drop", "nothing-left", np.zeros((5, SIDE, SIDE), np.int32), ["data", "no frame"],
            empty_frames="drop")
add_content("flat-without-geometry", "wrong-shape", np.ones((4, SIDE * SIDE), np.int32), ["data", "geometry"])
add_content("dataset-missing", "missing-field", intact_images, ["plain.h5", "frames_typo", "missing"],
            dataset="frames_typo")


@CASES.case("plain-missing-geometry", "missing-field")
def missing_distance(base, d):
    return frames_cmd(d, input=str(base / "plain.h5"), **{**PLAIN, "distance_mm": None}), ["data.distance_mm"]


@CASES.case("plain-dataset-is-group", "wrong-dtype")
def dataset_is_group(base, d):
    p = h5_file(d, "plain.h5", data=None)
    return frames_cmd(d, input=str(p), **PLAIN), ["plain.h5", "data", "group"]


@CASES.case("plain-geometry-file-not-hdf5", "not-hdf5")
def geometry_not_hdf5(base, d):
    geo = not_hdf5(Path("geometry.h5"), d)
    return (frames_cmd(d, input=str(base / "plain.h5"), dataset="data", geometry=str(geo)),
            ["geometry.h5"])


@CASES.case("plain-geometry-pixel-mismatch", "wrong-shape")
def geometry_pixel_mismatch(base, d):
    import scipy.sparse as sp

    from spicompute.geometry import regular_detector
    from spicompute.io.frames import FrameSet, write_frames

    det = regular_detector((9, 9), PLAIN["wavelength_nm"], PLAIN["distance_mm"], PLAIN["pixel_size_mm"])
    write_frames(d / "geometry.h5", FrameSet(sp.csr_matrix(np.ones((1, 81))), [0], det))
    return (frames_cmd(d, input=str(base / "plain.h5"), dataset="data", geometry=str(d / "geometry.h5")),
            ["geometry.h5", "detector/q", "pixels"])


def claims_frames(base, d, n):
    """A tiny gzip-chunked plain file whose ``data`` claims ``n`` frames."""
    p = d / "claims.h5"
    with h5py.File(p, "w") as h5:
        chunked_claim(h5, "data", n, compression="gzip")
    return frames_cmd(d, input=str(p), **PLAIN), ["claims.h5", "data", str(n)]


CASES.add("plain-claims-1e6-frames", "too-large", partial(claims_frames, n=10**6))
CASES.add("plain-claims-1e8-frames", "too-large", partial(claims_frames, n=10**8))


test_bad_input_fails_cleanly = cases_test(CASES)


@pytest.mark.slow
def test_intact_plain_hdf5_ingests(base, tmp_path):
    check_ingests_intact(base, tmp_path, "plain.h5", **PLAIN)


@pytest.mark.slow
def test_zero_photon_frames_are_dropped_and_near_integer_counts_rounded(base, tmp_path):
    from spicompute.io.frames import read_frames

    x = intact_images(base).astype(np.float64)
    x = np.concatenate([x[:3], np.zeros_like(x[:1]), x[3:]])
    x += np.random.default_rng(3).normal(0, 0.02, x.shape) * (x > 0)  # photon-converted: near integers
    p = h5_file(tmp_path, "plain.h5", data=x)
    proc = run_ok(frames_cmd(tmp_path, input=str(p), empty_frames="drop", **PLAIN), tmp_path)
    assert "dropping 1 frame(s)" in proc.stderr and "frame_id [3]" in proc.stderr  # a warning
    fs = read_frames(tmp_path / "out" / "frames.h5")
    assert fs.frame_id.tolist() == [0, 1, 2] + list(range(4, N_FRAMES + 1))
    assert (fs.counts != read_frames(base / "frames.h5").counts).nnz == 0
