"""`make check-baseline`: a fresh run's metrics against the committed ones, one verdict per stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

GIT_ENV = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)


def _write(root, name, doc):
    (root / "metrics" / name).write_text(json.dumps(doc))


def _check(root):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "spicompute.check_baseline"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)


def test_verdict_per_stage_within_tolerances(tmp_path):
    (tmp_path / "metrics").mkdir()
    _write(tmp_path, "embed.json", {"n_averages": 400, "explained_variance_ratio": [0.5, 0.2], "seconds": 3.0,
                                    "cluster_on": "pc"})
    _write(tmp_path, "vae.json", {"final_loss": 0.14116, "seconds": 3.5, "device": "cpu"})
    _write(tmp_path, "frames.json", {"n_frames": 8000})
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "baseline")

    # another machine: last-bit differences, other timings and device -> reproduced
    _write(tmp_path, "embed.json", {"n_averages": 400, "explained_variance_ratio": [0.5 * (1 + 1e-10), 0.2],
                                    "seconds": 9.0, "cluster_on": "pc"})
    _write(tmp_path, "vae.json", {"final_loss": 0.14116 * (1 + 5e-4), "seconds": 1.0, "device": "cuda"})
    proc = _check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["embed: OK (within 1e-06 relative of HEAD)", "frames: OK (within 1e-06 relative of HEAD)",
                         "vae: OK (within 0.001 relative of HEAD)"]
    assert lines[-1] == "baseline: reproduced"

    # a real difference, a missing stage and a changed string are each named on their stage's line
    _write(tmp_path, "embed.json", {"n_averages": 400, "explained_variance_ratio": [0.51, 0.2],
                                    "seconds": 9.0, "cluster_on": "isomap"})
    (tmp_path / "metrics" / "frames.json").unlink()
    proc = _check(tmp_path)
    assert proc.returncode == 1
    out = proc.stdout.splitlines()
    assert out[0].startswith("embed: DIFFERS ") and "cluster_on" in out[0] and "(+1 more)" in out[0]
    assert out[1] == "frames: NOT RUN (no metrics/frames.json; run `dvc repro`)"
    assert out[2].startswith("vae: OK")
    assert out[-1].startswith("baseline: NOT reproduced")


def test_no_committed_baseline_is_one_error_line(tmp_path):
    (tmp_path / "metrics").mkdir()
    _git(tmp_path, "init", "-q")
    proc = _check(tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("check-baseline: error: no committed metrics/")
    assert len(proc.stderr.splitlines()) == 1
