"""Reliability of the newer stages (embed, regress, vae, volumes, phase) through the real CLI.

- one storage path: a file size limit (as a full disk) at any write of an
  HDF5 or torch output is ``cannot write <file>: File too large``, exit 2,
  no temporary left, the previous outputs and training curves untouched;
- temporaries of killed runs are removed when the stage next starts;
- byte-identical reruns: two runs of ``embed`` (Isomap on > 200 averages),
  ``regress`` and ``vae`` give files with identical hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _cli(root: Path, *argv: str, max_bytes: int | None = None) -> subprocess.CompletedProcess:
    """``python -m spicompute ...`` in ``root``; with ``max_bytes``, no file may grow past it
    (RLIMIT_FSIZE with SIGXFSZ ignored: writes fail with EFBIG as they fail with ENOSPC on a full disk)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    env = dict(os.environ, PYTHONPATH=str(REPO), SPICOMPUTE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "spicompute", *argv, "-q"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=limit if max_bytes is not None else None)


def _hashes(root: Path, names) -> dict:
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))


def _assert_write_failure(proc, stage: str, victim: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " WARNING: " not in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"spicompute {stage}: error: cannot write ") and victim in lines[0], lines[0]
    assert "File too large" in lines[0]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- phase


def test_phase_under_a_file_size_limit_is_a_clean_error_not_a_segfault(tmp_path):
    """HDF5 used to crash (SIGSEGV) at File.close() after a failed flush of the chunked datasets."""
    from tests.dashboard.volume_workspace import write_volumes

    write_volumes(tmp_path / "volumes.h5")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"phase": {"n_starts": 1, "n_dm": 4, "n_er": 4, "averages_2d_count": 0, "threads": 1}}))
    argv = ["phase", "--params", "params.yaml", "--volumes", "volumes.h5", "--out", "out/phased.h5",
            "--table", "out/volumes.parquet", "--metrics", "out/phase.json"]
    proc = _cli(tmp_path, *argv)
    assert proc.returncode == 0, proc.stderr
    before = _tree(tmp_path / "out")
    size = (tmp_path / "out/phased.h5").stat().st_size
    for limit in (1000, size // 2):  # at the first write, and part-way through the file
        proc = _cli(tmp_path, *argv, max_bytes=limit)
        _assert_write_failure(proc, "phase", "phased.h5")
        assert _tree(tmp_path / "out") == before  # earlier outputs untouched, no temporary left


# --------------------------------------------------------------------------- vae


@pytest.fixture(scope="module")
def vae_project(tmp_path_factory):
    from tests.vae.test_vae_stages import _project

    root = _project(tmp_path_factory.mktemp("vae_rel"))
    assert _cli(root, "select", "--params", "params.yaml").returncode == 0
    proc = _cli(root, "vae", "--params", "params.yaml")
    assert proc.returncode == 0, proc.stderr
    return root


VAE_OUTPUTS = ("models/vae.pt", "models/vae.json", "results/parts/vae.parquet")


def test_vae_rerun_is_byte_identical_and_keeps_timings_out_of_the_model(vae_project, tmp_path):
    root = tmp_path / "again"
    shutil.copytree(vae_project, root)
    shutil.rmtree(root / "checkpoints")  # train afresh, not resume
    proc = _cli(root, "vae", "--params", "params.yaml")
    assert proc.returncode == 0, proc.stderr
    assert _hashes(root, VAE_OUTPUTS) == _hashes(vae_project, VAE_OUTPUTS)
    side = json.loads((root / "models/vae.json").read_text())
    assert side["history"] and all("seconds" not in row for row in side["history"])
    seconds = pd.read_csv(root / "dvclive/vae/plots/metrics/seconds.tsv", sep="\t")  # the timings went here
    assert len(seconds) == len(side["history"]) and (seconds["seconds"] > 0).all()
    import zipfile

    with zipfile.ZipFile(root / "models/vae.pt") as zf:  # member names never follow a temporary's name
        assert {n.split("/")[0] for n in zf.namelist()} == {"archive"}


@pytest.mark.parametrize("limit", [3000, 200_000])
def test_vae_on_a_full_disk_keeps_previous_outputs_and_curves(vae_project, tmp_path, limit):
    root = tmp_path / "ws"
    shutil.copytree(vae_project, root)
    shutil.rmtree(root / "checkpoints")
    before = _hashes(root, VAE_OUTPUTS)
    curves = _tree(root / "dvclive/vae")
    assert curves
    proc = _cli(root, "vae", "--params", "params.yaml", max_bytes=limit)
    _assert_write_failure(proc, "vae", "checkpoints/vae/last.pt")
    assert _hashes(root, VAE_OUTPUTS) == before
    assert _tree(root / "dvclive/vae") == curves  # the previous run's curves are not wiped
    assert _temporaries(root) == []


def test_temporaries_of_killed_runs_are_removed_at_the_next_start(vae_project, tmp_path):
    """A run killed mid-write leaves ``.<name>.<pid>.*.tmp``; the next run of the stage removes
    them even where it writes no file of that name (here: a checkpoint already complete)."""
    root = tmp_path / "ws"
    shutil.copytree(vae_project, root)
    dead = _dead_pid()
    stale = [root / f"checkpoints/vae/.last.pt.{dead}.abc123.tmp", root / f"models/.vae.pt.{dead}.x1.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    (root / f"dvclive/.vae.{dead}.q9.tmp").mkdir()
    (root / f"dvclive/.vae.{dead}.q9.tmp/metrics.json").write_text("{}")
    alive = root / f"models/.vae.json.{os.getpid()}.z.tmp"  # a live writer's temporary is left alone
    alive.write_text("{}")
    proc = _cli(root, "vae", "--params", "params.yaml")
    assert proc.returncode == 0, proc.stderr
    assert _temporaries(root) == [str(alive.relative_to(root))]
    assert _hashes(root, VAE_OUTPUTS) == _hashes(vae_project, VAE_OUTPUTS)


# --------------------------------------------------------------------------- embed, regress


def _ccmatrix(path: Path, m: int = 230) -> None:
    """A CC matrix of ``m`` averages on a noisy curved 1-D manifold (Isomap takes ARPACK above 200)."""
    from spicompute.landscape.commonlines import CCResult, write_ccmatrix

    rng = np.random.default_rng(4)
    t = rng.uniform(0, 3, m)
    x = np.stack([np.cos(t), np.sin(t), 0.3 * t], 1) + 0.02 * rng.normal(size=(m, 3))
    cc = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1)).astype(np.float32)
    ang = np.zeros((m, m), np.int16)
    np.fill_diagonal(ang, -1)
    write_ccmatrix(path, CCResult(cc, ang, ang.T.copy()), average_id=np.arange(m), angles_rad=np.linspace(0, 3, 8),
                   radii=np.arange(3, 9), dq_nm=0.05, profile=np.ones(6), normalisation="pearson")


