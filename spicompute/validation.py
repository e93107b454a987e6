"""Does a landscape axis follow shape or nuisance?  Checks against simulation truth.

Issue 8's criterion for a CLPCA space: a component follows the melt parameter,
and no component follows photons per frame or occupancy more than it follows
shape.  With a few dozen to a few hundred averages, a Spearman |rho| carries a
sampling error of ~1/sqrt(M) (0.1 at M = 100), so a component that follows
nothing in particular "exceeds" by chance about half the time.
:func:`nuisance_excess` therefore reports, per component, the point excess
and its bootstrap distribution over averages; the benchmark and the tests
read both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata


#: family averages whose members' mean melt is at least this are "melted" (spheres, up to size)
MELTED_T = 0.9

#: relative particle sizes of the sized melt match (``melt_match(..., sizes=)``): 0.92-1.08 in 1 % steps,
#: about 3 rms of a typical size spread
MATCH_SIZES = 1.0 + np.arange(-8, 9) * 0.01


def latent_follows_melt(latents: pd.DataFrame, per_average: pd.DataFrame) -> dict:
    """|Spearman|(z_k, members' mean melt) over the trained averages of the family, and among the
    melted ones (melt >= :data:`MELTED_T`, where the shape no longer changes) |Spearman|(z_k, members'
    mean size): what a latent axis orders the spheres by.  A 1D latent that also resolves the
    particles' size spread there scores lower on melt without being worse (docs/validation.md).
    Where the latents hold the VAE's fitted sizes (``size_rel``, ``vae.size_fit``):
    ``rho_size_rel_true_size``, their Spearman correlation with the members' true mean size."""
    t = latents.merge(per_average, on="average_id", how="inner")
    trained = t["vae_trained"].astype(bool) if "vae_trained" in t else pd.Series(True, index=t.index)
    fam = t[trained & t["family"].astype(bool) & t["melt_t"].notna()]
    melted = fam[fam["melt_t"] >= MELTED_T]
    out, size = {}, {}
    for col in sorted(c for c in latents.columns if c.startswith("z_") and not c.startswith("z_logvar")):
        rho = spearman(fam[col], fam["melt_t"])
        out[col] = None if rho is None else round(abs(rho), 4)
        rho = spearman(melted[col], melted["size_nm"]) if len(melted) >= 10 and "size_nm" in melted else None
        size[col] = None if rho is None else round(abs(rho), 4)
    result = {"rho_z_melt": out, "n_family_trained": int(len(fam)), "rho_z_size_melted": size,
              "n_melted_trained": int(len(melted))}
    if "size_rel" in fam and "size_nm" in fam and len(fam) >= 10:
        # the VAE's fitted size of each average (vae.size_fit) against its members' true mean size
        rho = spearman(fam["size_rel"], fam["size_nm"])
        result["rho_size_rel_true_size"] = None if rho is None else round(rho, 4)
    return result


def _abs_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|Spearman rho| of the columns of x (n, k) with y (n,) -> (k,); 0 where undefined."""
    rx = rankdata(x, axis=0)
    ry = rankdata(y)
    rx = rx - rx.mean(0)
    ry = ry - ry.mean()
    den = np.sqrt((rx ** 2).sum(0) * (ry ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (rx * ry[:, None]).sum(0) / den, 0.0)
    return np.abs(rho)


@dataclass
class NuisanceExcess:
    """Per component (k,): ``excess`` = max |rho| with a nuisance minus max |rho| with
    shape (> 0: follows nuisance more); ``p_positive`` = bootstrap share of
    resamples with excess > 0; ``upper`` / ``lower`` = its 95th / 5th percentile."""

    excess: np.ndarray
    p_positive: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @property
    def significant(self) -> np.ndarray:
        """(k,) bool: excess > 0 in at least 95 % of the resamples."""
        return self.lower > 0


def _excess(coords, shape, shape_mask, nuisance) -> np.ndarray:
    follow_shape = np.zeros(coords.shape[1])
    for name, values in shape.items():
        rows = shape_mask.get(name, np.ones(len(values), bool))
        if rows.sum() >= 3:
            follow_shape = np.maximum(follow_shape, _abs_spearman(coords[rows], values[rows]))
    follow_nuisance = np.zeros(coords.shape[1])
    for values in nuisance.values():
        follow_nuisance = np.maximum(follow_nuisance, _abs_spearman(coords, values))
    return follow_nuisance - follow_shape


def nuisance_excess(coords: np.ndarray, shape: dict, nuisance: dict, *,
                    shape_mask: dict | None = None, n_boot: int = 1000,
                    seed: int = 0) -> NuisanceExcess:
    """How much more each component follows a nuisance than shape.

    coords : (M, k) landscape coordinates of the usable averages
    shape : name -> (M,) structural truth per average (e.g. mean melt parameter,
        contaminant fraction)
    nuisance : name -> (M,) e.g. mean photons per frame, occupancy
    shape_mask : name -> (M,) bool, the averages a shape variable is defined on
        (melt: the cube-sphere family only)
    n_boot : resamples of the averages (with replacement)
    """
    coords = np.asarray(coords, np.float64)
    shape = {k: np.asarray(v, np.float64) for k, v in shape.items()}
    nuisance = {k: np.asarray(v, np.float64) for k, v in nuisance.items()}
    shape_mask = {k: np.asarray(v, bool) for k, v in (shape_mask or {}).items()}
    point = _excess(coords, shape, shape_mask, nuisance)
    rng = np.random.default_rng(seed)
    m = coords.shape[0]
    boot = np.empty((n_boot, coords.shape[1]))
    for b in range(n_boot):
        i = rng.integers(0, m, m)
        boot[b] = _excess(coords[i], {k: v[i] for k, v in shape.items()},
                          {k: v[i] for k, v in shape_mask.items()},
                          {k: v[i] for k, v in nuisance.items()})
    return NuisanceExcess(point, (boot > 0).mean(0), np.percentile(boot, 5, axis=0),
                          np.percentile(boot, 95, axis=0))


def landscape_excess(averages, components=("pc_1", "pc_2", "pc_3"), *, n_boot: int = 1000,
                     seed: int = 0) -> NuisanceExcess:
    """:func:`nuisance_excess` of a per-average table (usable averages only).

    averages : DataFrame with the components, the members' mean ``melt_t``
        (NaN where undefined), ``contaminant`` fraction, mean ``size_nm``, the
        member count ``members``, and the nuisances ``mean_photons`` and
        ``n_frames`` (:func:`spicompute.stages.embed.nuisance_table`).  Melt
        counts on the cube-sphere family: contaminant < 0.2 and >= 5 members.
    """
    family = ((averages["contaminant"] < 0.2) & (averages["members"] >= 5)).to_numpy()
    return nuisance_excess(averages[list(components)].to_numpy(),
                           {"melt": averages["melt_t"].fillna(0).to_numpy(),
                            "contaminant": averages["contaminant"].to_numpy(),
                            "size_nm": averages["size_nm"].to_numpy()},
                           {"mean_photons": averages["mean_photons"].to_numpy(),
                            "n_frames": averages["n_frames"].to_numpy()},
                           shape_mask={"melt": family}, n_boot=n_boot, seed=seed)


# --------------------------------------------------------------------------- 3D volumes against truth
#
# An independent path from the VAE's own preprocessing: the simulator's truth
# volumes (|F|^2 of each melt level, data/truth.h5) are resampled onto the grid
# of data/volumes.h5 and compared voxel by voxel.  Both are Oh-symmetric about
# q = 0, so no orientation alignment is needed.

FAMILY_CLASSES = ("cube", "melt", "sphere")


def frame_truth(truth: dict) -> "pd.DataFrame":
    """Per frame: ``frame_id``, ``melt_t`` (the family's melt level: cube 0, sphere 1; NaN for the
    other classes unless the truth says otherwise), ``contaminant`` (not of the family), ``size_nm``
    and ``size_scale`` (NaN where the truth has none).

    truth : :func:`spicompute.io.truth.read_truth`
    """
    import pandas as pd

    names = np.asarray(truth["class_name"]).astype(str)
    nan = np.full(len(names), np.nan)
    t = np.asarray(truth.get("melt_t", nan), np.float64).copy()
    t[names == "cube"] = 0.0
    t[names == "sphere"] = 1.0
    return pd.DataFrame({"frame_id": np.asarray(truth["frame_id"]), "melt_t": t,
                         "contaminant": ~np.isin(names, FAMILY_CLASSES),
                         "size_nm": np.asarray(truth.get("size_nm", nan), np.float64),
                         "size_scale": np.asarray(truth.get("size_scale", nan), np.float64)})


def average_truth(frames: "pd.DataFrame", truth: dict) -> "pd.DataFrame":
    """Per average: what its member frames truly were.

    frames : rows (frame_id, average_id) of results/frames.parquet (average_id < 0 ignored)
    truth : :func:`spicompute.io.truth.read_truth` (class_name, melt_t, size_nm per frame_id)
    Returns one row per average_id: ``members``, ``melt_t`` (mean over the members of
    the cube-sphere family; cube 0, sphere 1), ``contaminant`` (share of members that are
    dimers, rods or aggregates), ``size_nm`` (mean), ``majority_class`` (the most common true
    class of the members) and ``family`` (that class is cube, melt or sphere).
    """
    names = np.asarray(truth["class_name"]).astype(str)
    per_frame = frame_truth(truth)[["frame_id", "melt_t", "contaminant", "size_nm"]]
    members = frames.loc[frames["average_id"] >= 0, ["frame_id", "average_id"]].merge(per_frame, on="frame_id")
    members.loc[members["contaminant"], "melt_t"] = np.nan
    out = members.groupby("average_id").agg(members=("frame_id", "size"), melt_t=("melt_t", "mean"),
                                            contaminant=("contaminant", "mean"), size_nm=("size_nm", "mean"))
    classes = pd.Series(names, index=per_frame["frame_id"]).reindex(members["frame_id"].to_numpy()).to_numpy()
    out["majority_class"] = pd.crosstab(members["average_id"].to_numpy(), classes).idxmax(axis=1)
    out["family"] = out["majority_class"].isin(FAMILY_CLASSES)
    return out.reset_index()


def resample_volume(volume: np.ndarray, dq_src_nm: float, size: int, dq_nm: float) -> np.ndarray:
    """A centred intensity volume on another centred cubic q-grid (trilinear).

    volume : (L, L, L), q = 0 at index L // 2, step ``dq_src_nm`` (rad/nm)
    Returns (size, size, size) float64 with step ``dq_nm``; points outside the source
    grid are NaN (the caller decides whether they may be compared).
    """
    from scipy import ndimage

    src_c = volume.shape[0] // 2
    axis = (np.arange(size) - size // 2) * (dq_nm / dq_src_nm) + src_c
    coords = np.meshgrid(axis, axis, axis, indexing="ij")
    out = ndimage.map_coordinates(np.asarray(volume, np.float64), coords, order=1, mode="constant",
                                  cval=np.nan)
    return out


def _shell_radius(size: int, shell: np.ndarray) -> np.ndarray:
    """Rounded radius (voxels) of each voxel of ``shell`` (L, L, L) bool on a centred grid of edge L."""
    idx = np.indices((size,) * 3) - size // 2
    return np.rint(np.sqrt((idx ** 2).sum(0))).astype(np.int64)[shell]


def _log_contrast(volumes: np.ndarray, shell: np.ndarray, reference: np.ndarray, floor: float) -> np.ndarray:
    """log of each volume over the reference radial profile, scale removed: (P, n_voxels)."""
    v = volumes[:, shell] / reference[None]
    v = v / np.maximum(v.mean(axis=1, keepdims=True), 1e-300)
    return np.log(v + floor)


def melt_match(volumes: np.ndarray, observed: np.ndarray, dq_nm: float, truth_volumes: np.ndarray,
               truth_t: np.ndarray, truth_dq_nm: float, floor: float = 0.01, substeps: int = 16,
               sizes: np.ndarray | None = None) -> dict:
    """The true melt level each generated volume resembles most.

    volumes : (P, L, L, L) generated intensities (any scale), centred, step ``dq_nm``
    observed : (L, L, L) bool, the shell the data constrain (q_min <= |q| <= q_max)
    truth_volumes : (T, L', L', L') true intensities of the melt family at ``truth_t`` (T,),
        step ``truth_dq_nm`` (the simulator's truth file)
    Each volume and each truth level is divided by the truth family's mean radial profile
    (so the steep fall-off common to all does not dominate), scaled to mean 1 on the shell
    and compared as ``log(x + floor)`` by Pearson correlation over the observed voxels.
    ``t_hat`` is the best of a fine melt axis whose log contrasts are interpolated linearly
    between adjacent truth levels (``substeps`` per interval; exact at the levels).
    Returns dict with ``cc`` (P, T), ``t_hat`` (P,), ``cc_best`` (P,) and ``truth_cc_to_ends``
    (P, 2): how the *truth* at ``t_hat`` correlates, on the same shell, with the truth at the
    family's first and last level (cube, sphere) -- how far from an end ``t_hat`` is in what
    the data resolve (at low resolution a slightly melted cube correlates 0.999 with the cube).

    ``sizes`` (S,) relative particle sizes: the truth is also matched as the particle a times
    larger for each a (``a^6 I(a q)``; the truth volumes are of the nominal size, the particles
    of a real set spread around it), on the shell every size covers, and the result gets
    ``t_hat_sized``, ``size_hat`` and ``cc_best_sized`` (P,): the best (melt, size) pair.
    """
    size = volumes.shape[-1]
    order = np.argsort(truth_t)
    truth_t = np.asarray(truth_t, np.float64)[order]
    ref = np.stack([resample_volume(v, truth_dq_nm, size, dq_nm) for v in truth_volumes[order]])
    scaled = {} if sizes is None else {
        float(a): np.stack([resample_volume(v, truth_dq_nm / a, size, dq_nm) for v in truth_volumes[order]])
        for a in np.asarray(sizes, np.float64)}
    shell = observed & np.all(np.isfinite(ref), axis=0)
    for r in scaled.values():
        shell &= np.all(np.isfinite(r), axis=0)
    if shell.sum() < 10:
        raise ValueError("the truth volumes do not cover the observed shell of the generated volumes")
    radius = _shell_radius(size, shell)
    truth_shell = ref[:, shell]
    counts = np.bincount(radius)
    profile = np.bincount(radius, weights=truth_shell.mean(0)) / np.maximum(counts, 1)
    reference = np.maximum(profile[radius], 1e-300)
    # a fine melt axis: log contrasts interpolated linearly between adjacent truth levels
    w = np.linspace(0.0, 1.0, substeps + 1)[:-1]
    fine_t = np.concatenate([truth_t[k] + w * (truth_t[k + 1] - truth_t[k]) for k in range(len(truth_t) - 1)]
                            + [truth_t[-1:]])

    def standard(x):
        x = x - x.mean(1, keepdims=True)
        return x / np.maximum(np.sqrt((x * x).mean(1, keepdims=True)), 1e-300)

    def fine_axis(levels):
        b = _log_contrast(levels, shell, reference, floor)
        fine = np.concatenate([(1 - w)[:, None] * b[k] + w[:, None] * b[k + 1] for k in range(len(truth_t) - 1)]
                              + [b[-1:]])
        return standard(b), standard(fine)

    a = standard(_log_contrast(np.asarray(volumes, np.float64), shell, reference, floor))
    b, fine = fine_axis(ref)
    n = a.shape[1]
    cc = a @ b.T / n
    cc_fine = a @ fine.T / n
    best = cc_fine.argmax(1)
    t_hat = fine_t[best]
    to_ends = fine[best] @ fine[[0, -1]].T / n
    out = {"cc": cc, "t_hat": t_hat, "cc_best": cc_fine[np.arange(len(best)), best], "truth_t": truth_t,
           "truth_cc_to_ends": to_ends}
    if scaled:
        factors = np.asarray(list(scaled))
        cc_sized = np.stack([a @ fine_axis(r)[1].T / n for r in scaled.values()], 1)   # (P, S, F)
        flat = cc_sized.reshape(len(a), -1).argmax(1)
        k, f = np.unravel_index(flat, cc_sized.shape[1:])
        out.update(t_hat_sized=fine_t[f], size_hat=factors[k], cc_best_sized=cc_sized[np.arange(len(a)), k, f])
    return out


def true_particle_volume(truth_volumes: np.ndarray, truth_t: np.ndarray, t: np.ndarray) -> np.ndarray:
    """True particle volume (nm^3) at melt ``t`` from the truth intensities: V = sqrt(I(0)).

    truth_volumes : (T, L, L, L) |F|^2 of unit-density particles (nm^6), q = 0 at L // 2
    Linear interpolation in t between the levels.
    """
    c = truth_volumes.shape[1] // 2
    v = np.sqrt(np.asarray(truth_volumes[:, c, c, c], np.float64))
    order = np.argsort(truth_t)
    return np.interp(np.asarray(t, np.float64), np.asarray(truth_t, np.float64)[order], v[order])


#: trained averages nearest a volume point in the latent whose member frames are that point's truth
MEMBERS_NEAR = 10


def nearest_trained(point_z: np.ndarray, average_z: np.ndarray, trained: np.ndarray,
                    k: int = MEMBERS_NEAR) -> np.ndarray:
    """(P, k') indices into the averages: for each point (P, d) the k' = min(k, trained) trained
    averages (``average_z`` (M, d), ``trained`` (M,) bool) nearest it in the latent (Euclidean)."""
    point_z = np.asarray(point_z, np.float64).reshape(len(point_z), -1)
    average_z = np.asarray(average_z, np.float64).reshape(len(average_z), -1)
    candidates = np.flatnonzero(np.asarray(trained, bool) & np.isfinite(average_z).all(axis=1))
    if candidates.size == 0:
        raise ValueError("no trained average with a finite latent")
    k = min(int(k), candidates.size)
    d = ((point_z[:, None, :] - average_z[candidates][None]) ** 2).sum(-1)
    return candidates[np.argsort(d, axis=1, kind="stable")[:, :k]]


def shell_log_cc(volumes: np.ndarray, references: np.ndarray, observed: np.ndarray,
                 floor: float = 0.01) -> np.ndarray:
    """(P,) how well each volume matches its own reference, whatever their scales.

    volumes, references : (P, L, L, L) intensities on one centred grid; observed : (L, L, L)
    Both are divided by the reference's radial mean profile over the observed shell, scaled to
    mean 1 there and compared as ``log(x + floor)`` by Pearson correlation (the contrast of
    :func:`melt_match`, with each point's own reference instead of the melt series).
    """
    volumes = np.asarray(volumes, np.float64)
    references = np.asarray(references, np.float64)
    radius = _shell_radius(volumes.shape[-1], observed)
    counts = np.maximum(np.bincount(radius), 1)
    out = np.empty(len(volumes))
    for i, (v, r) in enumerate(zip(volumes, references)):
        profile = np.bincount(radius, weights=r[observed]) / counts
        pair = _log_contrast(np.stack([v, r]), observed, np.maximum(profile[radius], 1e-300), floor)
        out[i] = float(np.corrcoef(pair)[0, 1])
    return out


MELT_BANDS = ((0.0, 0.1), (0.1, 0.4), (0.4, 0.7), (0.7, 0.9), (0.9, 1.0))


def truth_fit_of_averages(model, prep, averages, quaternions: np.ndarray, gain: np.ndarray,
                          train_index: np.ndarray, mu: np.ndarray, melt_t: np.ndarray,
                          truth_volumes: np.ndarray, truth_t: np.ndarray, truth_dq_nm: float,
                          loss: str = "mse_log", batch: int = 64) -> dict:
    """How well the class averages are explained by the VAE's volumes and by the true shapes.

    Scores, with the VAE's own loss at the fitted per-average scale
    (:func:`spicompute.vae.train.slice_loss`) and the averages' fitted orientations, each
    average of ``train_index`` against (a) the decoder's volume at its latent mean ``mu``
    (M, d) and (b) the true melt level nearest its members' mean melt ``melt_t`` (M,).
    If the true shapes fit the averages worse than the reconstruction does, the distance
    between the reconstruction and the truth is in the averages (and their orientations),
    not in the VAE.  Returns per melt band (``MELT_BANDS``) the median of each score and
    the number of averages.
    """
    import torch

    from spicompute.vae.data import model_inputs
    from spicompute.vae.train import TensorData, slice_loss

    inputs = model_inputs(averages, prep, quaternions, gain, train_index)
    data = TensorData(inputs, prep, torch.device("cpu"))
    size = prep.volume_size
    profile3 = prep.profile_at(prep.volume_q_norm())
    order = np.argsort(truth_t)
    levels = np.stack([resample_volume(v, truth_dq_nm, size, prep.dq3_nm) for v in truth_volumes[order]])
    levels = np.nan_to_num(levels) / profile3
    level_t = np.asarray(truth_t, np.float64)[order]
    use = np.asarray(train_index)[np.isfinite(melt_t[train_index])]
    nearest = np.abs(level_t[None] - melt_t[use][:, None]).argmin(1)
    scores = np.empty((2, len(use)))
    model.eval()
    with torch.no_grad():
        for s in range(0, len(use), batch):
            idx = torch.as_tensor(use[s:s + batch])
            vae = model.decoder(torch.as_tensor(np.asarray(mu)[use[s:s + batch]], dtype=torch.float32))
            scores[0, s:s + batch] = slice_loss(vae, data, idx, loss)[0].numpy()
            true = torch.as_tensor(levels[nearest[s:s + batch]], dtype=torch.float32)
            scores[1, s:s + batch] = slice_loss(true, data, idx, loss)[0].numpy()
    out = {}
    for lo, hi in MELT_BANDS:
        inside = (melt_t[use] >= lo) & ((melt_t[use] < hi) | (hi >= 1.0))
        if inside.any():
            out[f"{lo:g}-{hi:g}"] = {"n": int(inside.sum()), "vae": round(float(np.median(scores[0, inside])), 4),
                                     "truth": round(float(np.median(scores[1, inside])), 4)}
    return out


def spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return None
    return float(spearmanr(x[ok], y[ok])[0])
