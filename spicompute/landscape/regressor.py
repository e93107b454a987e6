"""Absolute-embedding regressor: rotation-invariant features -> CLPCA coordinates.

A fully connected network (default hidden layers 512-128-64-32, ReLU) maps
standardised features (:mod:`spicompute.landscape.features`) to standardised
targets; Adam, MSE loss, a seeded train/validation split and early stopping
on the validation loss (the weights of the best epoch are kept).

Persistence: the weights as a torch state dict (``*.pt``, loaded with
``weights_only=True``) and a JSON side file (``*.json``) with the
architecture, feature parameters and both standardisations -- everything
needed to rebuild the model, and no pickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from spicompute.errors import InputError, ParameterError
from spicompute.io.provenance import write_json_atomic
from spicompute.io.storage import load_torch, save_torch
from spicompute.landscape.features import FeatureParams, Standardizer

FORMAT = "spicompute-regressor-1"


class MLP(torch.nn.Module):
    """Fully connected network ``n_in -> hidden... -> n_out`` with ReLU."""

    def __init__(self, n_in: int, hidden: tuple[int, ...] = (512, 128, 64, 32), n_out: int = 3):
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [torch.nn.Linear(width, int(h)), torch.nn.ReLU()]
            width = int(h)
        layers.append(torch.nn.Linear(width, n_out))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class TrainConfig:
    hidden: tuple[int, ...] = (512, 128, 64, 32)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 64
    max_epochs: int = 300
    patience: int = 30
    val_fraction: float = 0.2
    seed: int = 0

    def validate(self) -> "TrainConfig":
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ParameterError("regress.hidden", f"must be a list of positive widths, got {self.hidden}")
        for name in ("learning_rate", "batch_size", "max_epochs", "patience"):
            if not getattr(self, name) > 0:
                raise ParameterError(f"regress.{name}", f"must be > 0, got {getattr(self, name)!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ParameterError("regress.val_fraction", f"must lie in (0, 1), got {self.val_fraction}")
        if self.weight_decay < 0:
            raise ParameterError("regress.weight_decay", "must be >= 0")
        return self


@dataclass
class Regressor:
    """A trained model plus what it needs to place new averages."""

    model: MLP
    hidden: tuple[int, ...]
    features: FeatureParams
    x_scale: Standardizer
    y_scale: Standardizer
    target_names: list[str]
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # the JSON side file's other entries (e.g. dq_nm)

    def predict_features(self, raw_features: np.ndarray, batch: int = 4096) -> np.ndarray:
        """(M, F) unstandardised features -> (M, n_out) coordinates."""
        x = self.x_scale.transform(raw_features)
        if x.shape[1] != self.x_scale.mean.shape[0]:
            raise ValueError(f"model expects {self.x_scale.mean.shape[0]} features, got {x.shape[1]}")
        self.model.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(x), batch):
                out.append(self.model(torch.from_numpy(x[s:s + batch])).numpy())
        z = np.concatenate(out) if out else np.zeros((0, len(self.target_names)), np.float32)
        return self.y_scale.inverse(z)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split into (train, val) index arrays (both sorted)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise ParameterError("regress.val_fraction", f"leaves no training sample out of {n}")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def split_by_runs(runs: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices holding out whole bootstrap runs.

    Bootstrap runs draw ~80 % subsets of the same frames, so averages of
    different runs are near-copies of each other: a random split puts twins on
    both sides and flatters the validation score.  One seeded run is the test
    set, another the validation set (early stopping), the rest train.  Needs
    at least 3 runs.
    """
    runs = np.asarray(runs)
    unique = np.unique(runs)
    if unique.size < 3:
        raise ValueError(f"need >= 3 bootstrap runs to hold out whole runs, got {unique.size}")
    test_run, val_run = np.random.default_rng(seed).permutation(unique)[:2]
    idx = np.arange(len(runs))
    return idx[(runs != test_run) & (runs != val_run)], idx[runs == val_run], idx[runs == test_run]


