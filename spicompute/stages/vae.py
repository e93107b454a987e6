"""vae: train the VAE on the selected averages; encode every average.

Inputs: the averages (classify2d), their orientation quaternions and gains
(orient), the selection (select).  Preprocessing, network and training are in
:mod:`spicompute.vae`; the q-range is resolved from the data (``auto``) and
recorded in ``models/vae.json`` and ``metrics/vae.json``.

Runs on CUDA when present (``vae.device: auto``), else on CPU (deterministic
for a seed).  Several GPUs or CPU processes: launch with torchrun, e.g.
``torchrun --nproc_per_node 4 -m spicompute vae ...`` (each process takes an
equal share of every batch; rank 0 writes the outputs).  A checkpoint is
written after every epoch; re-running resumes from it when every parameter
and input that shapes training is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spicompute.errors import InputError, ParameterError
from spicompute.stages._common import add_inputs, add_outputs, get_logger, stage_params

COMMAND = "vae"
HELP = "train the VAE (2D averages + orientations -> latent -> Oh-symmetric 3D volumes)"

DEFAULTS = {"preset": "demo", "latent_dim": 1, "q_max_nm": "auto", "particle_size_nm": "auto",
            "min_counts": 1.0, "loss": "mse_log", "log_floor": 0.01, "epochs": 60, "batch_size": 32,
            "learning_rate": 0.001, "kl_weight": 0.01, "kl_warmup_epochs": 10, "seed": 0,
            "device": "auto", "amp": False, "threads": 0, "class_blur_deg": "auto",
            "size_spread": 0.0, "size_fit": 0.08, "resample": "gauss", "prefilter_px": 0.5,
            "target_oversample": "auto",
            "loss_target": "grid", "volume_upsample": "auto", "filter_slices": True, "isotropic_below": 0.05,
            "isotropic_min_fluence": 0.9}

log = get_logger("vae")


def add_arguments(parser):
    add_inputs(parser, "averages", "orient", "select")
    parser.add_argument("--model", default="models/vae.pt", help="weights to write (a .json side file beside it)")
    add_outputs(parser, COMMAND, "results/parts/vae.parquet", "latents of every average", live=True)
    parser.add_argument("--checkpoints", default="checkpoints/vae", help="checkpoint folder ('' to skip)")
    # tests only: SIGKILL the process after this epoch's checkpoint (fault injection)
    parser.add_argument("--kill-after-epoch", type=int, default=None, help=argparse.SUPPRESS)


def options(raw: dict) -> dict:
    from spicompute.params import choice, in_range, positive, with_defaults
    from spicompute.vae.model import PRESETS
    from spicompute.vae.data import RESAMPLING, check_oversampling
    from spicompute.vae.train import LOSSES, SIZE_STEP

    p = with_defaults("vae", raw, DEFAULTS)
    p["preset"] = choice("vae.preset", p["preset"], tuple(PRESETS))
    p["latent_dim"] = int(choice("vae.latent_dim", p["latent_dim"], (1, 2, 3)))
    for key in ("q_max_nm", "particle_size_nm"):
        if p[key] != "auto":
            p[key] = positive(f"vae.{key}", p[key])
    p["min_counts"] = positive("vae.min_counts", p["min_counts"])
    p["loss"] = choice("vae.loss", p["loss"], LOSSES)
    p["log_floor"] = positive("vae.log_floor", p["log_floor"])
    p["epochs"] = positive("vae.epochs", p["epochs"], integer=True)
    p["batch_size"] = positive("vae.batch_size", p["batch_size"], integer=True)
    p["learning_rate"] = positive("vae.learning_rate", p["learning_rate"])
    p["kl_weight"] = positive("vae.kl_weight", p["kl_weight"], allow_zero=True)
    p["kl_warmup_epochs"] = positive("vae.kl_warmup_epochs", p["kl_warmup_epochs"], integer=True, allow_zero=True)
    p["seed"] = positive("vae.seed", p["seed"], integer=True, allow_zero=True)
    p["device"] = choice("vae.device", p["device"], ("auto", "cpu", "cuda"))
    p["threads"] = positive("vae.threads", p["threads"], integer=True, allow_zero=True)
    if p["class_blur_deg"] != "auto":   # auto: measured by the orient stage (spicompute.orient.class_blur)
        blur = p["class_blur_deg"]
        pair = list(blur) if isinstance(blur, (list, tuple)) else [blur, blur]
        if len(pair) != 2:
            raise ParameterError("vae.class_blur_deg",
                                 f"must be auto, a number or [out_of_plane, in_plane], got {blur!r}")
        p["class_blur_deg"] = [in_range("vae.class_blur_deg", v, 0.0, 30.0) for v in pair]
    p["size_spread"] = in_range("vae.size_spread", p["size_spread"], 0.0, 0.2)
    p["size_fit"] = in_range("vae.size_fit", p["size_fit"], 0.0, 0.3)
    if 0 < p["size_fit"] < 2 * SIZE_STEP:   # the search needs a grid point either side of 1
        raise ParameterError("vae.size_fit", f"must be 0 (off) or >= {2 * SIZE_STEP:g} (the search steps "
                                             f"{SIZE_STEP:g}), got {p['size_fit']}")
    p["resample"] = choice("vae.resample", p["resample"], RESAMPLING)
    p["prefilter_px"] = in_range("vae.prefilter_px", p["prefilter_px"], 0.0, 2.0)
    # auto: resolved from the grid step and the particle size (spicompute.vae.data.resolve_oversampling)
    for key in ("target_oversample", "volume_upsample"):
        p[key] = check_oversampling(f"vae.{key}", p[key])
    p["loss_target"] = choice("vae.loss_target", p["loss_target"], ("grid", "detector"))
    if p["loss_target"] == "detector" and p["target_oversample"] not in ("auto", 1):
        raise ParameterError("vae.target_oversample", "must be auto or 1 with loss_target: detector (the target "
                                                     f"is the detector's own pixels), got {p['target_oversample']}")
    if not isinstance(p["filter_slices"], bool):
        raise ParameterError("vae.filter_slices", f"must be true or false, got {p['filter_slices']!r}")
    p["isotropic_below"] = in_range("vae.isotropic_below", p["isotropic_below"], 0.0, 1.0)
    p["isotropic_min_fluence"] = in_range("vae.isotropic_min_fluence", p["isotropic_min_fluence"], 0.0, 10.0)
    if not isinstance(p["amp"], bool):
        raise ParameterError("vae.amp", f"must be true or false, got {p['amp']!r}")
    return p


def _device(name: str):
    import torch

    from spicompute.execution import resolve_device

    return torch.device(resolve_device(name, "vae.device"))


def _orientations(path: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from spicompute.io.tables import rows_for

    t = rows_for(path, ids, ("qw", "qx", "qy", "qz", "gain"))
    q = t[["qw", "qx", "qy", "qz"]].to_numpy(np.float64)
    if not np.all(np.isfinite(q)) or np.any(np.abs(np.linalg.norm(q, axis=1) - 1) > 1e-3):
        raise InputError(path, "qw,qx,qy,qz", "orientations must be finite unit quaternions")
    return q, t["gain"].to_numpy(np.float64)


def resolve_class_blur(value, orient_path: str, ids: np.ndarray, gain: np.ndarray,
                       selected: np.ndarray) -> tuple[tuple[float, float], dict]:
    """``vae.class_blur_deg`` as (out of plane, in plane) degrees: the numbers given, or (``auto``) the data
    set's class blur measured by the orient stage (:func:`spicompute.orient.class_blur.dataset_blur`),
    to 0.1 degree."""
    if value != "auto":
        return (float(value[0]), float(value[1])), {"source": "parameter"}
    from spicompute.io.tables import rows_for
    from spicompute.orient.class_blur import dataset_blur

    cols = ("blur_out_deg", "blur_in_deg")
    blur = rows_for(orient_path, ids, cols)[list(cols)].to_numpy(np.float64)
    (b_out, b_in), info = dataset_blur(blur, gain, selected)
    return (round(b_out, 1), round(b_in, 1)), {
        "source": "auto: medians of the orient stage's blur_out_deg, blur_in_deg over the selected averages "
                  "with the top quarter of gains", **info}


def _selected(path: str, ids: np.ndarray) -> np.ndarray:
    from spicompute.io.tables import read_table

    if not path or not Path(path).exists():
        return np.ones(len(ids), bool)
    t = read_table(path)
    for col in ("average_id", "selected"):
        if col not in t.columns:
            raise InputError(path, col, "column missing")
    sel = t.set_index("average_id")["selected"].reindex(ids)
    if sel.isna().any():
        raise InputError(path, "average_id", "some averages have no selection row")
    return sel.to_numpy(bool)


def _diverged(p: dict, history: list[dict], n_bad: int, n: int) -> ParameterError:
    """The error for non-finite latents, blaming the loss (NaN from the start) or the step size."""
    first = next((row["epoch"] for row in history if not np.isfinite(row["loss"])), None)
    what = f"NaN or Inf latents for {n_bad} of {n} averages"
    if first == 1:
        return ParameterError("vae.loss", f"the {p['loss']} loss is NaN or Inf from the first epoch ({what}); "
                                          "choose another vae.loss or check the inputs")
    where = f"at epoch {first}" if first is not None else "after the last epoch"
    return ParameterError("vae.learning_rate", f"training diverged {where} ({what}); lower it")


def _drop_unusable_checkpoint(path: Path, model) -> None:
    """Delete ``path`` with a warning unless it is a checkpoint this model can resume from.

    Such a file (torn, foreign, a pickle of other objects, other tensor
    shapes, a broken history) could only crash the resume; training starts
    afresh and writes a new one after its first epoch.
    """
    import torch

    from spicompute.errors import SpiError
    from spicompute.io.storage import load_torch

    if not path.is_file():
        return
    try:
        state = load_torch(path, "checkpoint")
        problem = ""
        if not isinstance(state, dict) or not {"model", "optim", "epoch", "fingerprint", "history"} <= set(state):
            problem = "not a dict with model, optim, epoch, fingerprint and history"
        elif not isinstance(state["model"], dict) or {k: tuple(v.shape) for k, v in state["model"].items()
                                                      if isinstance(v, torch.Tensor)} != \
                {k: tuple(v.shape) for k, v in model.state_dict().items()} or \
                not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
            problem = "its weights do not fit this network (other preset or latent dimension)"
        elif not isinstance(state["epoch"], int) or isinstance(state["epoch"], bool) or state["epoch"] < 0:
            problem = f"epoch must be a non-negative integer, got {state['epoch']!r}"
        else:
            history = json.loads(state["history"]) if isinstance(state["history"], str) else None
            if not isinstance(history, list) or len(history) != state["epoch"] or not all(
                    isinstance(r, dict) and {"epoch", "loss", "recon", "kl", "kl_beta"} <= set(r) for r in history):
                problem = "its history does not list every epoch"
    except SpiError as exc:
        problem = " ".join(str(exc).split())
    except (ValueError, TypeError, AttributeError):
        problem = "its history is not valid JSON"
    if problem:
        log.warning("ignoring checkpoint %s (%s): training starts afresh", path, problem)
        path.unlink()


def run(args) -> int:
    import torch

    from spicompute.io.averages import read_averages
    from spicompute.io.provenance import atomic_path, write_json_atomic
    from spicompute.io.storage import save_torch
    from spicompute.io.tables import write_table
    from spicompute.vae.data import model_inputs, plan_preprocessing, sampling_ratio
    from spicompute.vae.model import VAE, architecture
    from spicompute.vae.orientations import member_fluence, training_orientations, with_orientations
    from spicompute.vae.train import (TensorData, TrainConfig, encode, fit_size_factors, init_distributed,
                                      train_until_uncollapsed)

    p = options(stage_params(args, "vae"))
    if p["threads"] > 0:
        torch.set_num_threads(p["threads"])
    device = _device(p["device"])
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    dist = init_distributed(device)
    start = time.perf_counter()

    avg = read_averages(args.averages)
    quats, gain = _orientations(args.orient, avg.average_id)
    selected = _selected(args.select, avg.average_id)
    train_index = np.flatnonzero(selected)
    if train_index.size < 2:
        raise InputError(args.select, "selected", f"only {train_index.size} averages selected; need >= 2")
    arch = architecture(p["preset"], p["latent_dim"])
    prep = plan_preprocessing(avg, train_index, input_size=arch.input_size, volume_size=arch.volume_size,
                              q_max_nm=p["q_max_nm"], particle_size_nm=p["particle_size_nm"],
                              min_counts=p["min_counts"], log_floor=p["log_floor"], source=args.averages,
                              resample=p["resample"], prefilter_px=p["prefilter_px"],
                              target_oversample=p["target_oversample"], loss_target=p["loss_target"],
                              volume_upsample=p["volume_upsample"], filter_slices=p["filter_slices"])
    inputs = model_inputs(avg, prep, quats, gain, train_index)
    # an average that shows no particle anisotropy holds no orientation: sliced at a random one
    used_quats, fitted = training_orientations(quats, inputs.anisotropy, p["isotropic_below"], avg.average_id,
                                               p["seed"], member_fluence(avg.weight, avg.n_frames),
                                               p["isotropic_min_fluence"], train_index)
    inputs = with_orientations(inputs, used_quats)
    if p["isotropic_below"] > 0:
        log.info("%d of %d trained averages are round (anisotropy < %g): sliced at random orientations, not "
                 "the fitted ones", int((~fitted[train_index]).sum()), train_index.size, p["isotropic_below"])
    blur_deg, blur_info = resolve_class_blur(p["class_blur_deg"], args.orient, avg.average_id, gain, selected)
    if p["class_blur_deg"] == "auto":
        log.info("class blur %.1f deg out of plane, %.1f in plane (auto, from %d averages)", *blur_deg,
                 blur_info["n_used"])
    log.info("grid steps %.4f rad/nm (2D) / %.4f (volume): %.1f x finer than the particle's Nyquist step; "
             "loss target x%d (%s), volume interpolated x%d", prep.dq2_nm, prep.dq3_nm,
             sampling_ratio(prep.dq3_nm, prep.particle_size_nm), prep.target_oversample, prep.loss_target,
             prep.volume_upsample)
    log.info("%d of %d averages train a %s VAE (volume %d^3, q %.3f..%.3f rad/nm, latent %d) on %s x%d",
             train_index.size, avg.n_averages, p["preset"], arch.volume_size, prep.q_min_nm, prep.q_max_nm,
             arch.latent_dim, device, dist.world)
    config = TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], learning_rate=p["learning_rate"],
                         kl_weight=p["kl_weight"], kl_warmup_epochs=p["kl_warmup_epochs"], loss=p["loss"],
                         seed=p["seed"], amp=p["amp"], class_blur_deg=blur_deg,
                         size_spread=p["size_spread"], size_fit=p["size_fit"])
    ckpt = Path(args.checkpoints) / "last.pt" if args.checkpoints else None
    if ckpt is not None and dist.main:   # a network of this shape, to check the checkpoint against
        _drop_unusable_checkpoint(ckpt, VAE(arch).to(device))
    data = TensorData(inputs, prep, device)

    live = None
    if args.live and dist.main:
        from dvclive import Live

        from spicompute.io.storage import staged_folder

        # curves go to a temporary folder that replaces the previous run's only when the stage succeeds
        live = Live(str(args._resources.enter_context(staged_folder(args.live))), save_dvc_exp=False,
                    dvcyaml=None, resume=False)

    def on_epoch(attempt, row):
        if live is not None:   # the attempts' curves one after another
            live.step = attempt * config.epochs + row["epoch"] - 1
            for key in ("loss", "recon", "kl", "kl_beta", "seconds"):
                live.log_metric(key, row[key])
            live.make_summary()

    # a collapsed run (posterior wider than the prior over much of the family) is trained afresh
    trained = train_until_uncollapsed(arch, prep, inputs, data, train_index, config, device, checkpoint=ckpt,
                                      dist=dist, on_epoch=on_epoch, kill_after_epoch=args.kill_after_epoch)
    model, history, fp, config = trained.model, trained.history, trained.fp, trained.config
    if live is not None:
        live.end()
    if not dist.main:
        return 0
    if config.size_fit:   # every average's size with the final model, relative to the trained ones near it in z
        sizes = fit_size_factors(model, data, np.arange(len(data)), config.size_fit, config.loss,
                                 config.size_spread, reference=train_index)
        data.size_factor[:] = sizes.to(data.size_factor)
    mu, logvar, recon = encode(model, data, config.loss)
    bad = ~(np.isfinite(mu).all(axis=1) & np.isfinite(logvar).all(axis=1))
    if bad.any():  # never NaN latents with exit 0
        raise _diverged(p, history, int(bad.sum()), bad.size)
    table = pd.DataFrame({"average_id": avg.average_id})
    for i in range(arch.latent_dim):
        table[f"z_{i + 1}"] = mu[:, i]
    for i in range(arch.latent_dim):
        table[f"z_logvar_{i + 1}"] = logvar[:, i]
    table["recon_loss"] = recon
    if config.size_fit:
        table["size_rel"] = data.size_factor.cpu().numpy().astype(np.float64)
    table["vae_trained"] = selected
    table["anisotropy"] = inputs.anisotropy
    table["orientation_fitted"] = fitted   # false: sliced at a random orientation (vae.isotropic_below)
    for k, name in enumerate(("vae_qw", "vae_qx", "vae_qy", "vae_qz")):   # the orientation the VAE sliced at
        table[name] = used_quats[:, k]
    side = {"architecture": arch.to_dict(), "preprocessing": prep.to_dict(), "train": p,
            "fingerprint": fp, "n_train": int(train_index.size), "target_norm": inputs.norm,
            "class_blur_deg": list(blur_deg), "class_blur": blur_info, "attempts": trained.attempts,
            # per-epoch seconds go to the dvclive curves, not into the science output
            "history": [{k: v for k, v in row.items() if k != "seconds"} for row in history],
            "quaternion_convention": "scalar first (w,x,y,z), model->lab: a pattern samples I(R^T q)",
            "volume_units": "shape (I / p, mean 1 over the observed shell) x the mean radial profile p (mean photons/pixel/frame)"}
    model_path = Path(args.model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch(model_path, state)
    with atomic_path(model_path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(side, indent=1, default=float) + "\n")
    write_table(args.out, table, stage=COMMAND, params=p)
    elapsed = time.perf_counter() - start
    size_range = ([round(float(v), 4) for v in np.percentile(table.loc[selected, "size_rel"], [5, 95])]
                  if config.size_fit else None)
    metrics = {"n_train": int(train_index.size), "n_averages": int(avg.n_averages), "epochs": len(history),
               "final_loss": history[-1]["loss"] if history else None,
               "final_recon": history[-1]["recon"] if history else None,
               "recon_selected_median": float(np.median(recon[selected])),
               "recon_unselected_median": float(np.median(recon[~selected])) if (~selected).any() else None,
               "q_max_nm": prep.q_max_nm, "q_min_nm": prep.q_min_nm, "q_max_limits": prep.q_max_limits,
               "particle_size_nm": prep.particle_size_nm, "volume_size": arch.volume_size,
               "dq3_nm": prep.dq3_nm, "class_blur_deg": list(blur_deg), "size_spread": p["size_spread"],
               "size_fit": p["size_fit"], "size_rel_p05_p95": size_range,
               "n_trained_random_orientation": int((~fitted[train_index]).sum()),
               "seed_used": config.seed, "restarts": len(trained.attempts) - 1,
               "wide_posterior_share": round(trained.wide_share, 4),
               "anisotropy_trained_p05_p50_p95": [round(float(v), 4) for v in
                                                  np.nanpercentile(inputs.anisotropy[train_index], [5, 50, 95])],
               "device": str(device), "processes": dist.world,
               # this run's wall time, and the epochs' own time over every run that trained them (a
               # resumed run's `seconds` covers only what it did after the checkpoint)
               "seconds": round(elapsed, 1),
               "training_seconds": round(sum(float(row.get("seconds", 0.0)) for row in history), 1)}
    write_json_atomic(args.metrics, metrics)
    log.info("trained %d epochs in %.1f s, final recon %.4f -> %s", len(history), elapsed,
             metrics["final_recon"] or float("nan"), model_path)
    return 0
