"""export: volumes along the latent as MRC files, a ChimeraX volume series and an animation.

Writes into one folder (created if needed; files of other names are left alone)::

    density_000.mrc ...          phased real-space densities (data/phased.h5), voxel size dx in Å,
                                 origin at the particle centre
    log10_intensity_000.mrc ...  log10 of the intensity volumes (data/volumes.h5) over their
                                 maximum, floored at -decades; voxel size dq in rad/Å
    series.cxc                   ChimeraX script: opens both as volume series (``vseries true``)
                                 and plays the densities back and forth
    series.gif                   one frame per latent point: <100>/<110>/<111> central sections of
                                 the log intensity (top) and projections of the density (bottom)
    index.csv                    file names per latent point with z and source

Example: ``spicompute export --out exports/run1`` then, in ChimeraX, ``open exports/run1/series.cxc``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spicompute.errors import InputError, OutputError, ParameterError
from spicompute.stages._common import get_logger

COMMAND = "export"
HELP = "write volumes and phased densities as MRC + a ChimeraX volume series + an animated GIF"
OUTPUTS = ()  # --out is a folder, checked here

log = get_logger("export")


def add_arguments(parser):
    parser.add_argument("--volumes", default="data/volumes.h5", help="intensity volumes (volumes stage)")
    parser.add_argument("--phased", default="data/phased.h5",
                        help="phased densities (phase stage); '' or a missing file: intensities only")
    parser.add_argument("--out", required=True, help="folder to write into")
    parser.add_argument("--decades", type=float, default=5.0, help="log10 intensity floor below the maximum")
    parser.add_argument("--no-gif", action="store_true", help="skip the animation")


def read_densities(path) -> tuple[np.ndarray, float]:
    """(densities (P, L, L, L) float32, dx_nm) of a phased file."""
    from spicompute.io.frames import open_h5

    with open_h5(path) as h5:
        if "phased/density" not in h5:
            raise InputError(path, "phased/density", "dataset missing")
        dens = h5["phased/density"][()]
        dx = h5.attrs.get("dx_nm", h5["phased"].attrs.get("dx_nm"))
    try:
        dx = float(dx)
    except (TypeError, ValueError):
        raise InputError(path, "@dx_nm", f"must be a positive number, got {dx!r}") from None
    if not (np.isfinite(dx) and dx > 0):
        raise InputError(path, "@dx_nm", f"must be a positive number, got {dx!r}")
    if dens.ndim != 4 or not dens.shape[1] == dens.shape[2] == dens.shape[3]:
        raise InputError(path, "phased/density", f"must be (P, L, L, L), got {dens.shape}")
    if not np.all(np.isfinite(dens)):
        raise InputError(path, "phased/density", "contains NaN or Inf")
    return dens, dx


def log_intensity(volume: np.ndarray, observed: np.ndarray, decades: float) -> np.ndarray:
    """log10(I / max I) floored at ``-decades``; unobserved voxels at the floor."""
    top = float(volume[observed].max()) if observed.any() else float(volume.max())
    top = top if top > 0 else 1.0
    out = np.log10(np.maximum(volume / top, 10.0 ** -decades))
    return np.where(observed, out, -decades).astype(np.float32)


def chimerax_script(densities: list[str], intensities: list[str], level: float | None) -> str:
    """A .cxc that opens the files as two volume series and plays the first."""
    lines = ["# SPI Landscape: volumes along the latent coordinate.",
             "# Open this file in ChimeraX (File > Open, or: open /path/to/series.cxc); the MRC files",
             "# are named relative to this folder."]
    model = 1
    if densities:
        lines += [f"open {' '.join(densities)} vseries true",
                  f"volume #{model} style surface" + (f" level {level:.6g}" if level is not None else ""),
                  f"vseries play #{model} loop true direction oscillate maxFrameRate 4"]
        model += 1
    if intensities:
        lines += [f"open {' '.join(intensities)} vseries true",
                  f"volume #{model} style surface level -3" + (" hide" if densities else ""),
                  f"vseries play #{model} loop true direction oscillate maxFrameRate 4"]
    lines.append("view")
    return "\n".join(lines) + "\n"


def _to_rgb(img: np.ndarray) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 with a perceptual colour map (grey without matplotlib)."""
    lo, hi = float(np.min(img)), float(np.max(img))
    x = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    try:
        from matplotlib import colormaps

        return (colormaps["viridis"](x)[..., :3] * 255).astype(np.uint8)
    except ImportError:
        g = (x * 255).astype(np.uint8)
        return np.stack([g, g, g], -1)


