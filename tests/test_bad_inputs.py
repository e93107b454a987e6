"""Bad-input corpus: every input path of the pipeline, broken in every way we know.

Each case builds a small broken input in its own folder, runs the real command
line (``python -m spicompute <stage> ...`` in a subprocess, as ``dvc.yaml``
does) and asserts what docs/reliability.md promises: exit status 2, exactly one
non-empty line on stderr naming the file and/or field, no traceback, and no
output file nor temporary file left in the output folder.

Input paths covered: the frames stage's input (CXI, Dragonfly photon file and
its detector file, plain HDF5 with ``data.dataset`` and its ``data.geometry``),
the frames file read by ``classify2d``, ``params.yaml`` (every stage), the
averages file (``ccmatrix``, ``orient``), the reference volume of ``orient``,
selection files (``select`` mode ``file``) and imported Dragonfly 2D output
(``import-dragonfly2d``).  Positive controls at the end show that the intact
versions of these inputs pass, so every error below is caused by its defect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from tests.conftest import REPO

WAVELENGTH_NM = 0.2066
SIDE = 17  # detector rows = cols
N_FRAMES = 12


# --------------------------------------------------------------------------- the intact inputs

def _detector():
    from spicompute.geometry import regular_detector

    mask = np.ones((SIDE, SIDE), bool)
    mask[SIDE // 2, SIDE // 2] = False  # beamstop pixel
    return regular_detector((SIDE, SIDE), WAVELENGTH_NM, 705.0, 0.8, mask=mask)


def _frames():
    """N_FRAMES Poisson frames of a sphere-like radial pattern, every frame with photons."""
    import scipy.sparse as sp

    from spicompute.io.frames import FrameSet

    det = _detector()
    q = np.linalg.norm(det.q, axis=1)
    x = np.maximum(q * 20.0, 1e-6)
    lam = 8.0 * (3 * (np.sin(x) - x * np.cos(x)) / x**3) ** 2 + 0.2
    counts = np.random.default_rng(0).poisson(lam, size=(N_FRAMES, det.n_pixels))
    counts[:, ~det.mask] = 0
    return FrameSet(sp.csr_matrix(counts), np.arange(N_FRAMES), det)


def _averages(m=6, size=21, empty=False):
    from spicompute.io.averages import AverageSet

    c = size // 2
    ii, jj = np.mgrid[:size, :size]
    r = np.hypot(ii - c, jj - c) + 1e-3
    x = r * 0.35
    rng = np.random.default_rng(1)
    inten = np.zeros((0, size, size)) if m == 0 else np.stack([(50 + 10 * k) * (3 * (np.sin(x * (1 + 0.05 * k)) - x * np.cos(x)) / x**3) ** 2
                      * (1 + 0.3 * np.cos(2 * np.arctan2(ii - c, jj - c) + k)) + 0.05
                      + 0.01 * rng.random((size, size)) for k in range(m)])
    weight = np.ones_like(inten)
    weight[:, c - 1:c + 2, c - 1:c + 2] = 0
    if empty:
        weight[:] = 0
    return AverageSet(inten, weight, np.arange(m), np.zeros(m), np.arange(m), np.full(m, 10.0),
                      dq_nm=0.02, wavelength_nm=WAVELENGTH_NM)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One folder of small valid inputs, shared by every case (cases copy what they break)."""
    from spicompute.io.averages import write_averages
    from spicompute.io.cxi import write_cxi
    from spicompute.io.dragonfly import write_dragonfly_detector, write_dragonfly_photons
    from spicompute.io.frames import write_frames
    from spicompute.io.tables import write_table

    import pandas as pd

    root = tmp_path_factory.mktemp("bad_inputs_base")
    fs = _frames()
    write_frames(root / "frames.h5", fs)
    write_cxi(root / "run.cxi", fs.images(np.arange(fs.n_frames)), fs.detector)
    write_dragonfly_photons(root / "photons.emc", fs)
    write_dragonfly_detector(root / "det.h5", fs.detector)
    with h5py.File(root / "plain.h5", "w") as h5:
        h5["data"] = fs.images(np.arange(fs.n_frames))
    write_averages(root / "averages.h5", _averages())
    with h5py.File(root / "volume.h5", "w") as h5:
        g = np.linspace(-1, 1, 17)
        zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
        h5["volume"] = np.exp(-(xx**2 + yy**2 + zz**2) * 8).astype(np.float32)
        h5["volume"].attrs["dq_nm"] = 0.03
    # Dragonfly 2D output (recon_type 2d): K models of L x L, N frames, R rotations
    K, L, R = 3, 15, 8
    with h5py.File(root / "output_010.h5", "w") as h5:
        h5["intens"] = np.random.default_rng(2).random((K, L, L)) + 0.1
        h5["inter_weight"] = np.ones((K, L, L))
        h5["occupancies"] = np.full((N_FRAMES, K), 1.0 / K)
        h5["orientations"] = np.arange(N_FRAMES) % (R * K)
        h5["scale"] = np.ones(N_FRAMES)
        h5["quaternions"] = np.stack([np.linspace(0, 2 * np.pi, R, endpoint=False), np.ones(R)], 1)
    parts = root / "parts"
    write_table(parts / "classify2d.parquet", pd.DataFrame({
        "average_id": np.arange(6), "run": np.zeros(6, int), "model": np.arange(6),
        "n_frames": np.full(6, 10.0)}))
    (root / "selections").mkdir()
    (root / "selections" / "good.json").write_text(json.dumps(
        {"name": "good", "kind": "averages", "average_ids": [0, 2, 4]}))
    return root


