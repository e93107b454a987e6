"""select -> vae -> volumes through the CLI on a small project made in the test: outputs,
bad input, resume after SIGKILL (same weights), torchrun DDP (same weights as one process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from spicompute.cli import main
from spicompute.io.averages import write_averages
from spicompute.io.tables import read_table, write_table
from tests.melt_series import melt_averages

pytestmark = pytest.mark.slow  # whole-stage or whole-pipeline runs: `make test-fast` skips them

N = 24
VAE_PARAMS = {"epochs": 3, "batch_size": 8, "kl_warmup_epochs": 1, "threads": 1, "seed": 3}


def _project(root: Path, vae=None, grid=41, dq=0.045) -> Path:
    avg, t, quats, _, _ = melt_averages(N, seed=2, grid=grid, dq_nm=dq, photons=1e5)
    avg.n_frames[:] = np.r_[np.full(N - 2, 200.0), [5.0, 6.0]]
    write_averages(root / "data/averages.h5", avg)
    ids = avg.average_id
    write_table(root / "results/parts/classify2d.parquet",
                pd.DataFrame({"average_id": ids, "run": avg.run, "model": avg.model, "n_frames": avg.n_frames}))
    write_table(root / "results/parts/embed.parquet",
                pd.DataFrame({"average_id": ids, "pc_1": t - 0.5, "cluster": (t > 0.5).astype(int)}))
    write_table(root / "results/parts/orient.parquet",
                pd.DataFrame({"average_id": ids, "qw": quats[:, 0], "qx": quats[:, 1], "qy": quats[:, 2],
                              "qz": quats[:, 3], "best_cc": 0.9, "gain": 1.0 + (1 - t), "blur_out_deg": 3.0, "blur_in_deg": 2.0}))
    params = {"select": {"mode": "all"}, "vae": dict(VAE_PARAMS, **(vae or {})),
              "volumes": {"n_points": 5, "selections": str(root / "selections")}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _run(root: Path, stage: str, *extra: str) -> int:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return main([stage, "--params", "params.yaml", "-q", *extra])
    finally:
        os.chdir(cwd)


def _cli(root: Path, *args: str, prefix=()) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    return subprocess.run([*prefix, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_select_vae_volumes_end_to_end(tmp_path):
    root = _project(tmp_path, vae={"isotropic_below": 0.05})
    assert _run(root, "select") == 0
    sel = read_table(root / "results/parts/select.parquet")
    assert sel.selected.sum() == N - 2 and sel.reason.iloc[-1].startswith("n_frames <")
    assert _run(root, "vae") == 0
    lat = read_table(root / "results/parts/vae.parquet")
    assert list(lat.columns) == ["average_id", "z_1", "z_logvar_1", "recon_loss", "size_rel", "vae_trained",
                                 "anisotropy", "orientation_fitted", "vae_qw", "vae_qx", "vae_qy", "vae_qz"]
    assert len(lat) == N and lat.vae_trained.sum() == N - 2 and np.isfinite(lat.z_1).all()
    # vae.isotropic_below 0.05 (the default): the round (melted) averages are sliced at their own random
    # orientation, the others at the fitted one
    orient = read_table(root / "results/parts/orient.parquet")
    used = lat[["vae_qw", "vae_qx", "vae_qy", "vae_qz"]].to_numpy()
    fitted = lat.orientation_fitted.to_numpy(bool)
    np.testing.assert_array_equal(fitted, lat.anisotropy.to_numpy() >= 0.05)
    np.testing.assert_allclose(used[fitted], orient[["qw", "qx", "qy", "qz"]].to_numpy()[fitted])
    assert not np.allclose(used[~fitted], orient[["qw", "qx", "qy", "qz"]].to_numpy()[~fitted])
    melt = 2.0 - orient.gain.to_numpy()   # the project's gain is 1 + (1 - melt t)
    assert fitted.any() and (~fitted).any() and melt[~fitted].mean() > melt[fitted].mean() + 0.3
    # vae.size_fit (default 0.08): every average's fitted size, within the searched range
    assert lat.size_rel.between(0.9, 1.1).all()
    metrics = json.loads((root / "metrics/vae.json").read_text())
    assert metrics["size_fit"] == 0.08 and len(metrics["size_rel_p05_p95"]) == 2
    assert metrics["n_trained_random_orientation"] == int((~fitted & lat.vae_trained).sum())
    assert metrics["epochs"] == 3 and metrics["n_train"] == N - 2 and metrics["q_max_nm"] > metrics["q_min_nm"]
    side = json.loads((root / "models/vae.json").read_text())
    assert side["architecture"]["latent_dim"] == 1 and len(side["history"]) == 3
    state = torch.load(root / "models/vae.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert (root / "dvclive/vae/metrics.json").exists()
    # a dashboard-made latent point joins the line
    from spicompute.landscape.selections import write_selection

    write_selection(root / "selections", "probe", kind="latent_points", points=[[0.25]])
    assert _run(root, "volumes") == 0
    with h5py.File(root / "data/volumes.h5") as h5:
        inten, z = h5["volumes/intensity"][()], h5["volumes/z"][()]
        src = [s.decode() for s in h5["volumes/source"][()]]
        obs = h5["volumes/observed"][()]
        assert inten.shape == (6, 27, 27, 27) and inten.dtype == np.float32 and (inten >= 0).all()
        assert z[-1, 0] == pytest.approx(0.25) and src == ["line"] * 5 + ["selection:probe"]
        assert h5.attrs["center"] == 13 and h5.attrs["dq_nm"] == pytest.approx(metrics["dq3_nm"])
        assert obs[13, 13, 13] == 0 and obs.sum() > 0  # the beamstop region floats free
    # Oh symmetry and Friedel symmetry of the generated volumes
    np.testing.assert_allclose(inten, inten[:, ::-1, ::-1, ::-1], rtol=1e-5)
    np.testing.assert_allclose(inten, np.transpose(inten, (0, 2, 1, 3)), rtol=1e-5)
    trained_z = np.sort(lat.z_1[lat.vae_trained].to_numpy())  # default span: 2nd smallest .. 2nd largest
    np.testing.assert_allclose(z[:5, 0], np.linspace(trained_z[1], trained_z[-2], 5), rtol=1e-5)


@pytest.mark.parametrize("loss", ["mse_log", "poisson"])
def test_two_dimensional_latent_and_poisson_loss_on_another_geometry(tmp_path, loss):
    root = _project(tmp_path, vae={"latent_dim": 2, "loss": loss, "epochs": 2}, grid=65, dq=0.02)
    yaml_params = yaml.safe_load((root / "params.yaml").read_text())
    yaml_params["volumes"]["grid_per_axis"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(yaml_params))
    assert _run(root, "select") == 0 and _run(root, "vae") == 0 and _run(root, "volumes") == 0
    lat = read_table(root / "results/parts/vae.parquet")
    assert {"z_1", "z_2", "z_logvar_2"} <= set(lat.columns)
    assert np.isfinite(lat[["z_1", "z_2", "z_logvar_1", "z_logvar_2"]].to_numpy()).all()
    with h5py.File(root / "data/volumes.h5") as h5:
        assert h5["volumes/z"].shape == (9, 2)
        assert np.isfinite(h5["volumes/intensity"][()]).all()


@pytest.mark.parametrize("change,field", [
    ({"preset": "huge"}, "vae.preset"), ({"latent_dim": 4}, "vae.latent_dim"), ({"epochs": 0}, "vae.epochs"),
    ({"learning_rate": "fast"}, "vae.learning_rate"), ({"lossy": 1}, "vae.lossy"), ({"q_max_nm": -1}, "vae.q_max_nm"),
    ({"class_blur_deg": "wide"}, "vae.class_blur_deg"), ({"class_blur_deg": 45}, "vae.class_blur_deg"),
    ({"class_blur_deg": [1, 2, 3]}, "vae.class_blur_deg"), ({"size_spread": 0.5}, "vae.size_spread"),
    ({"size_spread": "some"}, "vae.size_spread"), ({"resample": "cubic"}, "vae.resample"),
    ({"prefilter_px": -1}, "vae.prefilter_px"), ({"target_oversample": 3}, "vae.target_oversample"),
    ({"loss_target": "pixels"}, "vae.loss_target"), ({"volume_upsample": 4}, "vae.volume_upsample"),
    ({"loss_target": "detector", "target_oversample": 2}, "vae.target_oversample"),
    ({"volume_upsample": "fine"}, "vae.volume_upsample"), ({"target_oversample": True}, "vae.target_oversample"),
    ({"isotropic_below": -0.1}, "vae.isotropic_below"), ({"isotropic_below": "round"}, "vae.isotropic_below"),
    ({"size_fit": 0.01}, "vae.size_fit"), ({"size_fit": 0.5}, "vae.size_fit"), ({"size_fit": "some"}, "vae.size_fit"),
])
def test_bad_vae_params_exit_2(tmp_path, capsys, change, field):
    root = _project(tmp_path, vae=change)
    assert _run(root, "vae") == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (root / "models").exists() and not (root / "results/parts/vae.parquet").exists()


def test_missing_orientations_are_named(tmp_path, capsys):
    root = _project(tmp_path)
    t = read_table(root / "results/parts/orient.parquet").drop(columns=["gain"])
    write_table(root / "results/parts/orient.parquet", t)
    assert _run(root, "vae") == 2
    assert "orient.parquet: gain: column missing" in capsys.readouterr().err


def test_class_blur_auto_comes_from_the_orient_stage(tmp_path, capsys):
    """``vae.class_blur_deg: auto`` takes the median orient ``blur_deg`` of the selected averages the reference
    fits best (top quarter of gains) -- not of the others -- and records it; without the column it is a
    one-line error naming the file and the column."""
    root = _project(tmp_path, vae={"class_blur_deg": "auto", "epochs": 1})
    t = read_table(root / "results/parts/orient.parquet")
    top = t.gain >= t.gain.quantile(0.75)
    t["blur_out_deg"] = np.where(top, 9.0, 19.0)
    t["blur_in_deg"] = np.where(top, 4.0, 19.0)
    write_table(root / "results/parts/orient.parquet", t)
    assert _run(root, "select") == 0 and _run(root, "vae") == 0
    metrics = json.loads((root / "metrics/vae.json").read_text())
    side = json.loads((root / "models/vae.json").read_text())
    assert metrics["class_blur_deg"] == [9.0, 4.0] and side["class_blur_deg"] == [9.0, 4.0]
    assert side["class_blur"]["source"].startswith("auto") and side["class_blur"]["n_used"] >= 4
    write_table(root / "results/parts/orient.parquet", t.drop(columns=["blur_in_deg"]))
    assert _run(root, "vae") == 2
    assert "orient.parquet: blur_in_deg: column missing" in capsys.readouterr().err
    # a number is the same blur about every axis; a pair is (out of plane, in plane)
    for value, expect in ((6, [6.0, 6.0]), ([8, 3.5], [8.0, 3.5])):
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["vae"]["class_blur_deg"] = value
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        assert _run(root, "vae") == 0
        assert json.loads((root / "metrics/vae.json").read_text())["class_blur_deg"] == expect


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_resume_after_sigkill_gives_the_same_weights(tmp_path):
    ref = _project(tmp_path / "ref", vae={"epochs": 4})
    assert _run(ref, "vae", "--select", "") == 0
    root = _project(tmp_path / "killed", vae={"epochs": 4})
    args = [sys.executable, "-m", "spicompute", "vae", "--params", "params.yaml", "-q", "--select", ""]
    killed = _cli(root, *args, "--kill-after-epoch", "2")
    assert killed.returncode == -9, killed.stderr
    assert (root / "checkpoints/vae/last.pt").exists() and not (root / "models/vae.pt").exists()
    assert not list((root / "checkpoints/vae").glob(".*.tmp"))
    resumed = _cli(root, *args, "-v")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout  # progress log: stdout
    # the per-epoch log is complete (replayed epochs included): DVC declares it as an output
    import pandas as pd

    loss = pd.read_csv(root / "dvclive/vae/plots/metrics/loss.tsv", sep="\t")
    assert loss["step"].tolist() == [0, 1, 2, 3]
    trained = json.loads((root / "metrics/vae.json").read_text())
    finished = _cli(root, *args)  # a finished checkpoint: nothing to train, the log is still written
    assert finished.returncode == 0 and (root / "dvclive/vae/plots/metrics/loss.tsv").exists()
    # `training_seconds` counts the epochs of every run that trained them, also when this run trained none
    again_metrics = json.loads((root / "metrics/vae.json").read_text())
    assert again_metrics["training_seconds"] == trained["training_seconds"] > 0
    a, b = _weights(ref / "models/vae.pt"), _weights(root / "models/vae.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint past the requested end is not used
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["vae"]["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    again = _cli(root, *args, "-v")
    assert again.returncode == 0 and "past the requested" in again.stdout + again.stderr
    assert json.loads((root / "metrics/vae.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_torchrun_ddp_matches_one_process(tmp_path):
    one = _project(tmp_path / "one")
    assert _run(one, "vae", "--select", "") == 0
    two = _project(tmp_path / "two")
    proc = _cli(two, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "spicompute",
                "vae", "--params", "params.yaml", "-q", "--select", "", "--checkpoints", "",
                prefix=(sys.executable,))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((two / "metrics/vae.json").read_text())["processes"] == 2
    a, b = _weights(one / "models/vae.pt"), _weights(two / "models/vae.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    za = read_table(one / "results/parts/vae.parquet").z_1.to_numpy()
    zb = read_table(two / "results/parts/vae.parquet").z_1.to_numpy()
    np.testing.assert_allclose(za, zb, rtol=1e-3, atol=1e-4)


def test_a_collapsed_run_trains_afresh_from_the_next_seed(tmp_path, monkeypatch, caplog):
    """A run whose posterior is wider than the prior for much of the set is retrained from the next
    seed: the kept weights are those of a plain run at that seed, bit for bit; when every attempt
    collapses, the least collapsed one is kept, with a warning."""
    import spicompute.vae.train as train

    assert train.wide_posterior_share(np.log(np.array([[0.04], [4.0], [1.0], [2.2 ** 2]]))) == 0.5
    assert train.wide_posterior_share(np.zeros((0, 1))) == 0.0
    # isotropic_below 0: every fitted orientation (the random ones of round averages come from vae.seed,
    # which a restart keeps)
    plain = _project(tmp_path / "plain", vae={"seed": VAE_PARAMS["seed"] + 1, "isotropic_below": 0})
    assert _run(plain, "select") == 0 and _run(plain, "vae") == 0
    for shares, kept in (([0.5, 0.0], 1), ([0.5, 0.3, 0.4], 1)):
        root = _project(tmp_path / f"restart{len(shares)}", vae={"isotropic_below": 0})
        assert _run(root, "select") == 0
        calls = iter(shares)
        monkeypatch.setattr(train, "wide_posterior_share", lambda logvar: next(calls))
        caplog.clear()
        assert _run(root, "vae") == 0
        metrics = json.loads((root / "metrics/vae.json").read_text())
        side = json.loads((root / "models/vae.json").read_text())
        assert metrics["restarts"] == len(shares) - 1 and metrics["seed_used"] == VAE_PARAMS["seed"] + kept
        assert [a["seed"] for a in side["attempts"]] == [VAE_PARAMS["seed"] + k for k in range(len(shares))]
        assert "collapsed" in caplog.text
        assert side["fingerprint"] == json.loads((plain / "models/vae.json").read_text())["fingerprint"]
        a = torch.load(root / "models/vae.pt", weights_only=True)
        b = torch.load(plain / "models/vae.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in b)