def animation_frames(log_volumes: np.ndarray, densities: np.ndarray | None, labels: list[str],
                     floor: float, scale: int = 4) -> list:
    """PIL images, one per latent point: sections of log intensity over projections of density.

    Images follow the dashboard's convention (spicompute/views.py): pixel (i, j) at (j - c) u + (i - c) v,
    drawn with row 0 at the bottom.
    """
    from PIL import Image, ImageDraw

    from spicompute.views import DIRECTIONS, central_section, projection

    frames = []
    for k, label in enumerate(labels):
        # sections read 0 outside the grid: shift so that the outside is the log floor
        rows = [[central_section(log_volumes[k] - floor, d) + floor for d in DIRECTIONS.values()]]
        if densities is not None:
            rows.append([projection(densities[k], d) for d in DIRECTIONS.values()])
        tiles = [np.concatenate([_to_rgb(np.flipud(t)) for t in row], axis=1) for row in rows]
        img = np.concatenate(tiles, axis=0)
        img = np.kron(img, np.ones((scale, scale, 1), np.uint8))
        pad = np.zeros((14, img.shape[1], 3), np.uint8)
        pil = Image.fromarray(np.concatenate([pad, img], axis=0))
        ImageDraw.Draw(pil).text((3, 1), label, fill=(255, 255, 255))
        frames.append(pil)
    return frames


def _writable_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(path, f"cannot create the export folder ({os.strerror(exc.errno or 0)})") from None
    if not path.is_dir():
        raise OutputError(path, "is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(path, "export folder is not writable")


def run(args) -> int:
    from spicompute.io.mrc import ANGSTROM_PER_NM, write_mrc
    from spicompute.io.provenance import atomic_path
    from spicompute.io.volumes import read_volumes

    if not (np.isfinite(args.decades) and args.decades > 0):
        raise ParameterError("--decades", f"must be > 0, got {args.decades}")
    vol = read_volumes(args.volumes)
    densities, dx = None, None
    if args.phased and Path(args.phased).exists():
        densities, dx = read_densities(args.phased)
        if len(densities) != len(vol["z"]):
            raise InputError(args.phased, "phased/density",
                             f"{len(densities)} densities for {len(vol['z'])} volumes in {args.volumes}")
    out = Path(args.out)
    _writable_folder(out)
    from spicompute.stages.validate import _sources

    sources = _sources(args.volumes, len(vol["z"]))
    n = len(vol["z"])
    width = max(3, len(str(n - 1)))
    intensity_files, density_files = [], []
    logs = np.empty_like(vol["intensity"], dtype=np.float32)
    for k in range(n):
        logs[k] = log_intensity(vol["intensity"][k], vol["observed"], args.decades)
        name = f"log10_intensity_{k:0{width}d}.mrc"
        write_mrc(out / name, logs[k], vol["dq_nm"] / ANGSTROM_PER_NM,
                  label=f"log10 I/Imax, reciprocal space, voxel = dq in rad/A; z = {vol['z'][k].tolist()}")
        intensity_files.append(name)
        if densities is not None:
            name = f"density_{k:0{width}d}.mrc"
            write_mrc(out / name, densities[k], dx * ANGSTROM_PER_NM,
                      label=f"phased density, voxel in A; z = {vol['z'][k].tolist()}")
            density_files.append(name)
    level = None
    if densities is not None:
        level = 0.5 * float(np.median([np.percentile(d[d > 0], 99) if (d > 0).any() else 0.0 for d in densities]))
    with atomic_path(out / "series.cxc") as tmp:
        tmp.write_text(chimerax_script(density_files, intensity_files, level))
    lines = ["index,source," + ",".join(f"z_{i + 1}" for i in range(vol["z"].shape[1]))
             + ",log10_intensity_file,density_file"]
    for k in range(n):
        lines.append(f"{k},{sources[k]}," + ",".join(f"{v:.6g}" for v in vol["z"][k]) + f",{intensity_files[k]},"
                     + (density_files[k] if density_files else ""))
    with atomic_path(out / "index.csv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    if not args.no_gif:
        labels = [f"z = {', '.join(f'{v:+.2f}' for v in vol['z'][k])}" for k in range(n)]
        frames = animation_frames(logs, densities, labels, floor=-args.decades)
        with atomic_path(out / "series.gif") as tmp:
            frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=400, loop=0)
    log.info("%d latent points -> %s (%d MRC files, series.cxc%s)", n, out,
             len(intensity_files) + len(density_files), "" if args.no_gif else ", series.gif")
    return 0