def _params(folder: Path, **sections) -> Path:
    """The project's params.yaml with ``sections`` merged in (None: drop the key)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in sections.items():
        params.setdefault(name, {})
        for key, value in values.items():
            if value is None:
                params[name].pop(key, None)
            else:
                params[name][key] = value
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


# --------------------------------------------------------------------------- broken files

def _not_hdf5(d, name):
    p = d / name
    p.write_text("this is a text file, not HDF5\n" * 20)
    return p


def _truncated_head(src, d):
    p = d / ("head_" + src.name)
    p.write_bytes(src.read_bytes()[2048:])
    return p


def _truncated_tail(src, d):
    p = d / ("tail_" + src.name)
    data = src.read_bytes()
    p.write_bytes(data[:len(data) // 2])
    return p


def _directory(d, name):
    p = d / name
    p.mkdir()
    return p


def _missing(d, name):
    return d / name


def _empty(d, name):
    p = d / name
    p.write_bytes(b"")
    return p


def _h5(d, name, **datasets):
    """An HDF5 file with the given datasets (value None: an empty group of that name)."""
    p = d / name
    with h5py.File(p, "w") as h5:
        for key, value in datasets.items():
            key = key.replace("__", "/")
            if value is None:
                h5.create_group(key)
            else:
                h5[key] = value
    return p


def _claims_frames(d, name, n, key="data"):
    """A tiny file whose chunked dataset claims ``n`` frames; only the first chunk was written."""
    p = d / name
    with h5py.File(p, "w") as h5:
        ds = h5.create_dataset(key, shape=(n, SIDE, SIDE), dtype="u2", chunks=(4, SIDE, SIDE),
                               compression="gzip")
        ds[:4] = 1
    return p


def _cxi_with(base, d, name, edit):
    p = _copy(base / "run.cxi", d / name)
    with h5py.File(p, "a") as h5:
        edit(h5)
    return p


# --------------------------------------------------------------------------- cases
# each builder gets (base folder, case folder) and returns (argv after "spicompute", needles):
# every needle must appear in the one stderr line.

CASES: dict[str, object] = {}


def case(name):
    def deco(fn):
        CASES[name] = fn
        return fn
    return deco


def _frames_cmd(d, **data):
    params = _params(d, data={"input": "", **data})
    return ["frames", "--params", str(params), "--out", str(d / "out" / "frames.h5"),
            "--truth", str(d / "out" / "truth.h5")]


def _ingest(path, **data):
    return lambda d: _frames_cmd(d, input=str(path), **data)


DRAGONFLY = {"wavelength_nm": WAVELENGTH_NM}

# ---- the frames stage's input file, in each format
for fmt in ("cxi", "dragonfly", "hdf5"):
    src_name = {"cxi": "run.cxi", "dragonfly": "photons.emc", "hdf5": "plain.h5"}[fmt]

    def extra(base, fmt=fmt):
        if fmt == "dragonfly":
            return {"detector": str(base / "det.h5"), "format": "dragonfly", **DRAGONFLY}
        if fmt == "hdf5":
            return {"dataset": "data", "format": "hdf5", "distance_mm": 705.0, "pixel_size_mm": 0.8,
                    "wavelength_nm": WAVELENGTH_NM}
        return {"format": "cxi"}

    def _make(maker, needle_fn, fmt=fmt, src_name=src_name, extra=extra):
        def build(base, d):
            path = maker(base, d, src_name)
            return _frames_cmd(d, input=str(path), **extra(base)), needle_fn(path)
        return build

    for label, maker in {
        "not-hdf5": lambda b, d, n: _not_hdf5(d, n),
        "truncated-head": lambda b, d, n: _truncated_head(b / n, d),
        "truncated-tail": lambda b, d, n: _truncated_tail(b / n, d),
        "directory": lambda b, d, n: _directory(d, n),
        "missing": lambda b, d, n: _missing(d, n),
        "empty-file": lambda b, d, n: _empty(d, n),
    }.items():
        case(f"input-{fmt}-{label}")(_make(maker, lambda p: [p.name]))

# plain HDF5 / CXI content
PLAIN = {"dataset": "data", "distance_mm": 705.0, "pixel_size_mm": 0.8, "wavelength_nm": WAVELENGTH_NM}


def _plain_case(name, data, needles, **extra):
    @case(f"plain-{name}")
    def build(base, d):
        p = _h5(d, "plain.h5", data=data(base) if callable(data) else data)
        return _frames_cmd(d, input=str(p), **{**PLAIN, **extra}), ["plain.h5", *needles]


def _good_images(base):
    with h5py.File(base / "plain.h5") as h5:
        return h5["data"][()]


def _with(fn):
    def data(base):
        x = _good_images(base).astype(np.float64)
        return fn(x)
    return data


_plain_case("1d-data", np.arange(10, dtype=np.int32), ["data", "(N, rows, cols)"])
_plain_case("strings", np.array([b"abc", b"def"]), ["data"])
_plain_case("string-frames", np.full((3, SIDE, SIDE), b"x"), ["data", "dtype"])
_plain_case("nan", _with(lambda x: np.where(np.arange(x.size).reshape(x.shape) == 700, np.nan, x)),
            ["data", "NaN"])
_plain_case("inf", _with(lambda x: np.where(np.arange(x.size).reshape(x.shape) == 900, np.inf, x)),
            ["data", "Inf"])
_plain_case("negative-counts", _with(lambda x: x - 2), ["data", "negative"])
_plain_case("non-integer-counts", _with(lambda x: x * 37.3 + 11.7), ["data", "integer"])
_plain_case("zero-frames", np.zeros((0, SIDE, SIDE), np.int32), ["data", "no frames"])
_plain_case("zero-photon-frame", _with(lambda x: np.concatenate([x, np.zeros_like(x[:1])])),
            ["data", "no photons", "empty_frames"])
_plain_case("all-frames-empty-drop", np.zeros((5, SIDE, SIDE), np.int32), ["data", "no frame"],
            empty_frames="drop")


@case("plain-missing-geometry")
def _(base, d):
    return _frames_cmd(d, input=str(base / "plain.h5"), **{**PLAIN, "distance_mm": None}), ["data.distance_mm"]


_plain_case("flat-without-geometry", np.ones((4, SIDE * SIDE), np.int32), ["data", "geometry"])
_plain_case("dataset-missing", _good_images, ["plain.h5", "frames_typo", "missing"], dataset="frames_typo")


@case("plain-dataset-is-group")
def _(base, d):
    p = _h5(d, "plain.h5", data=None)
    return _frames_cmd(d, input=str(p), **PLAIN), ["plain.h5", "data", "group"]


@case("plain-geometry-file-not-hdf5")
def _(base, d):
    geo = _not_hdf5(d, "geometry.h5")
    return (_frames_cmd(d, input=str(base / "plain.h5"), dataset="data", geometry=str(geo)),
            ["geometry.h5"])


@case("plain-geometry-pixel-mismatch")
def _(base, d):
    from spicompute.geometry import regular_detector
    from spicompute.io.frames import FrameSet, write_frames
    import scipy.sparse as sp

    det = regular_detector((9, 9), WAVELENGTH_NM, 705, 0.8)
    write_frames(d / "geometry.h5", FrameSet(sp.csr_matrix(np.ones((1, 81))), [0], det))
    return (_frames_cmd(d, input=str(base / "plain.h5"), dataset="data", geometry=str(d / "geometry.h5")),
            ["geometry.h5", "detector/q", "pixels"])


for _n, _label in ((10**6, "1e6"), (10**8, "1e8")):
    @case(f"plain-claims-{_label}-frames")
    def _(base, d, n=_n):
        p = _claims_frames(d, "claims.h5", n)
        return _frames_cmd(d, input=str(p), **PLAIN), ["claims.h5", "data", str(n)]

    @case(f"cxi-claims-{_label}-frames")
    def _(base, d, n=_n):
        p = _cxi_with(base, d, "claims.cxi", lambda h5: None)
        with h5py.File(p, "a") as h5:
            del h5["entry_1/data_1/data"]
        with h5py.File(p, "a") as h5:
            ds = h5.create_dataset("entry_1/data_1/data", shape=(n, SIDE, SIDE), dtype="u2",
                                   chunks=(4, SIDE, SIDE))
            ds[:4] = 1
        return _frames_cmd(d, input=str(p)), ["claims.cxi", "entry_1/data_1/data", str(n)]

    @case(f"dragonfly-claims-{_label}-frames")
    def _(base, d, n=_n):
        p = d / "claims.emc"
        vint = h5py.vlen_dtype(np.int32)
        with h5py.File(p, "w") as h5:
            h5["num_pix"] = np.array([SIDE * SIDE], np.int32)
            for key in ("place_ones", "place_multi", "count_multi"):
                ds = h5.create_dataset(key, (n,), dtype=vint, chunks=(1024,))
                ds[0] = np.array([1, 2], np.int32) if key != "count_multi" else np.array([2, 2], np.int32)
        return (_frames_cmd(d, input=str(p), detector=str(base / "det.h5"), **DRAGONFLY),
                ["claims.emc", "place_ones", str(n)])


@case("cxi-data-missing")
def _(base, d):
    p = _cxi_with(base, d, "run.cxi", lambda h5: h5.__delitem__("entry_1/data_1/data"))
    return _frames_cmd(d, input=str(p), format="cxi"), ["run.cxi", "entry_1/data_1/data", "missing"]


@case("cxi-unrecognised-auto")
def _(base, d):
    p = _cxi_with(base, d, "run.cxi", lambda h5: h5.__delitem__("entry_1/data_1/data"))
    return _frames_cmd(d, input=str(p)), ["run.cxi", "unrecognised"]


@case("cxi-1d-data")
def _(base, d):
    def edit(h5):
        del h5["entry_1/data_1/data"]
        h5["entry_1/data_1/data"] = np.arange(20, dtype=np.int32)
    return _frames_cmd(d, input=str(_cxi_with(base, d, "run.cxi", edit))), ["run.cxi", "entry_1/data_1/data"]


@case("cxi-mask-wrong-shape")
def _(base, d):
    def edit(h5):
        del h5["entry_1/instrument_1/detector_1/mask"]
        h5["entry_1/instrument_1/detector_1/mask"] = np.zeros((SIDE - 2, SIDE), np.uint16)
    return (_frames_cmd(d, input=str(_cxi_with(base, d, "run.cxi", edit))),
            ["run.cxi", "detector_1/mask", "shape"])


@case("cxi-all-masked")
def _(base, d):
    def edit(h5):
        h5["entry_1/instrument_1/detector_1/mask"][...] = 1
    return _frames_cmd(d, input=str(_cxi_with(base, d, "run.cxi", edit))), ["run.cxi", "mask", "masked"]


@case("cxi-distance-missing")
def _(base, d):
    def edit(h5):
        del h5["entry_1/instrument_1/detector_1/distance"]
        del h5["entry_1/instrument_1/detector_1/corner_position"]
    return (_frames_cmd(d, input=str(_cxi_with(base, d, "run.cxi", edit))),
            ["run.cxi", "detector_1/distance", "missing"])


@case("cxi-distance-string")
def _(base, d):
    def edit(h5):
        del h5["entry_1/instrument_1/detector_1/distance"]
        h5["entry_1/instrument_1/detector_1/distance"] = b"far"
    return (_frames_cmd(d, input=str(_cxi_with(base, d, "run.cxi", edit))),
            ["run.cxi", "detector_1/distance"])


@case("cxi-no-energy")
def _(base, d):
    def edit(h5):
        del h5["entry_1/instrument_1/source_1"]
    return (_frames_cmd(d, input=str(_cxi_with(base, d, "run.cxi", edit))),
            ["run.cxi", "source_1/energy", "wavelength_nm"])


@case("cxi-single-frame-ok-then-classify2d")
def _(base, d):
    """A single frame ingests, but cannot be classified into K classes: classify2d says so."""
    from spicompute.io.frames import read_frames, write_frames

    fs = read_frames(base / "frames.h5")
    write_frames(d / "one.h5", fs.subset([0]))
    return _classify_cmd(d, d / "one.h5"), ["classify2d.n_models", "frames"]


# ---- Dragonfly photon file and detector file
def _dragonfly(d, photons, detector, **extra):
    return _frames_cmd(d, input=str(photons), detector=str(detector), **{**DRAGONFLY, **extra})


for label, maker in {
    "not-hdf5": lambda b, d: _not_hdf5(d, "det.h5"),
    "truncated-tail": lambda b, d: _truncated_tail(b / "det.h5", d),
    "directory": lambda b, d: _directory(d, "det.h5"),
    "missing": lambda b, d: _missing(d, "det.h5"),
}.items():
    @case(f"dragonfly-detector-{label}")
    def _(base, d, maker=maker):
        det = maker(base, d)
        return _dragonfly(d, base / "photons.emc", det), [det.name]


def _det_with(base, d, edit):
    p = _copy(base / "det.h5", d / "det.h5")
    with h5py.File(p, "a") as h5:
        edit(h5)
    return p


def _replace(key, value):
    def edit(h5):
        del h5[key]
        h5[key] = value
    return edit


@case("dragonfly-detector-pixel-count-mismatch")
def _(base, d):
    n = SIDE * SIDE - 5

    def edit(h5):
        for key in ("qx", "qy", "qz", "corr", "mask"):
            value = h5[key][()][:n]
            del h5[key]
            h5[key] = value
    det = _det_with(base, d, edit)
    return _dragonfly(d, base / "photons.emc", det), ["photons.emc", "num_pix", str(n)]


@case("dragonfly-detector-qx-missing")
def _(base, d):
    det = _det_with(base, d, lambda h5: h5.__delitem__("qx"))
    return _dragonfly(d, base / "photons.emc", det), ["det.h5", "qx", "missing"]


@case("dragonfly-detector-nan")
def _(base, d):
    q = _copy(base / "det.h5", d / "tmp.h5")
    with h5py.File(q) as h5:
        qx = h5["qx"][()]
    q.unlink()
    qx[3] = np.nan
    det = _det_with(base, d, _replace("qx", qx))
    return _dragonfly(d, base / "photons.emc", det), ["det.h5", "qx", "NaN"]


@case("dragonfly-detector-lengths-differ")
def _(base, d):
    det = _det_with(base, d, _replace("corr", np.ones(7)))
    return _dragonfly(d, base / "photons.emc", det), ["det.h5", "corr", "entries"]


@case("dragonfly-detector-all-masked")
def _(base, d):
    det = _det_with(base, d, _replace("mask", np.full(SIDE * SIDE, 2, np.uint8)))
    return _dragonfly(d, base / "photons.emc", det), ["photons.emc", "mask", "masked"]


@case("dragonfly-detector-ewald-negative")
def _(base, d):
    det = _det_with(base, d, _replace("ewald_rad", -3.0))
    return _dragonfly(d, base / "photons.emc", det), ["det.h5", "ewald_rad"]


@case("dragonfly-no-detector-param")
def _(base, d):
    return _frames_cmd(d, input=str(base / "photons.emc"), **DRAGONFLY), ["data.detector"]


@case("dragonfly-no-wavelength")
def _(base, d):
    return (_frames_cmd(d, input=str(base / "photons.emc"), detector=str(base / "det.h5")),
            ["det.h5", "wavelength"])


def _photons_with(base, d, edit):
    p = _copy(base / "photons.emc", d / "photons.emc")
    with h5py.File(p, "a") as h5:
        edit(h5)
    return p


@case("dragonfly-count-multi-length")
def _(base, d):
    def edit(h5):
        v = h5["count_multi"][()]
        v[0] = np.append(v[0], 5).astype(np.int32)
        del h5["count_multi"]
        h5.create_dataset("count_multi", data=v, dtype=h5py.vlen_dtype(np.int32))
    return _dragonfly(d, _photons_with(base, d, edit), base / "det.h5"), ["photons.emc", "count_multi"]


@case("dragonfly-pixel-index-out-of-range")
def _(base, d):
    def edit(h5):
        v = h5["place_ones"][()]
        v[1] = np.append(v[1], SIDE * SIDE + 3).astype(np.int32)
        del h5["place_ones"]
        h5.create_dataset("place_ones", data=v, dtype=h5py.vlen_dtype(np.int32))
    return _dragonfly(d, _photons_with(base, d, edit), base / "det.h5"), ["photons.emc", "place_ones"]


@case("dragonfly-negative-counts")
def _(base, d):
    def edit(h5):
        v = h5["count_multi"][()]
        i = next(i for i, a in enumerate(v) if len(a))
        v[i] = -v[i]
        del h5["count_multi"]
        h5.create_dataset("count_multi", data=v, dtype=h5py.vlen_dtype(np.int32))
    return _dragonfly(d, _photons_with(base, d, edit), base / "det.h5"), ["photons.emc", "count_multi"]


@case("dragonfly-place-ones-missing")
def _(base, d):
    p = _photons_with(base, d, lambda h5: h5.__delitem__("place_ones"))
    return (_dragonfly(d, p, base / "det.h5", format="dragonfly"),
            ["photons.emc", "place_ones", "missing"])


# ---- params.yaml (checked before any work: the frames stage would otherwise simulate)
def _raw_params(d, text, stage="frames"):
    p = d / "params.yaml"
    p.write_text(text)
    if stage == "frames":
        return ["frames", "--params", str(p), "--out", str(d / "out" / "frames.h5"),
                "--truth", str(d / "out" / "truth.h5")]
    return _classify_cmd(d, None, params=p)


@case("params-invalid-yaml")
def _(base, d):
    return _raw_params(d, "data:\n  input: [unclosed\n"), ["params.yaml", "YAML"]


@case("params-not-a-mapping")
def _(base, d):
    return _raw_params(d, "- a\n- b\n"), ["params.yaml", "mapping"]


@case("params-missing")
def _(base, d):
    return (["frames", "--params", str(d / "nope.yaml"), "--out", str(d / "out" / "f.h5")],
            ["nope.yaml", "not found"])


@case("params-directory")
def _(base, d):
    (d / "params.yaml").mkdir()
    return (["frames", "--params", str(d / "params.yaml"), "--out", str(d / "out" / "f.h5")],
            ["params.yaml"])


@case("params-unknown-section")
def _(base, d):
    return _raw_params(d, "simulat:\n  n_frames: 10\n"), ["params.yaml", "simulat", "unknown section"]


@case("params-unknown-data-key")
def _(base, d):
    return _raw_params(d, "data:\n  inptu: x.cxi\nsimulate: {}\n"), ["data.inptu", "unknown"]


def _sim(name, value, needles):
    @case(f"params-simulate-{name}")
    def build(base, d):
        params = _params(d, data={"input": ""}, simulate={name.split(":")[0]: value})
        return (["frames", "--params", str(params), "--out", str(d / "out" / "frames.h5"),
                 "--truth", str(d / "out" / "truth.h5")], needles)


_sim("n_frames:0", 0, ["simulate.n_frames"])
_sim("n_frames:negative", -5, ["simulate.n_frames"])
_sim("n_frames:string", "many", ["simulate.n_frames", "integer"])
_sim("n_frames:1e12", 1e12, ["simulate.n_frames"])
_sim("detector_size:200000", 200000, ["simulate.detector_size"])
_sim("seed:abc", "abc", ["simulate.seed"])
_sim("photon_energy_kev:negative", -6.0, ["simulate.photon_energy_kev"])
_sim("fractions:unknown-class", {"cube": 1.0, "pyramid": 1.0}, ["simulate.fractions", "pyramid"])


@case("params-simulate-unknown-key")
def _(base, d):
    params = _params(d, data={"input": ""}, simulate={"n_frame": 10})
    return (["frames", "--params", str(params), "--out", str(d / "out" / "frames.h5")],
            ["simulate.n_frame", "unknown"])


# ---- classify2d: its frames file and its parameters
def _classify_cmd(d, frames, params=None, **section):
    params = params or _params(d, classify2d={"n_models": 2, "n_runs": 1, "max_iter": 2, "min_iter": 1,
                                              "n_rot": 8, "device": "cpu", **section})
    out = d / "out"
    return ["classify2d", "--params", str(params), "--frames", str(frames or d / "frames.h5"),
            "--out", str(out / "averages.h5"), "--frames-table", str(out / "frames.parquet"),
            "--part", str(out / "part.parquet"), "--checkpoints", str(out / "ck"),
            "--metrics", str(out / "m.json"), "--live", ""]


for label, maker in {
    "not-hdf5": lambda b, d: _not_hdf5(d, "frames.h5"),
    "truncated-head": lambda b, d: _truncated_head(b / "frames.h5", d),
    "truncated-tail": lambda b, d: _truncated_tail(b / "frames.h5", d),
    "directory": lambda b, d: _directory(d, "frames.h5"),
    "missing": lambda b, d: _missing(d, "frames.h5"),
}.items():
    @case(f"frames-file-{label}")
    def _(base, d, maker=maker):
        path = maker(base, d)
        return _classify_cmd(d, path), [path.name]


def _frames_file_with(base, d, edit):
    p = _copy(base / "frames.h5", d / "frames.h5")
    with h5py.File(p, "a") as h5:
        edit(h5)
    return p


@case("frames-file-detector-missing")
def _(base, d):
    p = _frames_file_with(base, d, lambda h5: h5.__delitem__("detector"))
    return _classify_cmd(d, p), ["frames.h5", "detector", "missing"]


@case("frames-file-counts-missing")
def _(base, d):
    p = _frames_file_with(base, d, lambda h5: h5.__delitem__("frames/counts"))
    return _classify_cmd(d, p), ["frames.h5", "frames/counts", "missing"]


@case("frames-file-mask-wrong-shape")
def _(base, d):
    p = _frames_file_with(base, d, _replace("detector/mask", np.ones(10, np.uint8)))
    return _classify_cmd(d, p), ["frames.h5", "detector/mask", "shape"]


@case("frames-file-negative-counts")
def _(base, d):
    def edit(h5):
        c = h5["frames/counts"][()]
        c[0, 5] = -3
        h5["frames/counts"][...] = c
    p = _frames_file_with(base, d, edit)
    return _classify_cmd(d, p), ["frames.h5", "frames/counts", "negative"]


@case("frames-file-q-nan")
def _(base, d):
    def edit(h5):
        q = h5["detector/q"][()]
        q[4] = np.nan
        h5["detector/q"][...] = q
    p = _frames_file_with(base, d, edit)
    return _classify_cmd(d, p), ["frames.h5", "detector/q", "NaN"]


@case("frames-file-zero-frames")
def _(base, d):
    from spicompute.io.frames import read_frames, write_frames

    write_frames(d / "frames.h5", read_frames(base / "frames.h5").subset(np.arange(0)))
    return _classify_cmd(d, d / "frames.h5"), ["frames.h5", "no frames"]


def _cls(name, value, needles):
    @case(f"params-classify2d-{name}")
    def build(base, d):
        return _classify_cmd(d, base / "frames.h5", **{name.split(":")[0]: value}), needles


_cls("n_models:0", 0, ["classify2d.n_models"])
_cls("n_models:string", "forty", ["classify2d.n_models", "integer", "auto"])
_cls("n_rot:0", 0, ["classify2d.n_rot"])
_cls("n_runs:negative", -2, ["classify2d.n_runs"])
_cls("subset_fraction:2", 2.0, ["classify2d.subset_fraction"])
_cls("seed:abc", "abc", ["classify2d.seed"])
_cls("update_scale:quoted", "false", ["classify2d.update_scale"])
_cls("max_iter:0", 0, ["classify2d.max_iter"])
_cls("n_model:typo", 3, ["classify2d.n_model", "unknown"])
_cls("n_models:more-than-frames", 20, ["classify2d.n_models", "frames"])


# ---- the averages file (ccmatrix, orient)
def _cc_cmd(d, averages, **section):
    params = _params(d, ccmatrix=section)
    return ["ccmatrix", "--params", str(params), "--averages", str(averages),
            "--out", str(d / "out" / "cc.h5"), "--metrics", str(d / "out" / "m.json")]


for label, maker in {
    "not-hdf5": lambda b, d: _not_hdf5(d, "averages.h5"),
    "truncated-tail": lambda b, d: _truncated_tail(b / "averages.h5", d),
    "directory": lambda b, d: _directory(d, "averages.h5"),
    "missing": lambda b, d: _missing(d, "averages.h5"),
}.items():
    @case(f"averages-{label}")
    def _(base, d, maker=maker):
        path = maker(base, d)
        return _cc_cmd(d, path), [path.name]


def _avg_file(d, avg):
    from spicompute.io.averages import write_averages

    write_averages(d / "averages.h5", avg)
    return d / "averages.h5"


@case("averages-weight-missing")
def _(base, d):
    p = _copy(base / "averages.h5", d / "averages.h5")
    with h5py.File(p, "a") as h5:
        del h5["averages/weight"]
    return _cc_cmd(d, p), ["averages.h5", "averages/weight", "missing"]


@case("averages-nan")
def _(base, d):
    p = _copy(base / "averages.h5", d / "averages.h5")
    with h5py.File(p, "a") as h5:
        x = h5["averages/intensity"][()]
        x[1, 3, 3] = np.nan
        h5["averages/intensity"][...] = x
    return _cc_cmd(d, p), ["averages.h5", "averages/intensity", "NaN"]


@case("averages-1d-intensity")
def _(base, d):
    p = _copy(base / "averages.h5", d / "averages.h5")
    with h5py.File(p, "a") as h5:
        del h5["averages/intensity"]
        h5["averages/intensity"] = np.ones(6, np.float32)
    return _cc_cmd(d, p), ["averages.h5", "averages/intensity"]


@case("averages-all-unobserved")
def _(base, d):
    return _cc_cmd(d, _avg_file(d, _averages(empty=True))), ["averages.h5", "averages"]


@case("averages-single")
def _(base, d):
    return _cc_cmd(d, _avg_file(d, _averages(m=1))), ["averages.h5", "only 1"]


@case("averages-zero")
def _(base, d):
    return _cc_cmd(d, _avg_file(d, _averages(m=0))), ["averages.h5", "no averages"]


_cc_params = {"n_angles:1": (1, ["ccmatrix.n_angles"]), "n_angles:string": ("many", ["ccmatrix.n_angles"]),
              "radial_step:negative": (-1.0, ["ccmatrix.radial_step"]),
              "normalisation:unknown": ("zscore", ["ccmatrix.normalisation"]),
              "n_angle:typo": (180, ["ccmatrix.n_angle", "unknown"])}
for _name, (_value, _needles) in _cc_params.items():
    @case(f"params-ccmatrix-{_name}")
    def _(base, d, name=_name, value=_value, needles=_needles):
        return _cc_cmd(d, base / "averages.h5", **{name.split(":")[0]: value}), needles


# ---- orient: its reference volume and parameters
def _orient_cmd(d, averages, **section):
    params = _params(d, orient={"num_div": 2, "refine": False, **section})
    out = d / "out"
    return ["orient", "--params", str(params), "--averages", str(averages), "--out", str(out / "o.parquet"),
            "--h5", str(out / "o.h5"), "--metrics", str(out / "m.json")]


for label, maker in {
    "not-hdf5": lambda b, d: _not_hdf5(d, "volume.h5"),
    "truncated-tail": lambda b, d: _truncated_tail(b / "volume.h5", d),
    "directory": lambda b, d: _directory(d, "volume.h5"),
    "missing": lambda b, d: _missing(d, "volume.h5"),
    "no-volume-dataset": lambda b, d: _h5(d, "volume.h5", other=np.ones(3)),
    "2d-volume": lambda b, d: _h5(d, "volume.h5", volume=np.ones((5, 5))),
    "string-volume": lambda b, d: _h5(d, "volume.h5", volume=np.array([b"abc"])),
    "no-dq": lambda b, d: _h5(d, "volume.h5", volume=np.ones((5, 5, 5))),
}.items():
    @case(f"reference-{label}")
    def _(base, d, maker=maker):
        path = maker(base, d)
        return _orient_cmd(d, base / "averages.h5", reference=str(path)), [path.name]


@case("reference-nan")
def _(base, d):
    vol = np.ones((5, 5, 5), np.float32)
    vol[2, 2, 2] = np.nan
    p = _h5(d, "volume.h5", volume=vol)
    with h5py.File(p, "a") as h5:
        h5.attrs["dq_nm"] = 0.03
    return _orient_cmd(d, base / "averages.h5", reference=str(p)), ["volume.h5", "volume", "NaN"]


@case("reference-index-out-of-range")
def _(base, d):
    p = _h5(d, "volume.h5", volumes=np.ones((2, 5, 5, 5), np.float32), dq_nm=0.03)
    return (_orient_cmd(d, base / "averages.h5", reference=str(p), volume_index=5),
            ["volume.h5", "volumes", "index 5"])


_or_params = {"num_div:0": (0, ["orient.num_div"]), "volume_index:string": ("first", ["orient.volume_index"]),
              "chunk:negative": (-8, ["orient.chunk"]), "refine:quoted": ("false", ["orient.refine"]),
              "edge_nm:string": ("big", ["orient.edge_nm"]), "num_dvi:typo": (3, ["orient.num_dvi", "unknown"])}
for _name, (_value, _needles) in _or_params.items():
    @case(f"params-orient-{_name}")
    def _(base, d, name=_name, value=_value, needles=_needles):
        return _orient_cmd(d, base / "averages.h5", **{name.split(":")[0]: value}), needles


def _regress_cmd(base, d, **section):
    params = _params(d, regress=section)
    out = d / "out"
    return ["regress", "--params", str(params), "--averages", str(base / "averages.h5"),
            "--embedding", str(d / "embed.parquet"), "--model", str(out / "r.pt"), "--out", str(out / "r.parquet"),
            "--metrics", str(out / "m.json"), "--live", ""]


_rg_params = {"learning_rate:string": ("fast", ["regress.learning_rate"]),
              "seed:abc": ("abc", ["regress.seed"]), "log:quoted": ("false", ["regress.log"]),
              "hidden:zero-width": ([64, 0], ["regress.hidden"]),
              "max_epoch:typo": (5, ["regress.max_epoch", "unknown"])}
for _name, (_value, _needles) in _rg_params.items():
    @case(f"params-regress-{_name}")
    def _(base, d, name=_name, value=_value, needles=_needles):
        return _regress_cmd(base, d, **{name.split(":")[0]: value}), needles


@case("orient-averages-missing")
def _(base, d):
    return _orient_cmd(d, d / "averages.h5"), ["averages.h5", "not found"]


# ---- selection files (select, mode file)
def _select_cmd(base, d, selection):
    params = _params(d, select={"mode": "file", "file": str(selection), "min_selected": 2})
    return ["select", "--params", str(params), "--parts", str(base / "parts" / "classify2d.parquet"),
            "--out", str(d / "out" / "select.parquet"), "--metrics", str(d / "out" / "m.json")]


_selections = {
    "not-json": ("{not json", ["bad.json", "JSON"]),
    "truncated": (json.dumps({"name": "bad", "kind": "averages", "average_ids": [0, 1]})[:25], ["bad.json", "JSON"]),
    "not-an-object": ("[1, 2, 3]", ["bad.json", "object"]),
    "bad-name": (json.dumps({"name": "../etc", "average_ids": [1]}), ["bad.json", "name"]),
    "unknown-kind": (json.dumps({"name": "bad", "kind": "frames", "average_ids": [1]}), ["bad.json", "kind"]),
    "ids-strings": (json.dumps({"name": "bad", "average_ids": ["a", "b"]}), ["bad.json", "average_ids"]),
    "no-ids-no-rule": (json.dumps({"name": "bad"}), ["bad.json", "average_ids"]),
    "bad-rule": (json.dumps({"name": "bad", "rule": {"pc_1": "high"}}), ["bad.json", "rule.pc_1"]),
    "latent-points-kind": (json.dumps({"name": "bad", "kind": "latent_points", "points": [[0.1]]}),
                           ["bad.json", "kind"]),
    "ids-match-nothing": (json.dumps({"name": "bad", "average_ids": [99, 100]}), ["bad.json: average_ids", "keeps no average"]),
    "binary": (b"\x89HDF\r\n\x1a\n\x00\x00\xff\xfe", ["bad.json"]),
}
for _name, (_text, _needles) in _selections.items():
    @case(f"selection-{_name}")
    def _(base, d, text=_text, needles=_needles):
        (d / "selections").mkdir()
        p = d / "selections" / "bad.json"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return _select_cmd(base, d, p), needles


@case("selection-missing")
def _(base, d):
    return _select_cmd(base, d, d / "selections" / "gone.json"), ["gone.json", "not found"]


@case("selection-directory")
def _(base, d):
    (d / "selections").mkdir()
    return _select_cmd(base, d, _directory(d / "selections", "sel.json")), ["sel.json"]


# ---- imported Dragonfly 2D output
def _import_cmd(d, output, detector, wavelength=WAVELENGTH_NM):
    out = d / "out"
    argv = ["import-dragonfly2d", "--output", str(output), "--detector", str(detector),
            "--out", str(out / "averages.h5"), "--frames-table", str(out / "frames.parquet"),
            "--part", str(out / "part.parquet")]
    if wavelength is not None:
        argv += ["--wavelength-nm", str(wavelength)]
    return argv


for label, maker in {
    "not-hdf5": lambda b, d: _not_hdf5(d, "output_010.h5"),
    "truncated-head": lambda b, d: _truncated_head(b / "output_010.h5", d),
    "truncated-tail": lambda b, d: _truncated_tail(b / "output_010.h5", d),
    "directory": lambda b, d: _directory(d, "output_010.h5"),
    "missing": lambda b, d: _missing(d, "output_010.h5"),
}.items():
    @case(f"dragonfly2d-{label}")
    def _(base, d, maker=maker):
        path = maker(base, d)
        return _import_cmd(d, path, base / "det.h5"), [path.name]


def _df2d_with(base, d, edit):
    p = _copy(base / "output_010.h5", d / "output_010.h5")
    with h5py.File(p, "a") as h5:
        edit(h5)
    return p


_df2d = {
    "intens-missing": (lambda h5: h5.__delitem__("intens"), ["intens", "missing"]),
    "intens-2d": (_replace("intens", np.ones((15, 15))), ["intens", "(K, L, L)"]),
    "intens-3d-volume": (_replace("intens", np.ones((3, 15, 14))), ["intens"]),
    "intens-nan": (_replace("intens", np.full((3, 15, 15), np.nan)), ["intens", "NaN"]),
    "intens-strings": (_replace("intens", np.array([b"a", b"b"])), ["intens"]),
    "occupancies-wrong-shape": (_replace("occupancies", np.ones((N_FRAMES, 5))), ["occupancies"]),
    "scale-missing": (lambda h5: h5.__delitem__("scale"), ["scale", "missing"]),
    "orientations-out-of-range": (_replace("orientations", np.full(N_FRAMES, 10**6)), ["orientations"]),
    "inter-weight-shape": (_replace("inter_weight", np.ones((3, 5, 5))), ["inter_weight"]),
    "intens-negative": (_replace("intens", -np.ones((3, 15, 15))), ["intens", "negative"]),
}
for _name, (_edit, _needles) in _df2d.items():
    @case(f"dragonfly2d-{_name}")
    def _(base, d, edit=_edit, needles=_needles):
        return _import_cmd(d, _df2d_with(base, d, edit), base / "det.h5"), ["output_010.h5", *needles]


@case("dragonfly2d-no-wavelength")
def _(base, d):
    return _import_cmd(d, base / "output_010.h5", base / "det.h5", wavelength=None), ["wavelength_nm"]


@case("dragonfly2d-detector-not-hdf5")
def _(base, d):
    return _import_cmd(d, base / "output_010.h5", _not_hdf5(d, "det.h5")), ["det.h5"]


@case("dragonfly2d-detector-no-ewald")
def _(base, d):
    det = _det_with(base, d, lambda h5: h5.__delitem__("ewald_rad"))
    return _import_cmd(d, base / "output_010.h5", det), ["det.h5", "ewald_rad"]


# --------------------------------------------------------------------------- the runner

def run_cli(argv, cwd, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(REPO), SPICOMPUTE_NO_PROGRESS="1", DVC_NO_ANALYTICS="1")
    return subprocess.run([sys.executable, "-m", "spicompute", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def leftovers(folder: Path) -> list[str]:
    """Every file (outputs and temporaries) under ``folder``."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_cleanly(base, tmp_path, name):
    argv, needles = CASES[name](base, tmp_path)
    start = time.perf_counter()
    proc = run_cli(argv, tmp_path)
    elapsed = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert lines[0].startswith(f"spicompute {argv[0]}: error: ")
    assert leftovers(tmp_path / "out") == []
    assert elapsed < 30, f"took {elapsed:.1f} s: must fail fast"


