"""What every family of the bad-input corpus shares.

- the intact inputs (``write_intact_inputs``): one small valid file of each kind, which cases
  copy and break;
- the broken-file table: ``FILE_DEFECTS`` (a file that is not there, is a folder, is empty, is
  text, lost its head or its tail) and the HDF5 edits (``delete``, ``replace``, ``poke``,
  ``fill``, ``edit_vlen``, ``claims_frames``, ``h5_file``) that break one field of a file;
- the declared coverage (``COVERAGE``): which defect kinds each input family claims to test;
- the command line of each stage (``frames_cmd``, ``classify_cmd``, ...), and
- the one check every case makes (``check_fails_cleanly``): exit status 2, exactly one non-empty
  stderr line that starts with ``spicompute <stage>: error:`` and names the file, field or
  parameter, no traceback, nothing left in the output folder, within 30 s.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import h5py
import numpy as np
import pytest
import yaml

from tests.conftest import REPO

WAVELENGTH_NM = 0.2066
SIDE = 17  # detector rows = cols
N_FRAMES = 12
DISTANCE_MM = 705.0
PIXEL_MM = 0.8

#: ``data`` keys of a plain HDF5 input with its geometry given as parameters
PLAIN = {"dataset": "data", "distance_mm": DISTANCE_MM, "pixel_size_mm": PIXEL_MM,
         "wavelength_nm": WAVELENGTH_NM}
#: ``data`` keys a Dragonfly photon file needs besides its detector file
DRAGONFLY = {"wavelength_nm": WAVELENGTH_NM}
#: Dragonfly 2D output (recon_type 2d): K models of L x L pixels, R in-plane rotations
DF2D_K, DF2D_L, DF2D_R = 3, 15, 8


# --------------------------------------------------------------------------- the intact inputs

def intact_detector():
    """The SIDE x SIDE detector of every intact input, its central pixel masked (beamstop)."""
    from spicompute.geometry import regular_detector

    mask = np.ones((SIDE, SIDE), bool)
    mask[SIDE // 2, SIDE // 2] = False
    return regular_detector((SIDE, SIDE), WAVELENGTH_NM, DISTANCE_MM, PIXEL_MM, mask=mask)


def intact_frames():
    """FrameSet of N_FRAMES Poisson frames of a sphere-like radial pattern, each with photons."""
    import scipy.sparse as sp

    from spicompute.io.frames import FrameSet

    det = intact_detector()
    q = np.linalg.norm(det.q, axis=1)
    x = np.maximum(q * 20.0, 1e-6)
    lam = 8.0 * (3 * (np.sin(x) - x * np.cos(x)) / x**3) ** 2 + 0.2
    counts = np.random.default_rng(0).poisson(lam, size=(N_FRAMES, det.n_pixels))
    counts[:, ~det.mask] = 0
    return FrameSet(sp.csr_matrix(counts), np.arange(N_FRAMES), det)


def intact_averages(m=6, size=21, empty=False):
    """AverageSet of ``m`` size x size anisotropic sphere-like averages, centre 3 x 3 unobserved.

    ``empty``: every pixel unobserved (weight 0)."""
    from spicompute.io.averages import AverageSet

    c = size // 2
    ii, jj = np.mgrid[:size, :size]
    r = np.hypot(ii - c, jj - c) + 1e-3
    x = r * 0.35
    rng = np.random.default_rng(1)
    if m == 0:
        inten = np.zeros((0, size, size))
    else:
        inten = np.stack([(50 + 10 * k) * (3 * (np.sin(x * (1 + 0.05 * k)) - x * np.cos(x)) / x**3) ** 2
                          * (1 + 0.3 * np.cos(2 * np.arctan2(ii - c, jj - c) + k)) + 0.05
                          + 0.01 * rng.random((size, size)) for k in range(m)])
    weight = np.ones_like(inten)
    weight[:, c - 1:c + 2, c - 1:c + 2] = 0
    if empty:
        weight[:] = 0
    return AverageSet(inten, weight, np.arange(m), np.zeros(m), np.arange(m), np.full(m, 10.0),
                      dq_nm=0.02, wavelength_nm=WAVELENGTH_NM)


def write_intact_inputs(root: Path) -> Path:
    """Write one small valid input of each kind into ``root`` (cases copy what they break).

    frames.h5 (our frames file), run.cxi, photons.emc + det.h5 (Dragonfly), plain.h5 (images
    under ``data``), averages.h5, volume.h5 (a 17^3 reference volume), output_010.h5 (Dragonfly
    2D output), parts/classify2d.parquet and selections/good.json."""
    import pandas as pd

    from spicompute.io.averages import write_averages
    from spicompute.io.cxi import write_cxi
    from spicompute.io.dragonfly import write_dragonfly_detector, write_dragonfly_photons
    from spicompute.io.frames import write_frames
    from spicompute.io.tables import write_table

    fs = intact_frames()
    write_frames(root / "frames.h5", fs)
    write_cxi(root / "run.cxi", fs.images(np.arange(fs.n_frames)), fs.detector)
    write_dragonfly_photons(root / "photons.emc", fs)
    write_dragonfly_detector(root / "det.h5", fs.detector)
    with h5py.File(root / "plain.h5", "w") as h5:
        h5["data"] = fs.images(np.arange(fs.n_frames))
    write_averages(root / "averages.h5", intact_averages())
    with h5py.File(root / "volume.h5", "w") as h5:
        g = np.linspace(-1, 1, 17)
        zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
        h5["volume"] = np.exp(-(xx**2 + yy**2 + zz**2) * 8).astype(np.float32)
        h5["volume"].attrs["dq_nm"] = 0.03
    K, L, R = DF2D_K, DF2D_L, DF2D_R
    with h5py.File(root / "output_010.h5", "w") as h5:
        h5["intens"] = np.random.default_rng(2).random((K, L, L)) + 0.1
        h5["inter_weight"] = np.ones((K, L, L))
        h5["occupancies"] = np.full((N_FRAMES, K), 1.0 / K)
        h5["orientations"] = np.arange(N_FRAMES) % (R * K)
        h5["scale"] = np.ones(N_FRAMES)
        h5["quaternions"] = np.stack([np.linspace(0, 2 * np.pi, R, endpoint=False), np.ones(R)], 1)
    write_table(root / "parts" / "classify2d.parquet", pd.DataFrame({
        "average_id": np.arange(6), "run": np.zeros(6, int), "model": np.arange(6),
        "n_frames": np.full(6, 10.0)}))
    (root / "selections").mkdir()
    (root / "selections" / "good.json").write_text(json.dumps(
        {"name": "good", "kind": "averages", "average_ids": [0, 2, 4]}))
    return root


def intact_images(base: Path) -> np.ndarray:
    """(N_FRAMES, SIDE, SIDE) integer images of the intact plain HDF5 file."""
    with h5py.File(base / "plain.h5") as h5:
        return h5["data"][()]


def copy_file(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def write_params(folder: Path, **sections) -> Path:
    """The project's params.yaml with ``sections`` merged in (value None: drop the key)."""
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


