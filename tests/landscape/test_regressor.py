"""Regressor: learns a smooth map from patterns to coordinates; determinism; persistence; place."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from spicompute.errors import InputError
from spicompute.landscape.features import FeatureParams, rotation_invariant_features
from spicompute.io.averages import AverageSet, write_averages
from spicompute.landscape.regressor import (
    TrainConfig,
    load_regressor,
    regression_metrics,
    save_regressor,
    train_regressor,
)

pytestmark = pytest.mark.slow  # whole-stage or whole-pipeline runs: `make test-fast` skips them

SIZE = 41
FP = FeatureParams(r_min=2, r_max=18, n_theta=180, order_a=10, order_b=0.25)
CFG = TrainConfig(hidden=(128, 64, 32), learning_rate=2e-3, batch_size=32, max_epochs=60,
                  patience=10, seed=0)


def ellipse_patterns(n: int, seed: int = 0):
    """Speckle-free 2D 'diffraction' of random ellipses, random in-plane rotation.

    Targets: (size, aspect ratio, fringe contrast) -- smooth functions of the
    pattern that a rotation-invariant regressor must recover.
    """
    rng = np.random.default_rng(seed)
    c = SIZE // 2
    y, x = np.mgrid[0:SIZE, 0:SIZE] - c
    size = rng.uniform(3.0, 6.0, n)
    aspect = rng.uniform(1.0, 2.0, n)
    contrast = rng.uniform(0.0, 1.0, n)
    ang = rng.uniform(0, np.pi, n)
    xr = np.cos(ang)[:, None, None] * x + np.sin(ang)[:, None, None] * y
    yr = -np.sin(ang)[:, None, None] * x + np.cos(ang)[:, None, None] * y
    rho = np.sqrt((xr / size[:, None, None]) ** 2 + (yr * aspect[:, None, None] / size[:, None, None]) ** 2)
    img = np.exp(-rho**2 / 2) * (1 + contrast[:, None, None] * np.cos(1.5 * rho) ** 2) + 1e-3
    scale = rng.uniform(100, 1000, n)[:, None, None]
    img = rng.poisson(img * scale * 50).astype(np.float32)
    return img, np.stack([size, aspect, contrast], axis=1)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(2)
    img, y = ellipse_patterns(400)
    x = rotation_invariant_features(img, None, FP)
    reg, tr, va = train_regressor(x, y, CFG, FP, ["pc_1", "pc_2", "pc_3"])
    return img, x, y, reg, tr, va


def test_validation_r2_per_component(trained):
    img, x, y, reg, tr, va = trained
    assert len(va) == 80 and len(tr) == 320 and not set(tr) & set(va)
    metrics = regression_metrics(reg.predict_features(x[va]), y[va], ["a", "b", "c"])
    assert all(v >= 0.8 for v in metrics["r2"].values()), metrics
    # early stopping kept the best epoch
    hist = [h["val_loss"] for h in reg.history]
    assert len(hist) <= CFG.max_epochs
    assert hist[int(np.argmin(hist))] == min(hist)


def test_training_is_deterministic_for_a_seed(trained):
    img, x, y, reg, tr, va = trained
    sub = slice(0, 120)
    cfg = TrainConfig(hidden=(32,), max_epochs=5, patience=5, seed=3)
    r1, *_ = train_regressor(x[sub], y[sub], cfg, FP, ["a", "b", "c"])
    r2, *_ = train_regressor(x[sub], y[sub], cfg, FP, ["a", "b", "c"])
    assert np.array_equal(r1.predict_features(x[:10]), r2.predict_features(x[:10]))
    r3, *_ = train_regressor(x[sub], y[sub], TrainConfig(hidden=(32,), max_epochs=5, patience=5, seed=4),
                             FP, ["a", "b", "c"])
    assert not np.array_equal(r1.predict_features(x[:10]), r3.predict_features(x[:10]))


def test_save_load_roundtrip_weights_only(trained, tmp_path):
    img, x, y, reg, tr, va = trained
    path = tmp_path / "models" / "regressor.pt"
    save_regressor(reg, path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["hidden"] == [128, 64, 32] and meta["features"]["r_max"] == 18
    # the weights file is a plain state dict: loadable with weights_only=True
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    back = load_regressor(path)
    assert np.allclose(back.predict_features(x[:20]), reg.predict_features(x[:20]), atol=1e-6)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(InputError, match="regressor.json"):
        load_regressor(path)


def test_regress_and_place_cli(trained, tmp_path):
    from spicompute.cli import main

    img, x, y, reg, tr, va = trained
    n = 150
    avg = AverageSet(img[:n], np.ones_like(img[:n]), np.arange(n) + 1000, np.zeros(n), np.arange(n),
                     np.full(n, 10.0), 0.05, 0.2)
    write_averages(tmp_path / "averages.h5", avg)
    pd.DataFrame({"average_id": avg.average_id, "pc_1": y[:n, 0], "pc_2": y[:n, 1],
                  "pc_3": y[:n, 2]}).to_parquet(tmp_path / "embed.parquet")
    (tmp_path / "params.yaml").write_text(
        "regress:\n  q_min_nm: 0.1\n  q_max_nm: 0.9\n  hidden: [64, 32]\n  max_epochs: 20\n  patience: 5\n"
        "  batch_size: 32\n  seed: 1\n")
    t = str(tmp_path)
    rc = main(["regress", "--params", f"{t}/params.yaml", "--averages", f"{t}/averages.h5",
               "--embedding", f"{t}/embed.parquet", "--model", f"{t}/models/regressor.pt",
               "--out", f"{t}/regress.parquet", "--metrics", f"{t}/metrics.json",
               "--live", f"{t}/dvclive/regress", "-q"])
    assert rc == 0
    table = pd.read_parquet(tmp_path / "regress.parquet")
    assert list(table.columns) == ["average_id", "nn_1", "nn_2", "nn_3", "split"]
    assert (table["split"] == "val").sum() == 30
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["validation"]["mse"]) == {"pc_1", "pc_2", "pc_3"}
    assert (tmp_path / "dvclive" / "regress").exists()
    rc = main(["place", "--model", f"{t}/models/regressor.pt", "--averages", f"{t}/averages.h5",
               "--out", f"{t}/placed/p.parquet", "-q"])
    assert rc == 0
    placed = pd.read_parquet(tmp_path / "placed" / "p.parquet")
    assert list(placed.columns[:3]) == ["average_id", "run", "model"]
    assert np.allclose(placed[["nn_1", "nn_2", "nn_3"]].to_numpy(),
                       table[["nn_1", "nn_2", "nn_3"]].to_numpy(), atol=1e-5)
    # ...and for the training averages those are their CLPCA coordinates (R^2 >= 0.8 each)
    train = (table["split"] == "train").to_numpy()
    fit = regression_metrics(placed[["nn_1", "nn_2", "nn_3"]].to_numpy()[train], y[:n][train], ["1", "2", "3"])
    assert min(fit["r2"].values()) >= 0.8, fit
    # averages on another q grid are refused with a message naming the field
    other = AverageSet(img[:5], np.ones_like(img[:5]), np.arange(5), np.zeros(5), np.arange(5),
                       np.ones(5), 0.07, 0.2)
    write_averages(tmp_path / "other.h5", other)
    rc = main(["place", "--model", f"{t}/models/regressor.pt", "--averages", f"{t}/other.h5",
               "--out", f"{t}/placed/o.parquet", "-q"])
    assert rc == 2 and not (tmp_path / "placed" / "o.parquet").exists()
    # a missing embedding row is a clear one-line error, and nothing is written
    pd.DataFrame({"average_id": avg.average_id[:-1], "pc_1": 0.0, "pc_2": 0.0,
                  "pc_3": 0.0}).to_parquet(tmp_path / "bad.parquet")
    rc = main(["regress", "--params", f"{t}/params.yaml", "--averages", f"{t}/averages.h5",
               "--embedding", f"{t}/bad.parquet", "--model", f"{t}/m2/regressor.pt",
               "--out", f"{t}/r2.parquet", "--metrics", f"{t}/m2.json", "--live", f"{t}/live2", "-q"])
    assert rc == 2 and not (tmp_path / "r2.parquet").exists() and not (tmp_path / "m2").exists()