def test_corpus_size():
    """docs/reliability.md quotes the number of cases; keep it in step."""
    assert len(CASES) == 169
    assert f"**{len(CASES)} cases**" in (REPO / "docs" / "reliability.md").read_text()


# --------------------------------------------------------------------------- positive controls

def _ok(argv, cwd):
    proc = run_cli(argv, cwd)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


@pytest.mark.parametrize("fmt", ["cxi", "dragonfly", "hdf5"])
def test_intact_inputs_ingest(base, tmp_path, fmt):
    from spicompute.io.frames import read_frames

    extra = {"cxi": {}, "hdf5": PLAIN,
             "dragonfly": {"detector": str(base / "det.h5"), **DRAGONFLY}}[fmt]
    src = {"cxi": "run.cxi", "dragonfly": "photons.emc", "hdf5": "plain.h5"}[fmt]
    _ok(_frames_cmd(tmp_path, input=str(base / src), **extra), tmp_path)
    fs = read_frames(tmp_path / "out" / "frames.h5")
    assert fs.n_frames == N_FRAMES and (fs.counts != read_frames(base / "frames.h5").counts).nnz == 0


def test_zero_photon_frames_are_dropped_and_near_integer_counts_rounded(base, tmp_path):
    from spicompute.io.frames import read_frames

    x = _good_images(base).astype(np.float64)
    x = np.concatenate([x[:3], np.zeros_like(x[:1]), x[3:]])
    x += np.random.default_rng(3).normal(0, 0.02, x.shape) * (x > 0)  # photon-converted: near integers
    p = _h5(tmp_path, "plain.h5", data=x)
    proc = _ok(_frames_cmd(tmp_path, input=str(p), empty_frames="drop", **PLAIN), tmp_path)
    assert "dropping 1 frame(s)" in proc.stderr and "frame_id [3]" in proc.stderr  # a warning
    fs = read_frames(tmp_path / "out" / "frames.h5")
    assert fs.frame_id.tolist() == [0, 1, 2] + list(range(4, N_FRAMES + 1))
    assert (fs.counts != read_frames(base / "frames.h5").counts).nnz == 0


def test_intact_averages_reference_selection_and_dragonfly2d_pass(base, tmp_path):
    import pandas as pd

    _ok(_cc_cmd(tmp_path, base / "averages.h5"), tmp_path)
    assert (tmp_path / "out" / "cc.h5").exists()
    _ok(_orient_cmd(tmp_path, base / "averages.h5", reference=str(base / "volume.h5"), edge_nm=20.0),
        tmp_path)
    assert len(pd.read_parquet(tmp_path / "out" / "o.parquet")) == 6
    (tmp_path / "selections").mkdir()
    good = _copy(base / "selections" / "good.json", tmp_path / "selections" / "good.json")
    _ok(_select_cmd(base, tmp_path, good), tmp_path)
    sel = pd.read_parquet(tmp_path / "out" / "select.parquet")
    assert sel.loc[sel["selected"], "average_id"].tolist() == [0, 2, 4]
    _ok(_import_cmd(tmp_path, base / "output_010.h5", base / "det.h5"), tmp_path)
    assert (tmp_path / "out" / "averages.h5").exists()
