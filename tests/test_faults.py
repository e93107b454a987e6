"""Fault injection: SIGKILL mid-run and at the worst moment of a write, read-only folders, full disks.

ccmatrix and orient have no checkpoints (each is minutes at the paper's scale;
classify2d and vae, the long stages, resume -- see test_emc2d / test_vae_stages).
For them the promise is: a killed run leaves nothing under a final name that
is not complete, and the re-run gives exactly the uninterrupted run's result.
The kill comes at the worst moment: the output is complete under its
temporary name and about to be renamed (``SPICOMPUTE_FAULT_KILL_BEFORE_RENAME``),
and, for orient, at a random time while a poller checks that every file that
ever appears under a final name is complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO
from tests.bad_inputs.corpus import intact_averages as _averages, leftovers, write_params as _params

pytestmark = pytest.mark.slow


def _start(argv, cwd, **env):
    env = dict(os.environ, PYTHONPATH=str(REPO), SPICOMPUTE_NO_PROGRESS="1", **env)
    return subprocess.Popen([sys.executable, "-m", "spicompute", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(argv, cwd, **env):
    proc = _start(argv, cwd, **env)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _h5_arrays(path: Path) -> dict:
    """Every dataset of an HDF5 file (reading all of it: a half-written file fails here)."""
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                      if isinstance(obj, h5py.Dataset) else None)
    return out


def _same_h5(a: Path, b: Path) -> None:
    x, y = _h5_arrays(a), _h5_arrays(b)
    assert x.keys() == y.keys()
    for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(scope="module")
def averages(tmp_path_factory):
    from spicompute.io.averages import write_averages

    root = tmp_path_factory.mktemp("faults")
    write_averages(root / "averages.h5", _averages(m=40, size=41))
    return root / "averages.h5"


def _cc_argv(d: Path, averages: Path) -> list:
    params = _params(d, ccmatrix={"n_angles": 90})
    return ["ccmatrix", "--params", str(params), "--averages", str(averages),
            "--out", str(d / "out" / "cc.h5"), "--metrics", str(d / "out" / "cc.json")]


def _orient_argv(d: Path, averages: Path) -> list:
    params = _params(d, orient={"num_div": 8, "refine_iterations": 2, "chunk": 64, "threads": 1})
    out = d / "out"
    return ["orient", "--params", str(params), "--averages", str(averages), "--out", str(out / "o.parquet"),
            "--h5", str(out / "o.h5"), "--metrics", str(out / "o.json")]


@pytest.mark.parametrize("stage,victim", [("ccmatrix", "cc.h5"), ("ccmatrix", "cc.json"),
                                          ("orient", "o.h5"), ("orient", "o.parquet")])
def test_kill_before_rename_leaves_no_half_file_and_the_rerun_matches(tmp_path, averages, stage, victim):
    argv = _cc_argv if stage == "ccmatrix" else _orient_argv
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir(), killed.mkdir()
    rc, _, err = _run(argv(ref, averages), ref)
    assert rc == 0, err

    rc, _, _ = _run(argv(killed, averages), killed, SPICOMPUTE_FAULT_KILL_BEFORE_RENAME=victim)
    assert rc == -signal.SIGKILL
    files = leftovers(killed / "out")
    assert victim not in files  # never visible under its final name
    assert any(f.startswith(f".{victim}.") and f.endswith(".tmp") for f in files), files  # died mid-write
    for name in files:  # whatever did reach its final name (outputs written earlier) is complete
        if name.endswith(".h5") and not name.startswith("."):
            _h5_arrays(killed / "out" / name)

    rc, _, err = _run(argv(killed, averages), killed)
    assert rc == 0, err
    assert leftovers(killed / "out") == leftovers(ref / "out")  # the dead run's temporary is gone
    for name in leftovers(ref / "out"):
        a, b = ref / "out" / name, killed / "out" / name
        if name.endswith(".h5"):
            _same_h5(a, b)
        elif name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
        else:
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            drop = [k for k in x if k.startswith("seconds") or k in ("gflops",)]
            assert {k: v for k, v in x.items() if k not in drop} == \
                {k: v for k, v in y.items() if k not in drop}


def test_orient_killed_at_random_times_never_shows_a_half_written_output(tmp_path, averages):
    """SIGKILL at several times through the run while polling the final names."""
    ref = tmp_path / "ref"
    ref.mkdir()
    t0 = time.perf_counter()
    rc, _, err = _run(_orient_argv(ref, averages), ref)
    assert rc == 0, err
    duration = time.perf_counter() - t0
    d = tmp_path / "run"
    d.mkdir()
    finals = [d / "out" / n for n in ("o.h5", "o.parquet", "o.json")]
    for fraction in (0.3, 0.6, 0.9):
        proc = _start(_orient_argv(d, averages), d)
        deadline = time.perf_counter() + fraction * duration
        while time.perf_counter() < deadline and proc.poll() is None:
            for path in finals:
                if path.exists():  # visible under a final name -> must be complete
                    if path.suffix == ".h5":
                        _h5_arrays(path)
                    elif path.suffix == ".parquet":
                        pd.read_parquet(path)
                    else:
                        json.loads(path.read_text())
            time.sleep(0.005)
        proc.kill()
        proc.communicate()
        for path in finals:
            path.unlink(missing_ok=True)  # start the next try from scratch, as a fresh output
    rc, _, err = _run(_orient_argv(d, averages), d)
    assert rc == 0, err
    assert not [f for f in leftovers(d / "out") if f.endswith(".tmp")]
    _same_h5(ref / "out" / "o.h5", d / "out" / "o.h5")
    pd.testing.assert_frame_equal(pd.read_parquet(ref / "out" / "o.parquet"),
                                  pd.read_parquet(d / "out" / "o.parquet"))


# --------------------------------------------------------------------------- storage faults

SMALL_SIM = dict(n_frames=40, detector_size=17, binning=8, volume_size=32, melt_levels=3, photons_mean=400,
                 seed=3, beamstop_radius_px=1.0, gap_width_px=0)


def _frames_argv(d: Path, out: Path) -> list:
    params = _params(d, data={"input": ""}, simulate=SMALL_SIM)
    return ["frames", "--params", str(params), "--out", str(out / "frames.h5"), "--truth", str(out / "truth.h5")]


def _classify_argv(d: Path, frames: Path, out: Path, checkpoints: bool = True) -> list:
    params = _params(d, classify2d={"n_models": 3, "n_runs": 2, "max_iter": 3, "min_iter": 1, "n_rot": 8,
                                    "device": "cpu"})
    return ["classify2d", "--params", str(params), "--frames", str(frames), "--out", str(out / "averages.h5"),
            "--frames-table", str(out / "frames.parquet"), "--part", str(out / "part.parquet"),
            "--checkpoints", str(out / "ck") if checkpoints else "", "--metrics", str(out / "m.json"),
            "--live", ""]


@pytest.fixture(scope="module")
def small_frames(tmp_path_factory):
    from tests.bad_inputs.corpus import intact_frames as _frames
    from spicompute.io.frames import write_frames

    root = tmp_path_factory.mktemp("storage")
    write_frames(root / "frames.h5", _frames())
    return root / "frames.h5"


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _read_only_run(argv, cwd: Path, folder: Path):
    """Run with ``folder`` read-only: chmod for a normal user; root ignores permissions, so
    there a read-only tmpfs is mounted on it in a user + mount namespace (``unshare -rm``)."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "spicompute", *argv]
    env = dict(os.environ, PYTHONPATH=str(REPO), SPICOMPUTE_NO_PROGRESS="1")
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        finally:
            folder.chmod(0o755)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root without user namespaces: cannot make a folder read-only")
    script = f"mount -t tmpfs -o ro tmpfs {folder} && exec \"$@\""
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *cmd], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stage", ["frames", "classify2d", "ccmatrix"])
def test_read_only_output_folder_fails_up_front(tmp_path, small_frames, averages, stage):
    out = tmp_path / "out"
    argv = {"frames": lambda: _frames_argv(tmp_path, out),
            "classify2d": lambda: _classify_argv(tmp_path, small_frames, out),
            "ccmatrix": lambda: _cc_argv(tmp_path, averages)}[stage]()
    start = time.perf_counter()
    proc = _read_only_run(argv, tmp_path, out)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert line.startswith(f"spicompute {stage}: error: cannot write ") and "not writable" in line
    assert time.perf_counter() - start < 15  # before the work, not after it
    assert leftovers(out) == []


