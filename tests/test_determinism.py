"""Determinism: two clones of one project, `dvc repro` of frames -> classify2d -> ccmatrix -> embed.

Same code, same parameters, same seeds: the science arrays must be identical
bit for bit, and so must the dvc.lock hashes of every output (provenance
stamps carry no timestamps), so that DVC recognises identical science and can
skip downstream work.  Only metrics (they hold timings) may differ.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, small_simulation_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
STAGES = ("frames", "classify2d", "ccmatrix", "embed")


def _run(cmd, cwd):
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(cwd), SPICOMPUTE_NO_PROGRESS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _project(root: Path) -> Path:
    root.mkdir()
    shutil.copytree(REPO / "spicompute", root / "spicompute", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".gitignore").write_text((REPO / ".gitignore").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: stages[s] for s in STAGES}}))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["simulate"].update(small_simulation_params(n_frames=80))
    params["classify2d"].update(n_models=3, n_runs=2, max_iter=3, min_iter=2, n_rot=8, device="cpu")
    params["embed"].update(methods=["pc", "spectral"], cluster_max_k=3)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return init_git_dvc(root)


def init_git_dvc(root: Path) -> Path:
    """git + DVC (analytics off) in ``root``, everything committed."""
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "init"], root)
    return root


def _arrays(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        out["@attrs"] = {k: str(v) for k, v in h5.attrs.items()}
    return out


def _outs_md5(lock: dict) -> dict:
    """{stage/path: md5} of every declared output in a dvc.lock (metrics have timings: left out)."""
    return {f"{stage}/{o['path']}": o["md5"] for stage, entry in lock["stages"].items()
            for o in entry.get("outs", [])}


@pytest.fixture(scope="module")
def clones(tmp_path_factory):
    """Two clones of one project, each after `dvc repro embed`."""
    tmp = tmp_path_factory.mktemp("determinism")
    first = _project(tmp / "a")
    second = tmp / "b"
    _run(["git", "clone", "-q", str(first), str(second)], tmp)  # same commit, same code version
    for root in (first, second):
        _run([str(BIN / "dvc"), "repro", "embed"], root)
    return first, second


def test_two_clones_give_identical_science_and_identical_dvc_hashes(clones):
    first, second = clones

    for rel in ("data/frames.h5", "data/truth.h5", "data/averages.h5", "data/ccmatrix.h5", "data/embedding.h5"):
        a, b = _arrays(first / rel), _arrays(second / rel)
        assert a.keys() == b.keys(), rel
        assert a.pop("@attrs") == b.pop("@attrs"), rel  # provenance: no timestamps
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{rel}:{key}")
    for rel in ("results/frames.parquet", "results/parts/classify2d.parquet", "results/parts/embed.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(first / rel), pd.read_parquet(second / rel))

    lock_a = yaml.safe_load((first / "dvc.lock").read_text())
    lock_b = yaml.safe_load((second / "dvc.lock").read_text())
    md5_a, md5_b = _outs_md5(lock_a), _outs_md5(lock_b)
    assert set(md5_a) >= {"frames/data/frames.h5", "classify2d/data/averages.h5", "ccmatrix/data/ccmatrix.h5",
                          "embed/data/embedding.h5"}
    # metrics and classify2d's checkpoints (its per-iteration history) hold timings; every other
    # output -- the science -- must hash identically
    timed = ("metrics/", "checkpoints/")
    science = {k for k in md5_a if not k.split("/", 1)[1].startswith(timed)}
    diff = {k: (md5_a[k], md5_b.get(k)) for k in science if md5_a[k] != md5_b.get(k)}
    assert set(md5_a) == set(md5_b) and not diff, diff
    # DVC sees identical science: nothing to do in either clone
    assert "changed" not in _run([str(BIN / "dvc"), "status"], second)


def test_dvc_repro_after_a_sigkilled_stage_restores_the_same_output(clones):
    """`dvc repro` whose ccmatrix is SIGKILLed as its output is about to be renamed; then again."""
    first, second = clones
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(second), SPICOMPUTE_NO_PROGRESS="1",
               SPICOMPUTE_FAULT_KILL_BEFORE_RENAME="ccmatrix.h5")
    proc = subprocess.run([str(BIN / "dvc"), "repro", "-f", "-s", "ccmatrix"], cwd=second, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    data = second / "data"
    assert not (data / "ccmatrix.h5").exists()  # DVC removed the old one; the new one never got its name
    assert [p.name for p in data.glob(".ccmatrix.h5.*.tmp")]  # killed mid-write
    # a plain `dvc repro` checks the missing output out of the DVC cache (dvc.lock still names it),
    # running none of our code: the output is back, the dead run's temporary stays until the next write
    _run([str(BIN / "dvc"), "repro", "embed"], second)
    assert (data / "ccmatrix.h5").exists()
    _run([str(BIN / "dvc"), "repro", "-f", "-s", "ccmatrix"], second)  # really run the stage again
    assert not list(data.glob(".ccmatrix.h5.*.tmp"))  # the dead run's temporary is cleaned up
    lock_a = yaml.safe_load((first / "dvc.lock").read_text())
    lock_b = yaml.safe_load((second / "dvc.lock").read_text())
    key = "ccmatrix/data/ccmatrix.h5"
    assert _outs_md5(lock_a)[key] == _outs_md5(lock_b)[key]
    assert "changed" not in _run([str(BIN / "dvc"), "status"], second)
