"""What the dashboard's buttons do: the project's own commands, called in-process.

Each action builds the command's arguments with the command's own parser
(``spicompute <command> --help`` defaults), with every path made absolute in the
workspace, and calls its ``run``; errors are the project's InputError /
ParameterError, shown by ``dashboard.common.attempt``.  Nothing here imports
Streamlit.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _stage_args(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=module.COMMAND, exit_on_error=False)
    module.add_arguments(parser)
    return parser.parse_args(argv)


def _name(text: str, what: str) -> str:
    from spicompute.errors import ParameterError

    if not SAFE_NAME.match(text or ""):
        raise ParameterError(what, f"letters, digits, '.', '_' or '-' (1..64), got {text!r}")
    return text


FRAME_SUFFIX = {"cxi": ".cxi", "dragonfly": ".emc", "csv": ".csv"}


def export_selection_frames(root: str | Path, selection: str, fmt: str) -> list[Path]:
    """The member frames of ``selections/<selection>.json`` as ``exports/<selection>.<ext>``
    (cxi, dragonfly photons + detector, or csv of ids), through ``spicompute export-frames``.
    Returns the files written (the command's ``<out>.frames.csv`` index included)."""
    from spicompute.stages import export_frames

    root = Path(root)
    _name(selection, "selection")
    if fmt not in FRAME_SUFFIX:
        from spicompute.errors import ParameterError

        raise ParameterError("format", f"one of {', '.join(FRAME_SUFFIX)}, got {fmt!r}")
    out = root / "exports" / f"{selection}{FRAME_SUFFIX[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [str(root / p) for p in ("results/parts/classify2d.parquet", "results/parts/embed.parquet",
                                     "results/parts/orient.parquet")]
    args = _stage_args(export_frames, [
        "--selection", selection, "--selections", str(root / "selections"), "--format", fmt,
        "--out", str(out), "--frames", str(root / "data/frames.h5"),
        "--frames-table", str(root / "results/frames.parquet"), "--parts", *parts,
        "--hits", str(root / "results/hits.parquet")])
    before = {p: p.stat().st_mtime_ns for p in out.parent.glob(f"{selection}*")}
    export_frames.run(args)
    return sorted(p for p in out.parent.glob(f"{selection}*")
                  if p not in before or p.stat().st_mtime_ns != before[p])


def export_volumes(root: str | Path, name: str, volumes: str = "data/volumes.h5",
                   phased: str = "data/phased.h5") -> Path:
    """MRC files (voxel size in Å in the header), a ChimeraX ``series.cxc`` and ``series.gif``
    of ``volumes`` (and ``phased``, when it exists) into ``exports/<name>/``, through
    ``spicompute export``.  Returns the folder."""
    from spicompute.stages import export

    root = Path(root)
    out = root / "exports" / _name(name, "export name")
    phased_path = root / phased if phased else None
    args = _stage_args(export, ["--volumes", str(root / volumes), "--out", str(out),
                                "--phased", str(phased_path) if phased_path and phased_path.exists() else ""])
    export.run(args)
    return out


def trajectory(root: str | Path, name: str, start: str = "", end: str = "",
               start_average: int | None = None, end_average: int | None = None,
               n_points: int = 12, path: str = "straight") -> Path:
    """Decode ``n_points`` volumes from ``start`` to ``end`` (latent points as "z1, z2, ..." or
    average ids) through ``spicompute trajectory`` into ``trajectories/<name>.h5`` (the layout
    of data/volumes.h5).  Returns the file."""
    from spicompute.stages import trajectory as stage

    root = Path(root)
    out = root / "trajectories" / f"{_name(name, 'trajectory name')}.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["--model", str(root / "models/vae.pt"), "--latents", str(root / "results/parts/vae.parquet"),
            "--n-points", str(int(n_points)), "--path", path, "--out", str(out)]
    argv += ["--start-average", str(int(start_average))] if start_average is not None else ["--start", start]
    argv += ["--end-average", str(int(end_average))] if end_average is not None else ["--end", end]
    stage.run(_stage_args(stage, argv))
    return out


def use_selection_command(name: str) -> str:
    """The command that runs the pipeline with the averages of ``selections/<name>.json``."""
    return f"dvc exp run -S select.mode=file -S select.file=selections/{_name(name, 'selection')}.json"


def use_selection_in_params(root: str | Path, name: str) -> Path:
    """Set ``select.mode: file`` and ``select.file: selections/<name>.json`` in the workspace's
    params.yaml, keeping its comments and order; ``dvc repro`` then trains on that selection."""
    from ruamel.yaml import YAML

    from spicompute.errors import InputError

    root = Path(root)
    params = root / "params.yaml"
    selection = root / "selections" / f"{_name(name, 'selection')}.json"
    if not selection.exists():
        raise InputError(selection, None, "no such selection")
    yaml = YAML()
    yaml.preserve_quotes = True
    try:
        doc = yaml.load(params.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(params, None, f"unreadable ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("select"), dict):
        raise InputError(params, "select", "section missing")
    doc["select"]["mode"] = "file"
    doc["select"]["file"] = f"selections/{name}.json"
    tmp = params.with_name(params.name + ".tmp")
    with tmp.open("w") as fh:
        yaml.dump(doc, fh)
    tmp.replace(params)  # all or nothing
    return params