# --------------------------------------------------------------------------- the broken-file table
# A file-level defect maker takes the intact file it breaks and the case folder, and returns
# the broken file's path in that folder (same name, or prefixed where it keeps a part).

def not_hdf5(source: Path, folder: Path) -> Path:
    """A text file under the intact file's name."""
    p = folder / source.name
    p.write_text("this is a text file, not HDF5\n" * 20)
    return p


def truncated_head(source: Path, folder: Path) -> Path:
    """The intact file without its first 2 KiB (the HDF5 superblock is gone)."""
    p = folder / ("head_" + source.name)
    p.write_bytes(source.read_bytes()[2048:])
    return p


def truncated_tail(source: Path, folder: Path) -> Path:
    """The first half of the intact file (a copy cut off mid-way)."""
    p = folder / ("tail_" + source.name)
    data = source.read_bytes()
    p.write_bytes(data[:len(data) // 2])
    return p


def directory(source: Path, folder: Path) -> Path:
    """A folder under the intact file's name."""
    p = folder / source.name
    p.mkdir()
    return p


def missing(source: Path, folder: Path) -> Path:
    """A path with nothing there."""
    return folder / source.name


def empty_file(source: Path, folder: Path) -> Path:
    """A zero-byte file under the intact file's name."""
    p = folder / source.name
    p.write_bytes(b"")
    return p


FILE_DEFECTS: dict[str, Callable[[Path, Path], Path]] = {
    "not-hdf5": not_hdf5,
    "truncated-head": truncated_head,
    "truncated-tail": truncated_tail,
    "directory": directory,
    "missing": missing,
    "empty-file": empty_file,
}

# Field-level defects: each edit is a function of an open, writable h5py.File.

def delete(*keys: str):
    """Edit: remove the datasets or groups ``keys`` (a missing field)."""
    def edit(h5):
        for key in keys:
            del h5[key]
    return edit


def replace(key: str, value):
    """Edit: put ``value`` in place of dataset ``key`` (wrong shape, dtype or value)."""
    def edit(h5):
        del h5[key]
        h5[key] = value
    return edit


def poke(key: str, index, value):
    """Edit: set one element ``index`` of dataset ``key`` to ``value`` (NaN, a negative count)."""
    def edit(h5):
        array = h5[key][()]
        array[index] = value
        h5[key][...] = array
    return edit


def fill(key: str, value):
    """Edit: set every element of dataset ``key`` to ``value`` (everything masked)."""
    def edit(h5):
        h5[key][...] = value
    return edit


def cut(keys, n: int):
    """Edit: keep only the first ``n`` entries of each dataset in ``keys``."""
    def edit(h5):
        for key in keys:
            value = h5[key][()][:n]
            del h5[key]
            h5[key] = value
    return edit


def edit_vlen(key: str, change: Callable[[np.ndarray], None]):
    """Edit: rewrite the variable-length int32 dataset ``key`` after ``change`` edits it in place."""
    def edit(h5):
        rows = h5[key][()]
        change(rows)
        del h5[key]
        h5.create_dataset(key, data=rows, dtype=h5py.vlen_dtype(np.int32))
    return edit


def edited_copy(source: Path, folder: Path, *edits, name: str | None = None) -> Path:
    """Copy of the intact ``source`` in ``folder`` (as ``name``, default its own) with ``edits``."""
    p = copy_file(source, folder / (name or source.name))
    with h5py.File(p, "a") as h5:
        for edit in edits:
            edit(h5)
    return p


def h5_file(folder: Path, name: str, **datasets) -> Path:
    """A new HDF5 file with the given datasets ("a__b" names "a/b"; value None: an empty group)."""
    p = folder / name
    with h5py.File(p, "w") as h5:
        for key, value in datasets.items():
            key = key.replace("__", "/")
            if value is None:
                h5.create_group(key)
            else:
                h5[key] = value
    return p


def chunked_claim(h5, key: str, n: int, compression=None):
    """Create an (n, SIDE, SIDE) u2 dataset ``key`` of which only the first 4-frame chunk is
    written: a tiny file that claims ``n`` frames."""
    ds = h5.create_dataset(key, shape=(n, SIDE, SIDE), dtype="u2", chunks=(4, SIDE, SIDE),
                           compression=compression)
    ds[:4] = 1


# --------------------------------------------------------------------------- declared coverage
# Defect kinds beyond the file-level ones of FILE_DEFECTS.
FIELD_DEFECTS = (
    "missing-field",   # a dataset, group, attribute or parameter is absent
    "wrong-shape",     # wrong rank or size of a field, or two fields that disagree
    "wrong-dtype",     # strings where numbers belong, a group where a dataset belongs
    "non-finite",      # NaN or Inf
    "negative",        # a negative count, intensity or length
    "out-of-range",    # an index or value outside what it refers to
    "too-large",       # a file or parameter that claims far more than can be read or made
    "nothing-left",    # no frames, no photons, every pixel masked or unobserved
    "bad-value",       # a parameter value or field content the stage rejects
    "unknown-key",     # a misspelt section, key or parameter
    "not-parsable",    # not YAML / not JSON / not the expected container
)
DEFECT_KINDS = (*FILE_DEFECTS, *FIELD_DEFECTS)

#: family (one test module each) -> the defect kinds its cases claim to cover
COVERAGE: dict[str, frozenset[str]] = {
    "plain_hdf5": frozenset({*FILE_DEFECTS, "missing-field", "wrong-shape", "wrong-dtype", "non-finite",
                             "negative", "bad-value", "too-large", "nothing-left"}),
    "cxi": frozenset({*FILE_DEFECTS, "missing-field", "wrong-shape", "wrong-dtype", "too-large",
                      "nothing-left"}),
    "dragonfly": frozenset({*FILE_DEFECTS, "missing-field", "wrong-shape", "non-finite", "negative",
                            "out-of-range", "too-large", "nothing-left"}),
    "frames_file": frozenset({*FILE_DEFECTS, "missing-field", "wrong-shape", "non-finite", "negative",
                              "nothing-left"}),
    "averages": frozenset({*FILE_DEFECTS, "missing-field", "wrong-shape", "non-finite", "nothing-left"}),
    "reference": frozenset({*FILE_DEFECTS, "missing-field", "wrong-shape", "wrong-dtype", "non-finite",
                            "out-of-range"}),
    "selections": frozenset({"missing", "directory", "not-parsable", "bad-value", "wrong-dtype",
                             "missing-field", "nothing-left"}),
    "dragonfly2d": frozenset({*FILE_DEFECTS, "missing-field", "wrong-shape", "wrong-dtype", "non-finite",
                              "negative", "out-of-range"}),
    "params": frozenset({"missing", "directory", "not-parsable", "unknown-key", "bad-value", "wrong-dtype",
                         "negative", "too-large", "out-of-range"}),
}


# --------------------------------------------------------------------------- the case registry

class Case(NamedTuple):
    """One broken input. ``build(base, folder)`` makes it in ``folder`` and returns the argv
    after ``spicompute`` and the needles that must all appear in the one stderr line."""
    build: Callable[[Path, Path], tuple[list[str], list[str]]]
    kind: str
    slow: bool


class Cases(dict):
    """The cases of one input family, by name (the pytest id)."""

    def add(self, name: str, kind: str, build, slow: bool = False) -> None:
        if name in self:
            raise ValueError(f"case {name!r} registered twice")
        if kind not in DEFECT_KINDS:
            raise ValueError(f"case {name!r}: unknown defect kind {kind!r}")
        self[name] = Case(build, kind, slow)

    def case(self, name: str, kind: str, slow: bool = False):
        """Decorator form of ``add``."""
        def register(build):
            self.add(name, kind, build, slow)
            return build
        return register

    def add_file_defects(self, family: str, source: str, command):
        """Register ``<family>-<defect>`` for each file-level defect of ``FILE_DEFECTS``: the intact
        ``source`` (a name in the base folder) broken that way, given to ``command(base, folder,
        path)``; the error must name the broken file."""
        for defect in FILE_DEFECTS:
            self.add(f"{family}-{defect}", defect, _FileDefectCase(defect, source, command))

    def params(self):
        """pytest parameters, sorted by name; slow cases carry the ``slow`` mark."""
        return [pytest.param(name, id=name, marks=[pytest.mark.slow] if c.slow else [])
                for name, c in sorted(self.items())]

    def kinds(self) -> set[str]:
        return {c.kind for c in self.values()}


class _FileDefectCase:
    """Builder of one file-level defect case (see ``Cases.add_file_defects``)."""

    def __init__(self, defect, source, command):
        self.defect, self.source, self.command = defect, source, command

    def __call__(self, base: Path, folder: Path):
        path = FILE_DEFECTS[self.defect](base / self.source, folder)
        return self.command(base, folder, path), [path.name]


# --------------------------------------------------------------------------- stage command lines

def frames_cmd(d: Path, **data) -> list[str]:
    """``frames`` with the project's params and ``data`` keys merged in (``input`` "" unless given)."""
    params = write_params(d, data={"input": "", **data})
    return ["frames", "--params", str(params), "--out", str(d / "out" / "frames.h5"),
            "--truth", str(d / "out" / "truth.h5")]


def classify_cmd(d: Path, frames: Path | None, params: Path | None = None, **section) -> list[str]:
    """``classify2d`` on ``frames`` (default d/frames.h5) with a tiny run; ``section`` overrides."""
    params = params or write_params(d, classify2d={"n_models": 2, "n_runs": 1, "max_iter": 2, "min_iter": 1,
                                                   "n_rot": 8, "device": "cpu", **section})
    out = d / "out"
    return ["classify2d", "--params", str(params), "--frames", str(frames or d / "frames.h5"),
            "--out", str(out / "averages.h5"), "--frames-table", str(out / "frames.parquet"),
            "--part", str(out / "part.parquet"), "--checkpoints", str(out / "ck"),
            "--metrics", str(out / "m.json"), "--live", ""]


def cc_cmd(d: Path, averages: Path, **section) -> list[str]:
    """``ccmatrix`` on ``averages``; ``section`` overrides its parameters."""
    params = write_params(d, ccmatrix=section)
    return ["ccmatrix", "--params", str(params), "--averages", str(averages),
            "--out", str(d / "out" / "cc.h5"), "--metrics", str(d / "out" / "m.json")]


def orient_cmd(d: Path, averages: Path, **section) -> list[str]:
    """``orient`` on ``averages`` with a coarse grid and no refinement; ``section`` overrides."""
    params = write_params(d, orient={"num_div": 2, "refine": False, **section})
    out = d / "out"
    return ["orient", "--params", str(params), "--averages", str(averages), "--out", str(out / "o.parquet"),
            "--h5", str(out / "o.h5"), "--metrics", str(out / "m.json")]


def regress_cmd(base: Path, d: Path, **section) -> list[str]:
    """``regress`` on the intact averages; ``section`` overrides its parameters."""
    params = write_params(d, regress=section)
    out = d / "out"
    return ["regress", "--params", str(params), "--averages", str(base / "averages.h5"),
            "--embedding", str(d / "embed.parquet"), "--model", str(out / "r.pt"), "--out", str(out / "r.parquet"),
            "--metrics", str(out / "m.json"), "--live", ""]


def select_cmd(base: Path, d: Path, selection: Path) -> list[str]:
    """``select`` in mode ``file`` reading ``selection``."""
    params = write_params(d, select={"mode": "file", "file": str(selection), "min_selected": 2})
    return ["select", "--params", str(params), "--parts", str(base / "parts" / "classify2d.parquet"),
            "--out", str(d / "out" / "select.parquet"), "--metrics", str(d / "out" / "m.json")]


def import_cmd(d: Path, output: Path, detector: Path, wavelength=WAVELENGTH_NM) -> list[str]:
    """``import-dragonfly2d`` of ``output`` with ``detector`` (wavelength None: not given)."""
    out = d / "out"
    argv = ["import-dragonfly2d", "--output", str(output), "--detector", str(detector),
            "--out", str(out / "averages.h5"), "--frames-table", str(out / "frames.parquet"),
            "--part", str(out / "part.parquet")]
    if wavelength is not None:
        argv += ["--wavelength-nm", str(wavelength)]
    return argv


# --------------------------------------------------------------------------- the runner and the check

def run_cli(argv, cwd, timeout=60, in_process: bool = False):
    """``python -m spicompute *argv`` in a subprocess, as dvc.yaml runs it; with
    ``in_process`` the same ``cli.main`` in this process (see :func:`_run_in_process`)."""
    if in_process:
        return _run_in_process(argv, cwd)
    env = dict(os.environ, PYTHONPATH=str(REPO), SPICOMPUTE_NO_PROGRESS="1", DVC_NO_ANALYTICS="1")
    return subprocess.run([sys.executable, "-m", "spicompute", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# Python's own warning filters when it runs a script (pytest's differ): what a user would see
_PYTHON_DEFAULT_FILTERS = (("ignore", DeprecationWarning), ("ignore", PendingDeprecationWarning),
                           ("ignore", ImportWarning), ("ignore", ResourceWarning))


def _warning_to_stderr(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _run_in_process(argv, cwd) -> subprocess.CompletedProcess:
    """``spicompute.cli.main(argv)`` (what the console script and ``python -m spicompute``
    call) in ``cwd``, its stderr as a subprocess would show it: Python-level writes, logging
    and warnings (under Python's default filters, not pytest's), and C-level writes to file
    descriptor 2 (HDF5's error stack).  An exception main() does not turn into its one-line
    error escapes to the test, as a traceback would fail it.  Saves a Python start and the
    stage's imports per case (about 2 s each)."""
    from spicompute import cli

    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryFile() as c_level, contextlib.chdir(cwd):
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(c_level.fileno(), 2)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                    warnings.catch_warnings():
                warnings.simplefilter("default")
                for action, category in _PYTHON_DEFAULT_FILTERS:
                    warnings.simplefilter(action, category)
                warnings.showwarning = _warning_to_stderr
                code = cli.main([str(a) for a in argv])
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        c_level.seek(0)
        c_text = c_level.read().decode(errors="replace")
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue() + c_text)


def leftovers(folder: Path) -> list[str]:
    """Every file (outputs and temporaries) under ``folder``."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def cases_test(cases):
    """The parametrized test of a family module: every case of ``cases`` fails cleanly.

    Called once the module has added all its cases (``test_bad_input_fails_cleanly =
    cases_test(CASES)``), so the parameters are the whole table.
    """
    import pytest

    first = min(cases)  # one case per family also as a real process, exactly as dvc runs it

    @pytest.mark.parametrize("name", cases.params())
    def test_bad_input_fails_cleanly(base, tmp_path, name):
        check_fails_cleanly(cases, name, base, tmp_path, in_process=name != first)

    return test_bad_input_fails_cleanly


def check_fails_cleanly(cases: Cases, name: str, base: Path, folder: Path,
                        in_process: bool = False) -> None:
    """Build case ``name`` in ``folder``, run it (a subprocess, or ``cli.main`` in this
    process) and assert the clean failure (module docstring)."""
    argv, needles = cases[name].build(base, folder)
    start = time.perf_counter()
    proc = run_cli(argv, folder, in_process=in_process)
    elapsed = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert lines[0].startswith(f"spicompute {argv[0]}: error: ")
    assert leftovers(folder / "out") == []
    assert elapsed < 30, f"took {elapsed:.1f} s: must fail fast"


def run_ok(argv, cwd):
    """Run a positive control: exit 0, no traceback."""
    proc = run_cli(argv, cwd)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def check_ingests_intact(base: Path, folder: Path, source: str, **data) -> None:
    """The intact ``source`` through ``frames`` gives back the intact frames, count for count."""
    from spicompute.io.frames import read_frames

    run_ok(frames_cmd(folder, input=str(base / source), **data), folder)
    fs = read_frames(folder / "out" / "frames.h5")
    assert fs.n_frames == N_FRAMES and (fs.counts != read_frames(base / "frames.h5").counts).nnz == 0