def test_embed_rerun_is_byte_identical_with_isomap(tmp_path):
    _ccmatrix(tmp_path / "cc.h5")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"embed": {"methods": ["pc", "isomap", "spectral"], "cluster_max_k": 3}}))
    hashes = []
    for run in ("a", "b"):
        proc = _cli(tmp_path, "embed", "--params", "params.yaml", "--ccmatrix", "cc.h5",
                    "--part", f"{run}/embed.parquet", "--out", f"{run}/embedding.h5", "--metrics", f"{run}/m.json")
        assert proc.returncode == 0, proc.stderr
        hashes.append(_hashes(tmp_path / run, ("embed.parquet", "embedding.h5")))
    assert hashes[0] == hashes[1]
    coords = pd.read_parquet(tmp_path / "a/embed.parquet")
    assert np.isfinite(coords["isomap_1"]).all() and coords["isomap_1"].std() > 0


def test_regress_rerun_is_byte_identical(tmp_path):
    from spicompute.io.averages import write_averages
    from tests.bad_inputs.corpus import intact_averages as _averages

    avg = _averages(m=40, size=21)
    avg.run[:] = np.arange(40) % 4
    write_averages(tmp_path / "averages.h5", avg)
    rng = np.random.default_rng(0)
    pd.DataFrame({"average_id": avg.average_id, **{f"pc_{k}": rng.normal(size=40) for k in (1, 2, 3)}}
                 ).to_parquet(tmp_path / "embed.parquet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"regress": {"hidden": [16], "max_epochs": 5, "patience": 5, "batch_size": 8, "seed": 1, "threads": 1}}))
    hashes = []
    for run in ("a", "b"):
        proc = _cli(tmp_path, "regress", "--params", "params.yaml", "--averages", "averages.h5",
                    "--embedding", "embed.parquet", "--model", f"{run}/regressor.pt", "--out", f"{run}/r.parquet",
                    "--metrics", f"{run}/m.json", "--live", f"{run}/live")
        assert proc.returncode == 0, proc.stderr
        hashes.append(_hashes(tmp_path / run, ("regressor.pt", "regressor.json", "r.parquet")))
    assert hashes[0] == hashes[1]


# --------------------------------------------------------------------------- bad inputs of select, volumes, phase


def _workspace(vae_project: Path, dest: Path, **sections) -> Path:
    """A copy of the trained workspace, its params.yaml updated with ``sections``."""
    shutil.copytree(vae_project, dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["volumes"]["selections"] = "selections"
    for name, values in sections.items():
        params.setdefault(name, {}).update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    (dest / "selections").mkdir(exist_ok=True)
    return dest


def _latents(root: Path, **columns) -> None:
    from spicompute.io.tables import read_table, write_table

    t = read_table(root / "results/parts/vae.parquet")
    for col, value in columns.items():
        t[col] = value
    write_table(root / "results/parts/vae.parquet", t)


def _selection(root: Path, name: str, payload) -> None:
    (root / "selections" / name).write_text(payload if isinstance(payload, str) else json.dumps(payload))


def _volumes_h5(root: Path, **attrs) -> None:
    import h5py

    from tests.dashboard.volume_workspace import write_volumes

    write_volumes(root / "data/volumes.h5")
    with h5py.File(root / "data/volumes.h5", "a") as h5:
        for key, value in attrs.items():
            h5.attrs[key] = value


BAD = {
    # select: parameters
    "select-box-strings": ("select", {"select": {"mode": "box", "box": {"pc_1": ["a", "b"]}}}, None,
                           ["select.box.pc_1", "numbers or null"]),
    "select-gain-string": ("select", {"select": {"mode": "gain", "gain": ["x", None]}}, None, ["select.gain"]),
    "select-file-number": ("select", {"select": {"mode": "file", "file": 5}}, None, ["select.file", "5"]),
    "select-file-outside": ("select", {"select": {"mode": "file", "file": "../elsewhere/few.json"}}, None,
                            ["select.file", "selections/<name>.json"]),
    "select-file-absolute-outside": ("select", {"select": {"mode": "file", "file": "/etc/passwd"}}, None,
                                     ["select.file"]),
    "select-file-trailing-newline": ("select", {"select": {"mode": "file", "file": "selections/abc\n.json"}},
                                     lambda r: _selection(r, "abc\n.json", {"name": "abc", "average_ids": [1]}),
                                     ["select.file"]),
    "select-file-symlink-outside": ("select", {"select": {"mode": "file", "file": "selections/link.json"}},
                                    lambda r: (r / "selections/link.json").symlink_to(r / "params.yaml"),
                                    ["select.file"]),
    # select: empty selections blame the selection, not the classify2d table
    "select-file-unknown-ids": ("select", {"select": {"mode": "file", "file": "selections/none.json"}},
                                lambda r: _selection(r, "none.json", {"name": "none", "average_ids": [1000, 1001]}),
                                ["selections/none.json", "average_ids", "keeps no average"]),
    "select-box-empty": ("select", {"select": {"mode": "box", "box": {"pc_1": [50, 60]}}}, None,
                         ["select.box", "keeps no average"]),
    "select-min-frames-empty": ("select", {"select": {"min_frames": 1e9}}, None, ["select.min_frames"]),
    # volumes: parameters
    "volumes-percentiles-strings": ("volumes", {"volumes": {"percentiles": ["a", "b"]}}, None,
                                    ["volumes.percentiles"]),
    "volumes-percentiles-null": ("volumes", {"volumes": {"percentiles": [None, 98]}}, None,
                                 ["volumes.percentiles"]),
    "volumes-selections-number": ("volumes", {"volumes": {"selections": 5}}, None, ["volumes.selections"]),
    "volumes-selections-outside": ("volumes", {"volumes": {"selections": "/tmp"}}, None,
                                   ["volumes.selections", "selections/"]),
    "volumes-n-points-huge": ("volumes", {"volumes": {"n_points": 1e9}}, None, ["volumes.n_points", "GiB"]),
    # volumes: latents
    "volumes-z-nan": ("volumes", {}, lambda r: _latents(r, z_1=np.nan), ["vae.parquet", "z_1", "NaN"]),
    "volumes-z-inf": ("volumes", {}, lambda r: _latents(r, z_1=np.inf), ["vae.parquet", "z_1", "Inf"]),
    "volumes-no-trained-rows": ("volumes", {}, lambda r: _latents(r, vae_trained=False),
                                ["vae.parquet", "vae_trained", "no trained row"]),
    "volumes-model-pickle": ("volumes", {}, lambda r: (r / "models/vae.pt").write_bytes(
        __import__("pickle").dumps(Path("x"))), ["vae.pt", "refused"]),
    # phase: volumes file
    "phase-dq-string": ("phase", {"phase": {"averages_2d_count": 0}}, lambda r: _volumes_h5(r, dq_nm="abc"),
                        ["volumes.h5", "@dq_nm"]),
    "phase-center-string": ("phase", {"phase": {"averages_2d_count": 0}},
                            lambda r: _volumes_h5(r, center="abc"), ["volumes.h5", "@center"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_of_a_newer_stage_fails_cleanly(vae_project, tmp_path, name):
    stage, sections, edit, needles = BAD[name]
    root = _workspace(vae_project, tmp_path / "ws", **sections)
    if edit is not None:
        edit(root)
    before = {d: _tree(root / d) for d in ("data", "results", "models", "metrics")}
    proc = _cli(root, stage, "--params", "params.yaml")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"spicompute {stage}: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert "classify2d.parquet" not in lines[0]
    assert {d: _tree(root / d) for d in before} == before  # nothing written, no temporary left
    assert "Skipping" not in proc.stderr and "weights_only" not in proc.stderr


def test_one_malformed_selection_file_does_not_block_volumes(vae_project, tmp_path):
    import h5py

    root = _workspace(vae_project, tmp_path / "ws")
    _selection(root, "broken.json", "{not json")
    _selection(root, "probe.json", {"name": "probe", "kind": "latent_points", "points": [[0.25]]})
    proc = _cli(root, "volumes", "--params", "params.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "broken.json" in proc.stderr and "skipping" in proc.stderr  # reported by name
    with h5py.File(root / "data/volumes.h5") as h5:
        assert [s.decode() for s in h5["volumes/source"][()]][-1] == "selection:probe"
        assert np.isfinite(h5["volumes/intensity"][()]).all()
    # ... but the selection in use is never skipped
    root2 = _workspace(vae_project, tmp_path / "ws2", select={"mode": "file", "file": "selections/broken.json"})
    _selection(root2, "broken.json", "{not json")
    proc = _cli(root2, "select", "--params", "params.yaml")
    assert proc.returncode == 2 and "broken.json" in proc.stderr, proc.stderr


def test_selection_names_and_ids_are_validated_in_full(tmp_path):
    from spicompute.errors import InputError
    from spicompute.landscape.selections import validate_name, write_selection

    for bad in ("abc\n", "abc\n.json", "a/b", "../x", "a" * 65, ""):
        with pytest.raises(ValueError):
            validate_name(bad)
    assert validate_name("early-melt_2.v1") == "early-melt_2.v1"
    with pytest.raises(InputError, match="average_ids"):
        write_selection(tmp_path, "frac", average_ids=[1.5, 2.7])
    assert not (tmp_path / "frac.json").exists()
    path = write_selection(tmp_path, "whole", average_ids=[np.int64(3), 2.0, 3])
    assert json.loads(path.read_text())["average_ids"] == [2, 3]


@pytest.mark.parametrize("payload", ["list", "shapes", "history", "pickle"])
def test_malformed_vae_checkpoint_is_ignored_with_a_warning(vae_project, tmp_path, payload):
    import pickle

    import torch

    root = _workspace(vae_project, tmp_path / "ws")
    ckpt = root / "checkpoints/vae/last.pt"
    state = torch.load(ckpt, weights_only=True)
    if payload == "list":
        torch.save([1, 2, 3], ckpt)
    elif payload == "shapes":
        state["model"] = {k: torch.zeros(tuple(s + 1 for s in v.shape)) for k, v in state["model"].items()}
        torch.save(state, ckpt)
    elif payload == "history":
        state["history"] = "[{not json"
        torch.save(state, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(Path("x")))
    proc = _cli(root, "vae", "--params", "params.yaml")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "ignoring checkpoint" in warnings[0] and "last.pt" in warnings[0], proc.stderr
    assert "weights_only" not in proc.stderr and "Traceback" not in proc.stderr
    assert _hashes(root, VAE_OUTPUTS) == _hashes(vae_project, VAE_OUTPUTS)  # trained afresh: the same model


def test_nan_training_is_an_error_not_nan_latents(tmp_path):
    """A loss that is NaN from the first epoch (here: the poisson loss, see test_vae_stages) used to
    write all-NaN latents with exit 0; now the vae stage names the parameter and writes nothing."""
    from tests.vae.test_vae_stages import _project

    root = _project(tmp_path, vae={"loss": "poisson", "epochs": 1})
    assert _cli(root, "select", "--params", "params.yaml").returncode == 0
    proc = _cli(root, "vae", "--params", "params.yaml")
    if proc.returncode == 0:
        pytest.skip("the poisson loss trains finitely now: no NaN case to provoke")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "parameter vae.loss" in lines[0], proc.stderr
    assert not (root / "results/parts/vae.parquet").exists() and not (root / "models/vae.pt").exists()


def test_volumes_and_phase_reruns_are_byte_identical(vae_project, tmp_path):
    root = _workspace(vae_project, tmp_path / "ws", phase={"n_starts": 1, "n_dm": 4, "n_er": 4,
                                                            "averages_2d_count": 1, "threads": 1})
    outputs = ("data/volumes.h5", "data/phased.h5", "results/volumes.parquet")
    hashes = []
    for _ in range(2):
        for stage in ("volumes", "phase"):
            proc = _cli(root, stage, "--params", "params.yaml")
            assert proc.returncode == 0, proc.stderr
        hashes.append(_hashes(root, outputs))
    assert hashes[0] == hashes[1]
