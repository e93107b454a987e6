"""The DVC project: `dvc repro frames` and a parameter variant with `dvc exp run -S`.

Runs in a throw-away git + DVC repository holding a copy of the project's
dvc.yaml, params.yaml and package sources (so dependency hashes are real).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spicompute.io.frames import read_frames
from tests.conftest import REPO, small_simulation_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _run(cmd, cwd):
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.org")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture()
def project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(REPO / "spicompute", root / "spicompute",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".gitignore").write_text((REPO / ".gitignore").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"frames": stages["stages"]["frames"]}}))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["simulate"].update(small_simulation_params(n_frames=80))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    init_repo(root)
    return root


def copy_project(root: Path) -> dict:
    """The package, .gitignore, dvc.yaml and an empty selections/ copied into ``root``;
    returns the default params (to adjust and write to ``root / "params.yaml"``)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "spicompute", root / "spicompute",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "selections").mkdir()
    (root / "selections" / "README.md").write_text("selections\n")
    for f in (".gitignore", "dvc.yaml"):
        shutil.copy(REPO / f, root / f)
    return yaml.safe_load((REPO / "params.yaml").read_text())


def init_repo(root):
    """git + DVC (offline) in ``root``, everything committed."""
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "init"], root)


def test_repro_frames_then_an_experiment_variant(project):
    dvc = str(BIN / "dvc")
    _run([dvc, "repro", "frames"], project)
    assert read_frames(project / "data" / "frames.h5").n_frames == 80
    assert "frames" in (project / "dvc.lock").read_text()
    status = _run([dvc, "status", "frames"], project)
    assert "changed" not in status  # up to date: a second repro would do nothing
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-qm", "baseline"], project)

    _run([dvc, "exp", "run", "-S", "simulate.n_frames=50", "--name", "fewer", "frames"], project)
    assert read_frames(project / "data" / "frames.h5").n_frames == 50
    shown = json.loads(_run([dvc, "exp", "show", "--json"], project))
    text = json.dumps(shown)
    assert "fewer" in text and '"n_frames": 50' in text

    # the dashboard's Experiments page lists both revisions and what differs
    from streamlit.testing.v1 import AppTest

    os.environ["SPI_WORKSPACE"] = str(project)
    try:
        at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120).run()
        at.switch_page("pages/7_Experiments.py").run()
        assert not at.exception
        listing = at.dataframe[0].value
        assert "fewer" in set(listing["name"])
        # the varied parameter is shown against the baseline commit
        assert "simulate.n_frames=50" in listing.set_index("name").loc["fewer", "changed params"]
        assert not at.exception
    finally:
        del os.environ["SPI_WORKSPACE"]