def _full_disk_run(argv, cwd: Path, max_bytes: int):
    """Run with no file allowed to grow past ``max_bytes`` (RLIMIT_FSIZE; SIGXFSZ ignored so a
    write fails with EFBIG, as it fails with ENOSPC on a full disk)."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    env = dict(os.environ, PYTHONPATH=str(REPO), SPICOMPUTE_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "spicompute", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, preexec_fn=limit)


def _assert_clean_write_failure(proc, stage, out: Path, victim: str):
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_error_line(proc.stderr)
    assert line.startswith(f"spicompute {stage}: error: cannot write ") and victim in line
    assert "File too large" in line
    assert not [f for f in leftovers(out) if f.endswith(".tmp")]


def test_full_disk_frames_leaves_neither_file(tmp_path):
    ref = tmp_path / "ref"
    rc, _, err = _run(_frames_argv(tmp_path, ref), tmp_path)
    assert rc == 0, err
    frames_size = (ref / "frames.h5").stat().st_size
    assert (ref / "truth.h5").stat().st_size > frames_size + 4096
    out = tmp_path / "out"
    proc = _full_disk_run(_frames_argv(tmp_path, out), tmp_path, 4096)  # the frames file fails
    _assert_clean_write_failure(proc, "frames", out, "frames.h5")
    assert leftovers(out) == []
    proc = _full_disk_run(_frames_argv(tmp_path, out), tmp_path, frames_size + 4096)  # the truth fails
    _assert_clean_write_failure(proc, "frames", out, "truth.h5")
    assert leftovers(out) == []  # no frames file without its truth


@pytest.mark.parametrize("checkpoints,victim", [(True, "run_000.h5"), (False, "averages.h5")])
def test_full_disk_classify2d(tmp_path, small_frames, checkpoints, victim):
    out = tmp_path / "out"
    proc = _full_disk_run(_classify_argv(tmp_path, small_frames, out, checkpoints), tmp_path, 2048)
    _assert_clean_write_failure(proc, "classify2d", out, victim)
    assert "averages.h5" not in leftovers(out)


def test_full_disk_parquet_and_json(tmp_path):
    """pyarrow's and Python's write errors take the same clean path as h5py's (select stage)."""
    from spicompute.io.tables import write_table

    part = tmp_path / "part.parquet"
    write_table(part, pd.DataFrame({"average_id": np.arange(50), "run": np.zeros(50, int),
                                    "model": np.arange(50), "n_frames": np.full(50, 10.0)}))
    out = tmp_path / "out"
    argv = ["select", "--params", str(_params(tmp_path, select={"mode": "all"})), "--parts", str(part),
            "--out", str(out / "select.parquet"), "--metrics", str(out / "select.json")]
    _assert_clean_write_failure(_full_disk_run(argv, tmp_path, 512), "select", out, "select.parquet")
    assert leftovers(out) == []
    rc, _, err = _run(argv, tmp_path)  # the same command with room to write succeeds
    assert rc == 0, err
    assert sorted(leftovers(out)) == ["select.json", "select.parquet"]
