"""`dvc repro -f` of the whole pipeline on unchanged inputs gives byte-identical outputs.

Every stage of dvc.yaml, on a tiny simulated project: run once, force a rerun of every
stage, and compare the dvc.lock hash of every output (metrics, checkpoints and training
curves hold timings and are left out); `dvc status` must then report nothing to do, so a
rerun that changed no science never re-runs downstream work.
"""

from __future__ import annotations

import yaml

from tests.conftest import small_simulation_params
from tests.test_determinism import BIN, _outs_md5, _run, init_git_dvc

import pytest

pytestmark = pytest.mark.slow


def _project(root):
    import shutil

    from tests.conftest import REPO

    root.mkdir()
    shutil.copytree(REPO / "spicompute", root / "spicompute", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "selections").mkdir()
    (root / "selections" / ".keep").write_text("")
    (root / ".gitignore").write_text((REPO / ".gitignore").read_text())
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["simulate"].update(small_simulation_params(n_frames=160))
    params["classify2d"].update(n_models=4, n_runs=2, max_iter=3, min_iter=2, n_rot=8, device="cpu")
    params["embed"].update(methods=["pc", "isomap"], cluster_max_k=3)
    params["regress"].update(max_epochs=5, patience=2)
    params["orient"].update(num_div=6, refine=False)
    params["select"].update(mode="all", min_selected=2)
    params["vae"].update(epochs=2, batch_size=4, threads=1)
    params["volumes"].update(n_points=3)
    params["phase"].update(n_starts=2, n_dm=6, n_er=4, averages_2d=[], threads=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return init_git_dvc(root)


def test_forced_rerun_of_every_stage_is_byte_identical(tmp_path):
    root = _project(tmp_path / "p")
    _run([str(BIN / "dvc"), "repro"], root)
    first = _outs_md5(yaml.safe_load((root / "dvc.lock").read_text()))
    stages = set(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
    assert {k.split("/", 1)[0] for k in first} == stages  # every stage produced outputs
    _run([str(BIN / "dvc"), "repro", "-f"], root)
    second = _outs_md5(yaml.safe_load((root / "dvc.lock").read_text()))
    timed = ("metrics/", "checkpoints/", "dvclive/")
    science = {k for k in first if not k.split("/", 1)[1].startswith(timed)}
    diff = {k: (first[k], second.get(k)) for k in science if first[k] != second.get(k)}
    assert not diff, diff
    assert "changed" not in _run([str(BIN / "dvc"), "status"], root)