def train_regressor(features: np.ndarray, targets: np.ndarray, config: TrainConfig,
                    feature_params: FeatureParams, target_names: list[str],
                    on_epoch: Callable[[dict], None] | None = None,
                    split: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Regressor, np.ndarray, np.ndarray]:
    """Train the MLP with early stopping on the validation loss.

    features : (M, F) unstandardised; targets : (M, T).
    Returns (regressor with the best-epoch weights, train_index, val_index).
    ``on_epoch`` gets ``{"epoch", "train_loss", "val_loss"}`` (standardised MSE).
    Deterministic for a seed on a given machine and thread count.
    """
    config.validate()
    x_all = np.asarray(features, dtype=np.float32)
    y_all = np.asarray(targets, dtype=np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or len(x_all) != len(y_all):
        raise ValueError("features (M, F) and targets (M, T) must have the same M")
    if not (np.all(np.isfinite(x_all)) and np.all(np.isfinite(y_all))):
        raise ValueError("features or targets contain NaN/Inf")
    train_idx, val_idx = split if split is not None else split_indices(
        len(x_all), config.val_fraction, config.seed)
    x_scale = Standardizer.fit(x_all[train_idx])
    y_scale = Standardizer.fit(y_all[train_idx])
    xt = torch.from_numpy(x_scale.transform(x_all))
    yt = torch.from_numpy(y_scale.transform(y_all))
    torch.manual_seed(config.seed)
    model = MLP(x_all.shape[1], tuple(config.hidden), y_all.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    tr = torch.from_numpy(train_idx)
    va = torch.from_numpy(val_idx)
    best = (np.inf, 0, {k: v.clone() for k, v in model.state_dict().items()})
    history: list[dict] = []
    for epoch in range(int(config.max_epochs)):
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        total = 0.0
        for s in range(0, len(order), int(config.batch_size)):
            b = order[s:s + int(config.batch_size)]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xt[b]), yt[b])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        model.eval()
        with torch.no_grad():
            val_loss = float(torch.nn.functional.mse_loss(model(xt[va]), yt[va]))
        row = {"epoch": epoch, "train_loss": total / len(order), "val_loss": val_loss}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if val_loss < best[0]:
            best = (val_loss, epoch, {k: v.clone() for k, v in model.state_dict().items()})
        elif epoch - best[1] >= int(config.patience):
            break
    model.load_state_dict(best[2])
    model.eval()
    reg = Regressor(model, tuple(int(h) for h in config.hidden), feature_params, x_scale, y_scale,
                    list(target_names), history)
    return reg, train_idx, val_idx


def regression_metrics(pred: np.ndarray, truth: np.ndarray, names: list[str]) -> dict:
    """Per-component MSE (in target units) and R^2, ``{"mse": {...}, "r2": {...}}``."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    mse = ((pred - truth) ** 2).mean(axis=0)
    var = truth.var(axis=0)
    r2 = 1.0 - mse / np.where(var > 0, var, np.nan)
    return {"mse": {n: float(v) for n, v in zip(names, mse)},
            "r2": {n: float(v) for n, v in zip(names, r2)}}


def _json_path(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def save_regressor(reg: Regressor, weights_path: str | Path, extra: dict | None = None) -> None:
    """Write ``<name>.pt`` (state dict) and ``<name>.json`` (everything else), atomically."""
    weights_path = Path(weights_path)
    save_torch(weights_path, reg.model.state_dict())
    meta = {
        "format": FORMAT,
        "n_features": int(reg.x_scale.mean.shape[0]),
        "hidden": list(reg.hidden),
        "targets": reg.target_names,
        "features": reg.features.to_dict(),
        "x_scale": reg.x_scale.to_dict(),
        "y_scale": reg.y_scale.to_dict(),
        "weights": weights_path.name,
    }
    meta.update(extra or {})
    write_json_atomic(_json_path(weights_path), meta)


def load_regressor(weights_path: str | Path) -> Regressor:
    """Rebuild a :class:`Regressor` from ``<name>.pt`` + ``<name>.json`` (weights_only)."""
    weights_path = Path(weights_path)
    meta_path = _json_path(weights_path)
    for p in (weights_path, meta_path):
        if not p.exists():
            raise InputError(p, None, "regressor file not found")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(meta_path, None, f"not valid JSON ({exc.msg})") from exc
    if meta.get("format") != FORMAT:
        raise InputError(meta_path, "format", f"expected {FORMAT!r}, got {meta.get('format')!r}")
    for key in ("n_features", "hidden", "targets", "features", "x_scale", "y_scale"):
        if key not in meta:
            raise InputError(meta_path, key, "missing")
    model = MLP(int(meta["n_features"]), tuple(meta["hidden"]), len(meta["targets"]))
    try:
        state = load_torch(weights_path, "regressor weights file")
        model.load_state_dict(state)
    except InputError:
        raise
    except Exception as exc:  # corrupt file, wrong architecture
        raise InputError(weights_path, None, f"cannot load weights ({exc.__class__.__name__}: {exc})") from exc
    model.eval()
    return Regressor(model, tuple(meta["hidden"]), FeatureParams.from_dict(meta["features"]),
                     Standardizer.from_dict(meta["x_scale"]), Standardizer.from_dict(meta["y_scale"]),
                     list(meta["targets"]), list(meta.get("history", [])), meta)
