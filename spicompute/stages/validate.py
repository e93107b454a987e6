"""validate: the 3D result against the simulator's truth (only when the input was simulated).

The paper's Fig. 5 claims -- intensity volumes along z that trace the melt
from cube to sphere, phased particle volumes along z -- checked by a path
independent of the VAE: the truth intensities of the melt family
(``data/truth.h5``) are resampled onto the grid of ``data/volumes.h5``
(:mod:`spicompute.validation`).  Per volume point:

- ``t_hat``: the true melt level the generated volume resembles most, and
  ``match_cc``, its log-contrast correlation over the observed shell;
- ``true_volume_nm3``: the true particle volume at ``t_hat`` (sqrt of the
  truth's I(0)), next to the phased ``particle_volume_nm3`` and their ratio.

Per run (``metrics/validate.json``): Spearman(z, t_hat) along the line, t_hat
at both ends, |Spearman|(z_1, members' mean melt) over the trained family
averages, the worst particle volume error and how many phased volumes
converged; and ``fit_of_averages``: per melt band, how well the class
averages are explained by the VAE's volumes and by the true shapes (the VAE's
own loss at the fitted orientations: when the truth fits the data worse than
the reconstruction does, the gap to the truth lies in the averages).  (The training set's family purity and recall are the select
stage's metrics.)  For ingested data (no
truth) the metrics say ``"truth": false`` and the table is empty.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spicompute.errors import InputError
from spicompute.stages._common import add_inputs, add_outputs, get_logger

COMMAND = "validate"
HELP = "check the volumes, phased shapes and latent against the simulation truth (simulated input only)"
OUTPUTS = ("out", "metrics")

log = get_logger("validate")


def add_arguments(parser):
    add_inputs(parser, "truth", "volumes", "latents", "frames-table", "model", "averages", "orient",
               model=("models/vae.pt", "VAE weights ('' skips the fit comparison)"))
    parser.add_argument("--phased-table", default="results/volumes.parquet", help="phase stage table")
    add_outputs(parser, COMMAND, "results/volumes_truth.parquet", "one row per volume point")


def run(args) -> int:
    from spicompute.io.provenance import write_json_atomic
    from spicompute.io.tables import read_table, write_table
    from spicompute.io.truth import read_truth
    from spicompute.io.volumes import read_volumes
    from spicompute.validation import (MATCH_SIZES, average_truth, latent_follows_melt, melt_match, spearman,
                                       true_particle_volume)

    try:
        truth = read_truth(args.truth, volumes=True)
    except InputError as exc:
        if "no ground truth" not in str(exc):
            raise
        write_table(args.out, pd.DataFrame({"volume_index": np.zeros(0, np.int64)}), stage=COMMAND)
        write_json_atomic(args.metrics, {"truth": False})
        log.info("no simulation truth in %s: nothing to validate", args.truth)
        return 0
    melt = np.isfinite(truth["volume_melt_t"])
    if melt.sum() < 2:
        raise InputError(args.truth, "volumes/melt_t", "fewer than two melt-family truth volumes")
    truth_volumes, truth_t = truth["volumes"][melt], truth["volume_melt_t"][melt]
    vol = read_volumes(args.volumes)
    match = melt_match(vol["intensity"], vol["observed"], vol["dq_nm"], truth_volumes, truth_t,
                       truth["volume_dq_nm"])
    with_source = _sources(args.volumes, len(vol["z"]))
    table = pd.DataFrame({"volume_index": np.arange(len(vol["z"]), dtype=np.int64), "source": with_source})
    for k in range(vol["z"].shape[1]):
        table[f"z_{k + 1}"] = vol["z"][:, k]
    table["t_hat"] = match["t_hat"]
    table["match_cc"] = match["cc_best"]
    table["truth_cc_to_cube"] = match["truth_cc_to_ends"][:, 0]
    table["truth_cc_to_sphere"] = match["truth_cc_to_ends"][:, 1]
    table["true_volume_nm3"] = true_particle_volume(truth_volumes, truth_t, match["t_hat"])
    # the same against the truth at every particle size in MATCH_SIZES (the truth volumes are of the
    # nominal size; the particles spread around it): the best (melt, size) pair and its true volume
    sized = melt_match(vol["intensity"], vol["observed"], vol["dq_nm"], truth_volumes, truth_t,
                       truth["volume_dq_nm"], sizes=MATCH_SIZES)
    table["t_hat_sized"] = sized["t_hat_sized"]
    table["size_hat"] = sized["size_hat"]
    table["match_cc_sized"] = sized["cc_best_sized"]
    table["true_volume_sized_nm3"] = (true_particle_volume(truth_volumes, truth_t, sized["t_hat_sized"])
                                      * sized["size_hat"] ** 3)
    phased = read_table(args.phased_table)
    if "particle_volume_nm3" not in phased.columns or len(phased) != len(table):
        raise InputError(args.phased_table, "particle_volume_nm3",
                         f"expected one row per volume point ({len(table)}) with particle_volume_nm3")
    table["particle_volume_nm3"] = phased["particle_volume_nm3"].to_numpy(np.float64)
    table["volume_ratio"] = table["particle_volume_nm3"] / table["true_volume_nm3"]
    table["volume_ratio_sized"] = table["particle_volume_nm3"] / table["true_volume_sized_nm3"]
    if "converged" in phased.columns:
        table["converged"] = phased["converged"].to_numpy(bool)

    frames = read_table(args.frames_table)
    per_average = average_truth(frames, truth)
    latents = read_table(args.latents)
    line = table[table["source"].isin(["line", "grid"])]
    ends = line.sort_values("z_1")["t_hat"].to_numpy() if "z_1" in line else np.zeros(0)
    metrics = {"truth": True, "n_points": int(len(table))}
    if vol["z"].shape[1] == 1 and len(line) >= 3:
        rho = spearman(line["z_1"], line["t_hat"])
        metrics["line_spearman_z_t_hat"] = None if rho is None else round(rho, 4)
        metrics["line_t_hat_ends"] = [round(float(ends[0]), 4), round(float(ends[-1]), 4)]
        metrics["line_t_hat_span"] = [round(float(min(ends[0], ends[-1])), 4),
                                      round(float(max(ends[0], ends[-1])), 4)]
        # what the shell resolves: the truth at the end points' t_hat against the true cube / sphere
        by_z = line.sort_values("z_1")
        low, high = (by_z.iloc[0], by_z.iloc[-1]) if ends[0] <= ends[-1] else (by_z.iloc[-1], by_z.iloc[0])
        metrics["line_end_truth_cc"] = [round(float(low["truth_cc_to_cube"]), 4),
                                        round(float(high["truth_cc_to_sphere"]), 4)]
        ends_sized = by_z["t_hat_sized"].to_numpy()
        rho = spearman(by_z["z_1"], by_z["t_hat_sized"])
        metrics["line_sized"] = {   # the match with the particle size free (MATCH_SIZES)
            "spearman_z_t_hat": None if rho is None else round(rho, 4),
            "t_hat_ends": [round(float(ends_sized[0]), 4), round(float(ends_sized[-1]), 4)],
            "size_hat_ends": [round(float(by_z["size_hat"].iloc[0]), 3), round(float(by_z["size_hat"].iloc[-1]), 3)],
            "match_cc_ends": [round(float(by_z["match_cc_sized"].iloc[0]), 4),
                              round(float(by_z["match_cc_sized"].iloc[-1]), 4)],
            "volume_within_10pct": int((np.abs(by_z["volume_ratio_sized"].to_numpy() - 1.0) <= 0.10).sum())}
    metrics["match_cc_min"] = round(float(table["match_cc"].min()), 4)
    err = np.abs(line["volume_ratio"].to_numpy() - 1.0)
    metrics["volume_error_max"] = round(float(err.max()), 4) if err.size else None
    metrics["volume_within_10pct"] = int((err <= 0.10).sum())
    metrics["volume_ratio_range"] = ([round(float(line["volume_ratio"].min()), 4),
                                      round(float(line["volume_ratio"].max()), 4)] if err.size else None)
    if "converged" in table:
        metrics["n_converged"] = int(table["converged"].sum())
    members = _members_truth(args.truth, vol, latents, frames, truth, truth_volumes, truth_t,
                             truth["volume_dq_nm"])
    if members is not None:
        for name, values in members.items():
            table[name] = values
        table["volume_ratio_members"] = table["particle_volume_nm3"] / table["members_volume_nm3"]
        line = table[table["source"].isin(["line", "grid"])]
        if vol["z"].shape[1] == 1 and len(line) >= 3:
            by_z = line.sort_values("z_1")

            def value(v):   # NaN (a point without family members) -> null in the JSON
                return round(float(v), 4) if np.isfinite(v) else None

            def ends(col):
                return [value(by_z[col].iloc[0]), value(by_z[col].iloc[-1])]

            err_m = np.abs(by_z["volume_ratio_members"].to_numpy() - 1.0)
            cc = line["cc_to_members"].to_numpy(np.float64)
            metrics["line_members"] = {   # what the member frames of the averages at each point truly were
                "melt_ends": ends("members_melt"), "size_ends": ends("members_size"),
                "t_hat_ends": ends("members_t_hat"), "t_hat_sized_ends": ends("members_t_hat_sized"),
                "cc_to_members_range": ([value(np.nanmin(cc)), value(np.nanmax(cc))] if np.isfinite(cc).any()
                                        else None),
                "n_points_without_members": int((~np.isfinite(by_z["members_melt"].to_numpy())).sum()),
                "volume_within_10pct": int((err_m <= 0.10).sum())}
    metrics.update(latent_follows_melt(latents, per_average))
    if args.model:
        metrics["fit_of_averages"] = _fit_of_averages(args, latents, per_average, truth_volumes, truth_t,
                                                      truth["volume_dq_nm"])
    write_table(args.out, table, stage=COMMAND)
    write_json_atomic(args.metrics, metrics)
    log.info("validated %d volumes: line Spearman(z, t_hat) %s, t_hat ends %s, volume error max %s, "
             "|rho|(z, melt) %s", len(table),
             metrics.get("line_spearman_z_t_hat"), metrics.get("line_t_hat_ends"), metrics["volume_error_max"],
             metrics["rho_z_melt"])
    return 0


def _fit_of_averages(args, latents, per_average, truth_volumes, truth_t, truth_dq_nm) -> dict:
    """:func:`spicompute.validation.truth_fit_of_averages` on the pipeline's files."""
    import json
    from pathlib import Path

    from spicompute.io.averages import read_averages
    from spicompute.io.tables import read_table
    from spicompute.vae.model import load_vae
    from spicompute.validation import truth_fit_of_averages

    model, arch, prep = load_vae(args.model)
    avg = read_averages(args.averages)
    orient = read_table(args.orient).set_index("average_id").reindex(avg.average_id)
    if orient[["qw", "qx", "qy", "qz", "gain"]].isna().any().any():
        raise InputError(args.orient, "average_id", "some averages have no orientation")
    lat = latents.set_index("average_id").reindex(avg.average_id)
    cols = [f"z_{i + 1}" for i in range(arch.latent_dim)]
    trained = lat["vae_trained"].fillna(False).to_numpy(bool) if "vae_trained" in lat else np.ones(len(lat), bool)
    melt = per_average.set_index("average_id")["melt_t"].reindex(avg.average_id).to_numpy(np.float64)
    side = json.loads(Path(args.model).with_suffix(".json").read_text())
    # the orientations the VAE sliced at (a round average's is random: vae.isotropic_below), else the fit's
    used = ["vae_qw", "vae_qx", "vae_qy", "vae_qz"]
    quats = (lat[used] if set(used) <= set(lat.columns) else orient[["qw", "qx", "qy", "qz"]]).to_numpy(np.float64)
    return truth_fit_of_averages(model, prep, avg, quats,
                                 orient["gain"].to_numpy(np.float64), np.flatnonzero(trained),
                                 lat[cols].to_numpy(np.float64), melt, truth_volumes, truth_t, truth_dq_nm,
                                 loss=(side.get("train") or {}).get("loss", "mse_log"))


