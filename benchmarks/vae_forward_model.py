"""Can the VAE's volume grid hold the particle?  The slicer's forward model against closed forms.

The VAE fits each class average with a slice of a volume on its ``L^3`` grid
(trilinear interpolation, :func:`spicompute.vae.slicer.slice_volumes`), after the
averages were resampled onto the model's 2D grid (a Gaussian pre-filter of half a
model pixel, then bilinear: :func:`spicompute.vae.data.resample_averages`).  This
study asks whether the *exact* intensity survives that round trip, on a path
independent of the slicer:

1. noiseless (or Poisson) "averages" of a closed-form 42 nm cube and of a sphere of
   the melt family's end volume (+10 %) are made by evaluating the closed forms at the
   Ewald q of every pixel of the real averages' grid (``data/averages.h5``: size, dq,
   wavelength), at random orientations;
2. they go through the pipeline's own preprocessing (``model_inputs`` with the
   trained model's ``Preprocessing``, ``models/vae.pt``) and loss
   (``reconstruction_loss``, fitted scale per average);
3. reported per combination of data resampling and volume rendering: the loss of the
   exact volume sampled on the grid, the loss of a free volume fitted to the averages
   (Adam from a flat start, Oh-symmetrised like the decoder's output), and how that fitted volume reads against the simulator's
   truth (``data/truth.h5``, :func:`spicompute.validation.melt_match`: t_hat and its CC)
   next to the exact grid volume's own reading.

Data resampling: ``gauss`` (the pipeline's default), ``bin`` (``vae.resample: bin``: each
source pixel to its nearest model pixel, mean over the area), ``point`` (bilinear, no
pre-filter: ``vae.prefilter_px: 0``), ``detector`` (``vae.loss_target: detector``: the
averages' own pixels in the q range, no resampling).
Rendering: ``trilinear`` (the volume grid as it is), ``fourier2x`` / ``fourier3x`` (the volume
interpolated 2x / 3x finer by zero-padding its Fourier transform first: ``vae.volume_upsample``),
``..._ss3`` (each model pixel the mean of 3x3 samples over its area).  The 2026-12-04 JSON has a
``cubic2x_ss3`` rendering (Keys cubic midpoints), since replaced by the Fourier interpolation.

    PYTHONPATH=. .venv/bin/python benchmarks/vae_forward_model.py                  # after make demo
    PYTHONPATH=. .venv/bin/python benchmarks/vae_forward_model.py --photons 0 1500 --save

JSON (``--save``): ``benchmarks/measured/vae_forward_model_<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def closed_form(shape: str, q: np.ndarray, cube_edge_nm: float, sphere_volume_nm3: float) -> np.ndarray:
    """Unit-density |F|^2 / V^2 of a cube (edge ``cube_edge_nm``, axes = model axes) or a sphere at q (..., 3)."""
    if shape == "cube":
        return np.prod(np.sinc(q * cube_edge_nm / (2 * np.pi)) ** 2, axis=-1)
    radius = (3 * sphere_volume_nm3 / (4 * np.pi)) ** (1 / 3)
    x = np.maximum(np.linalg.norm(q, axis=-1) * radius, 1e-6)
    return (3 * (np.sin(x) - x * np.cos(x)) / x ** 3) ** 2


def render(volume, data, prep, scheme: str, q_sub):
    """Slices (M, P) of one normalised volume (L, L, L) at every average's rotation, in units of I / p.

    ``scheme``: ``trilinear`` (the volume grid as it is), ``fourier<f>x`` (the volume interpolated f
    times finer by :func:`spicompute.vae.train.upsample_fourier` first), either with ``_ss3`` (each
    model pixel the mean of 3 x 3 samples over its area; model-grid targets only)."""
    import torch

    from spicompute.vae.slicer import slice_volumes
    from spicompute.vae.train import upsample_fourier

    intensity = volume * data.profile3
    m = len(data.rotations)
    factor = int(scheme[len("fourier")]) if scheme.startswith("fourier") else 1
    if factor > 1:
        intensity = upsample_fourier(intensity[None], factor)[0]
    if scheme.endswith("_ss3"):
        n_sub = q_sub.shape[0] // prep.input_size ** 2    # samples per pixel; TensorData keeps the seen pixels
        q_points = q_sub.view(-1, n_sub, 3)[torch.from_numpy(data.target_index)].reshape(-1, 3)
    else:
        q_points, n_sub = data.q_lab, 1
    # one volume, every rotation's points in one call: (1, M * P, 3)
    points = (q_points[None] @ data.rotations.to(q_points.dtype)).reshape(1, -1, 3)
    flat = slice_volumes(intensity[None], prep.dq3_nm / factor, points[0], torch.eye(3)[None])  # rotation applied
    return flat.view(m, -1, n_sub).mean(-1) / data.profile


def sub_pixel_q(prep, n_sub: int = 3):
    """(n*n*n_sub^2, 3) Ewald q of n_sub x n_sub samples over each model pixel (pixel-major)."""
    import torch

    from spicompute.geometry import ewald_qz

    n, c = prep.input_size, prep.input_size // 2
    axis = (np.arange(n) - c) * prep.dq2_nm
    offsets = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * prep.dq2_nm
    qy = np.broadcast_to(axis[:, None, None, None] + offsets[None, None, :, None], (n, n, n_sub, n_sub))
    qx = np.broadcast_to(axis[None, :, None, None] + offsets[None, None, None, :], (n, n, n_sub, n_sub))
    q = np.stack([qx, qy, ewald_qz(qx, qy, prep.wavelength_nm)], -1)
    return torch.tensor(q.reshape(-1, 3), dtype=torch.float32)


def study(args) -> dict:
    from dataclasses import replace

    import torch
    from scipy.spatial.transform import Rotation

    import spicompute.vae.data as vae_data
    from spicompute.geometry import grid_q
    from spicompute.io.averages import AverageSet, read_averages
    from spicompute.io.truth import read_truth
    from spicompute.orient.symmetry import symmetrize_oh
    from spicompute.vae.model import load_vae
    from spicompute.vae.train import TensorData, reconstruction_loss
    from spicompute.validation import melt_match

    torch.manual_seed(0)
    _, _, prep = load_vae(args.model)
    real = read_averages(args.averages)
    size2, dq2, wavelength = real.intensity.shape[1], real.dq_nm, real.wavelength_nm
    q_pixels = grid_q(size2, dq2, wavelength)
    valid = (np.linalg.norm(q_pixels, axis=-1) >= prep.q_min_nm).astype(np.float32)
    quat = Rotation.random(args.n_averages, random_state=args.seed).as_quat()     # x, y, z, w
    mats = Rotation.from_quat(quat).as_matrix()                                   # model -> lab
    qwxyz = np.concatenate([quat[:, 3:], quat[:, :3]], 1)
    truth = read_truth(args.truth, volumes=True)
    melt = np.isfinite(truth["volume_melt_t"])
    size3, c3 = prep.volume_size, prep.volume_size // 2
    axis3 = (np.arange(size3) - c3) * prep.dq3_nm
    q_grid = np.stack(np.meshgrid(axis3, axis3, axis3, indexing="ij"), -1)
    profile3 = prep.profile_at(prep.volume_q_norm())
    q_sub = sub_pixel_q(prep)
    rng = np.random.default_rng(args.seed)
    rows = []
    for photons in args.photons:
        for shape in ("cube", "sphere"):
            exact = closed_form(shape, q_grid, args.cube_edge_nm, args.cube_edge_nm ** 3 * 1.1)
            # the pattern at rotation R samples I(R^T q): q @ R row-wise
            images = np.stack([closed_form(shape, q_pixels @ mats[i], args.cube_edge_nm, args.cube_edge_nm ** 3 * 1.1)
                               for i in range(args.n_averages)])
            if photons:   # members' photons: Poisson counts of n_members frames, background added then subtracted
                signal = images * valid / (images * valid).sum((1, 2), keepdims=True) * photons
                back = args.background / valid.sum() * valid
                # the 2D EMC's averages model the background apart and are never negative
                images = np.maximum(rng.poisson((signal + back) * args.members) / args.members - back, 0.0)
            for data_name in args.resample:
                avg = AverageSet(intensity=(images * valid).astype(np.float32),
                                 weight=np.broadcast_to(valid, images.shape).copy(),
                                 average_id=np.arange(args.n_averages), run=np.zeros(args.n_averages),
                                 model=np.arange(args.n_averages), n_frames=np.full(args.n_averages, float(args.members)),
                                 dq_nm=dq2, wavelength_nm=wavelength)
                variant = replace(prep, resample="bin" if data_name == "bin" else "gauss",
                                  prefilter_px=0.0 if data_name == "point" else prep.prefilter_px,
                                  loss_target="detector" if data_name == "detector" else "grid",
                                  # the encoder's grid as target; render() applies each scheme's interpolation
                                  target_oversample=1, volume_upsample=1)
                inputs = vae_data.model_inputs(avg, variant, qwxyz, np.ones(args.n_averages))
                data = TensorData(inputs, variant, torch.device("cpu"))

                def loss_of(volume, scheme):
                    pred = render(volume, data, prep, scheme, q_sub)
                    return reconstruction_loss(pred, data.target, data.observed, data.count_scale, "mse_log",
                                               data.floor, data.profile)[0].mean()

                for scheme in args.render:
                    if data_name == "detector" and scheme.endswith("_ss3"):
                        continue   # the detector's own pixels: point samples, no model pixel area
                    t0 = time.perf_counter()
                    exact_norm = torch.tensor(exact / profile3, dtype=torch.float32)
                    with torch.no_grad():
                        exact_loss = float(loss_of(exact_norm, scheme))
                    log_v = torch.zeros(exact_norm.shape, requires_grad=True)
                    opt = torch.optim.Adam([log_v], lr=0.05)
                    for _ in range(args.steps):
                        opt.zero_grad()
                        fit_loss = loss_of(symmetrize_oh(torch.exp(log_v)[None])[0], scheme)
                        fit_loss.backward()
                        opt.step()
                    fitted = symmetrize_oh(torch.exp(log_v)[None])[0].detach().numpy() * profile3
                    match = melt_match(np.stack([exact, fitted]), prep.volume_observed(), prep.dq3_nm,
                                       truth["volumes"][melt], truth["volume_melt_t"][melt], truth["volume_dq_nm"])
                    row = {"photons": photons, "shape": shape, "resample": data_name, "render": scheme,
                           "exact_loss": round(exact_loss, 4), "fitted_loss": round(float(fit_loss.detach()), 4),
                           "t_hat_exact": round(float(match["t_hat"][0]), 3), "cc_exact": round(float(match["cc_best"][0]), 3),
                           "t_hat_fitted": round(float(match["t_hat"][1]), 3),
                           "cc_fitted": round(float(match["cc_best"][1]), 3), "seconds": round(time.perf_counter() - t0, 1)}
                    rows.append(row)
                    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return {"date": date.today().isoformat(), "load": os.getloadavg()[0], "volume_size": size3,
            "dq3_nm": prep.dq3_nm, "dq2_nm": prep.dq2_nm, "q_max_nm": prep.q_max_nm, "n_averages": args.n_averages,
            "members": args.members, "background": args.background, "steps": args.steps, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "vae.pt"))
    ap.add_argument("--averages", default=str(REPO / "data" / "averages.h5"))
    ap.add_argument("--truth", default=str(REPO / "data" / "truth.h5"))
    ap.add_argument("--photons", type=float, nargs="+", default=[0.0, 400.0],
                    help="photons per member frame (0: noiseless)")
    ap.add_argument("--background", type=float, default=50.0, help="background photons per frame (flat)")
    ap.add_argument("--members", type=int, default=200, help="frames per class average")
    ap.add_argument("--n-averages", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300, help="Adam steps of the free-volume fit")
    ap.add_argument("--cube-edge-nm", type=float, default=42.0)
    ap.add_argument("--resample", nargs="+", default=["gauss", "bin", "point", "detector"])
    ap.add_argument("--render", nargs="+", default=["trilinear", "fourier2x", "fourier3x", "fourier2x_ss3"])
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    result = study(args)
    if args.save:
        out = REPO / "benchmarks" / "measured" / f"vae_forward_model_{result['date']}.json"
        out.write_text(json.dumps(result, indent=1))
        print("saved", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
