"""trajectory: decode volumes along a path between two latent points (or two averages).

The ends are latent points (``--start 0.1,-0.4``) or averages (``--start-average 17``,
its encoded latent mean).  ``--path straight`` decodes evenly spaced points on the
segment; ``--path graph`` (d >= 2) follows the shortest path through the
nearest-neighbour graph of the trained averages' latents, so it stays where data
are (:mod:`spicompute.landscape.trajectory`).  The output has the layout of
``data/volumes.h5`` (``volumes/source`` = ``trajectory``), so ``spicompute phase
--volumes`` and ``spicompute export --volumes`` take it as it is::

    spicompute trajectory --start-average 12 --end-average 305 --out trajectories/melt.h5
    spicompute export --volumes trajectories/melt.h5 --phased '' --out exports/melt
"""

from __future__ import annotations

import numpy as np

from spicompute.errors import InputError, ParameterError
from spicompute.stages._common import get_logger

COMMAND = "trajectory"
HELP = "decode intensity volumes along a path between two latent points or averages"
OUTPUTS = ("out",)  # --model is an input here

log = get_logger("trajectory")


def add_arguments(parser):
    parser.add_argument("--model", default="models/vae.pt", help="VAE weights (the .json side file beside it)")
    parser.add_argument("--latents", default="results/parts/vae.parquet", help="encoded averages (vae stage)")
    ends = parser.add_argument_group("end points (a latent point or an average for each end)")
    ends.add_argument("--start", default="", help="latent point, comma-separated (one value per dimension)")
    ends.add_argument("--end", default="", help="latent point, comma-separated")
    ends.add_argument("--start-average", type=int, default=None, help="average_id whose latent mean starts it")
    ends.add_argument("--end-average", type=int, default=None, help="average_id whose latent mean ends it")
    parser.add_argument("--n-points", type=int, default=12, help="volumes along the path (2..200)")
    parser.add_argument("--path", choices=("straight", "graph"), default="straight",
                        help="straight segment, or through the averages' nearest-neighbour graph")
    parser.add_argument("--neighbours", type=int, default=8, help="graph path: neighbours per average")
    parser.add_argument("--out", required=True, help="volumes file to write (layout of data/volumes.h5)")


def _end(text: str, average, which: str, ids: np.ndarray, z: np.ndarray, latents_path) -> np.ndarray:
    if (text == "") == (average is None):
        raise ParameterError(f"--{which}", f"give exactly one of --{which} or --{which}-average")
    if average is not None:
        hit = np.flatnonzero(ids == average)
        if hit.size == 0:
            raise InputError(latents_path, "average_id", f"average {average} is not in the table")
        return z[hit[0]]
    try:
        point = np.array([float(v) for v in text.split(",")], np.float64)
    except ValueError:
        raise ParameterError(f"--{which}", f"must be numbers separated by commas, got {text!r}") from None
    if point.shape != (z.shape[1],):
        raise ParameterError(f"--{which}", f"needs {z.shape[1]} values (the latent dimension), got {point.size}")
    if not np.all(np.isfinite(point)):
        raise ParameterError(f"--{which}", f"must be finite, got {text!r}")
    return point


def run(args) -> int:
    import h5py

    from spicompute.io.provenance import stamp
    from spicompute.io.storage import memory_output
    from spicompute.io.tables import read_table
    from spicompute.landscape.trajectory import graph_path, straight_path
    from spicompute.vae.model import load_vae
    from spicompute.vae.train import decode_volumes

    if not 2 <= args.n_points <= 200:
        raise ParameterError("--n-points", f"must be 2..200, got {args.n_points}")
    if args.neighbours < 1:
        raise ParameterError("--neighbours", f"must be >= 1, got {args.neighbours}")
    model, arch, prep = load_vae(args.model)
    table = read_table(args.latents)
    cols = [f"z_{i + 1}" for i in range(arch.latent_dim)]
    for col in ("average_id",) + tuple(cols):
        if col not in table.columns:
            raise InputError(args.latents, col, "column missing")
    z = table[cols].to_numpy(np.float64)
    if not np.all(np.isfinite(z)):
        raise InputError(args.latents, cols[0], "contains NaN or Inf")
    ids = table["average_id"].to_numpy()
    start = _end(args.start, args.start_average, "start", ids, z, args.latents)
    end = _end(args.end, args.end_average, "end", ids, z, args.latents)
    if np.allclose(start, end):
        raise ParameterError("--end", f"the path has zero length: start and end are the same point {start.tolist()}")
    visited = np.zeros(0, np.int64)
    if args.path == "graph":
        trained = table["vae_trained"].to_numpy(bool) if "vae_trained" in table else np.ones(len(z), bool)
        try:
            points, visited = graph_path(z[trained], start, end, args.n_points, args.neighbours)
        except ValueError as exc:
            raise ParameterError("--path", str(exc)) from None
        visited = ids[trained][visited]
    else:
        points = straight_path(start, end, args.n_points)
    volumes = decode_volumes(model, points, prep)
    size = arch.volume_size
    with memory_output(args.out) as tmp:  # HDF5 never writes to disk itself: see io.storage
        with h5py.File(tmp, "w") as h5:
            stamp(h5, COMMAND, {"start": start.tolist(), "end": end.tolist(), "path": args.path,
                                "n_points": args.n_points, "model": str(args.model)})
            g = h5.create_group("volumes")
            g.create_dataset("intensity", data=volumes, compression="gzip", shuffle=True,
                             chunks=(1, size, size, size))
            g["intensity"].attrs["units"] = "mean photons per pixel at unit fluence (radial profile multiplied back)"
            g.create_dataset("z", data=points.astype(np.float32))
            g.create_dataset("source", data=np.asarray(["trajectory"] * len(points), dtype=object),
                             dtype=h5py.string_dtype())
            g.create_dataset("observed", data=prep.volume_observed().astype(np.uint8))
            g.create_dataset("path_average_id", data=np.asarray(visited, np.int64))
            h5.attrs["dq_nm"] = prep.dq3_nm
            h5.attrs["center"] = size // 2
            h5.attrs["q_min_nm"] = prep.q_min_nm
            h5.attrs["q_max_nm"] = prep.q_max_nm
            h5.attrs["latent_dim"] = arch.latent_dim
            if prep.particle_size_nm:
                h5.attrs["particle_size_nm"] = prep.particle_size_nm
    log.info("%d volumes along a %s path from %s to %s -> %s", len(points), args.path,
             np.round(start, 3).tolist(), np.round(end, 3).tolist(), args.out)
    return 0