def _members_truth(truth_path, vol, latents, frames, truth, truth_volumes, truth_t, truth_dq_nm) -> dict | None:
    """Per volume point, the truth of the particles the VAE put there (None when the truth file
    does not record the simulation's parameters).

    The member frames of the ``MEMBERS_NEAR`` trained averages nearest the point in the latent
    (family members only): their mean melt and size, the exact mean of their intensities
    (:func:`spicompute.simulation.oracle.members_intensity`) matched like a generated volume
    (nominal size and size free), its log-contrast correlation with the generated volume, and
    their mean true particle volume ``s^3 V(t)``.  Next to ``t_hat`` this separates what the
    data hold at a point from what the VAE made of it: a line end whose members are 4 % smaller
    than nominal reads as less melted on the nominal-size match however faithful the volume.
    """
    from spicompute.simulation.oracle import library_from_truth, members_intensity
    from spicompute.validation import (MATCH_SIZES, MEMBERS_NEAR, frame_truth, melt_match, nearest_trained,
                                       shell_log_cc, true_particle_volume)

    if "vae_trained" not in latents or "z_1" not in latents:
        return None
    size, dq = vol["intensity"].shape[-1], vol["dq_nm"]
    library = library_from_truth(truth_path, float((size // 2) * dq * np.sqrt(3) * 1.2))
    if library is None:
        log.info("members' truth skipped: %s does not record the simulation parameters", truth_path)
        return None
    shell = np.asarray(vol["observed"], bool)   # only the compared voxels are computed
    # the melt family is Oh-symmetric: each voxel's intensity is that of its sorted |index| triple
    # (1/48 of the voxels to evaluate)
    index = np.stack(np.meshgrid(*(np.arange(size) - size // 2,) * 3, indexing="ij"), -1)[shell]
    canonical, expand = np.unique(-np.sort(-np.abs(index), axis=1), axis=0, return_inverse=True)
    q = canonical * dq
    cols = [f"z_{k + 1}" for k in range(vol["z"].shape[1])]
    trained = latents["vae_trained"].to_numpy(bool)
    near = nearest_trained(vol["z"], latents[cols].to_numpy(np.float64), trained, MEMBERS_NEAR)
    per_frame = frame_truth(truth).rename(columns={"melt_t": "melt", "size_scale": "size"})
    members = frames.loc[frames["average_id"] >= 0, ["frame_id", "average_id"]].merge(per_frame, on="frame_id")
    members = members[~members["contaminant"]]
    ids = latents["average_id"].to_numpy()
    mixtures = np.zeros(vol["intensity"].shape)
    out = {k: np.full(len(near), np.nan) for k in ("members_melt", "members_size", "members_volume_nm3")}
    has = np.zeros(len(near), bool)   # points whose nearest averages hold family members
    for i, rows in enumerate(near):
        m = members[members["average_id"].isin(ids[rows])]
        if m.empty:   # e.g. only contaminants trained there: no family truth for this point
            continue
        has[i] = True
        t, s = m["melt"].to_numpy(), m["size"].to_numpy()
        mixtures[i][shell] = members_intensity(library, t, s, q)[expand.ravel()]
        out["members_melt"][i], out["members_size"][i] = t.mean(), s.mean()
        out["members_volume_nm3"][i] = float(np.mean(true_particle_volume(truth_volumes, truth_t, t) * s ** 3))
    for name in ("members_t_hat", "members_t_hat_sized", "members_size_hat", "cc_to_members"):
        out[name] = np.full(len(near), np.nan)
    if has.any():
        match = melt_match(mixtures[has], vol["observed"], dq, truth_volumes, truth_t, truth_dq_nm,
                           sizes=MATCH_SIZES)
        out["members_t_hat"][has] = match["t_hat"]
        out["members_t_hat_sized"][has] = match["t_hat_sized"]
        out["members_size_hat"][has] = match["size_hat"]
        out["cc_to_members"][has] = shell_log_cc(vol["intensity"][has], mixtures[has], vol["observed"])
    if not has.all():
        log.warning("members' truth: %d of %d points have no melt-family member among the member frames "
                    "of their %d nearest trained averages (NaN there)", int((~has).sum()), len(has), near.shape[1])
    return out


def _sources(path, n: int) -> list[str]:
    from spicompute.io.frames import open_h5

    with open_h5(path) as h5:
        if "volumes/source" not in h5:
            return ["line"] * n
        return [s.decode() if isinstance(s, bytes) else str(s) for s in h5["volumes/source"][()]]
