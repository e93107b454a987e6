"""Selection files: named subsets of averages (or latent points) tracked in git.

A selection is a small JSON file ``selections/<name>.json``::

    {"name": "early-melt",              # letters, digits, '.', '_', '-' (<= 64)
     "kind": "averages",                # or "latent_points"
     "average_ids": [3, 17, 42],        # kind averages: an explicit list ...
     "rule": {"pc_1": {"min": -0.2, "max": 0.4},  # ... and/or a rule: column -> range
              "cluster": [0, 2]},                 #     or a list of allowed values
     "points": [[-1.2], [0.4]],         # kind latent_points: z points for the volumes stage
     "created_at": "2026-11-26T21:00:00+00:00",
     "note": "free text"}

The ``select`` stage reads ``kind: averages`` files, the ``volumes`` stage
``kind: latent_points`` ones; the dashboard writes both.  Names are validated
(never joined blindly into a path), so no name can reach outside the folder;
the stages accept selection files only from the workspace's ``selections/``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from spicompute.errors import InputError, ParameterError

log = logging.getLogger("spicompute.selections")

#: the folder of selection files, relative to the workspace (the folder the stages run in):
#: DVC tracks it, so a selection outside it would change results without DVC noticing
FOLDER = "selections"

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KINDS = ("averages", "latent_points")


def validate_name(name: str) -> str:
    """The name if it is a safe file stem, else ValueError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name.endswith(".json") or ".." in name:
        raise ValueError(f"selection name {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                         "starting with a letter or digit")
    return name


def selection_path(folder: str | Path, name: str) -> Path:
    return Path(folder) / f"{validate_name(name)}.json"


def _workspace_folder() -> Path:
    return (Path.cwd() / FOLDER).resolve()


def confined_file(value, param: str) -> Path:
    """``value`` as a selection file inside the workspace's ``selections/``; ParameterError otherwise.

    Symbolic links are resolved first, so a link cannot lead outside.
    """
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(param, f"must be a path {FOLDER}/<name>.json, got {value!r}")
    path = Path(value)
    resolved = path.resolve() if path.is_absolute() else (Path.cwd() / path).resolve()
    if resolved.parent != _workspace_folder() or resolved.suffix != ".json":
        raise ParameterError(param, f"must name a file {FOLDER}/<name>.json of the workspace (the folder DVC "
                                    f"tracks), got {value!r}")
    try:
        validate_name(resolved.stem)
    except ValueError as exc:
        raise ParameterError(param, str(exc)) from None
    return path


def confined_folder(value, param: str) -> Path:
    """``value`` if it is the workspace's ``selections/`` folder; ParameterError otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(param, f"must be the folder {FOLDER!r}, got {value!r}")
    path = Path(value)
    resolved = path.resolve() if path.is_absolute() else (Path.cwd() / path).resolve()
    if resolved != _workspace_folder():
        raise ParameterError(param, f"must be the workspace's {FOLDER}/ folder (the folder DVC tracks), "
                                    f"got {value!r}")
    return path


def integer_ids(values, source) -> list[int]:
    """Sorted unique average ids; InputError naming ``source`` unless every value is an integer."""
    out = set()
    for v in values:
        if isinstance(v, (bool, np.bool_)):
            raise InputError(source, "average_ids", f"must be integers, got {v!r}")
        if isinstance(v, (int, np.integer)):
            out.add(int(v))
        elif isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
            out.add(int(v))
        else:
            raise InputError(source, "average_ids", f"must be integers, got {v!r}")
    return sorted(out)


def parse_selection(payload, source) -> dict:
    """Validate a selection document; InputError naming the file and field otherwise."""
    if not isinstance(payload, dict):
        raise InputError(source, None, "a selection must be a JSON object")
    try:
        validate_name(payload.get("name", ""))
    except ValueError as exc:
        raise InputError(source, "name", str(exc)) from None
    kind = payload.get("kind", "averages")
    if kind not in KINDS:
        raise InputError(source, "kind", f"must be one of {list(KINDS)}, got {kind!r}")
    out = {"name": payload["name"], "kind": kind, "created_at": str(payload.get("created_at", "")),
           "note": str(payload.get("note", ""))}
    if kind == "averages":
        ids = payload.get("average_ids")
        rule = payload.get("rule")
        if ids is None and rule is None:
            raise InputError(source, "average_ids", "an averages selection needs average_ids or a rule")
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise InputError(source, "average_ids", "must be a list of integers")
            out["average_ids"] = sorted(set(ids))
        if rule is not None:
            if not isinstance(rule, dict):
                raise InputError(source, "rule", "must map column names to [min, max] or a list of values")
            for col, cond in rule.items():
                ok_range = isinstance(cond, dict) and set(cond) <= {"min", "max"} and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in cond.values())
                ok_list = isinstance(cond, list) and all(isinstance(v, (int, float, str)) for v in cond)
                if not (ok_range or ok_list):
                    raise InputError(source, f"rule.{col}",
                                     'must be {"min": a, "max": b} or a list of allowed values')
            out["rule"] = rule
    else:
        pts = payload.get("points")
        try:
            arr = np.asarray(pts, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(source, "points", "must be a list of equal-length number lists") from None
        if arr.ndim != 2 or arr.shape[0] == 0 or not np.all(np.isfinite(arr)):
            raise InputError(source, "points", "must be a non-empty list of finite [z_1, ..., z_d] points")
        out["points"] = arr.tolist()
    return out


def read_selection(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "selection file not found")
    try:
        payload = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, None, f"not valid JSON ({exc.__class__.__name__})") from None
    return parse_selection(payload, path)


def list_selections(folder: str | Path, kind: str | None = None) -> list[dict]:
    """Every valid selection in ``folder`` (sorted by name), optionally of one kind."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            sel = read_selection(path)
        except InputError as exc:  # one bad file must not hide (or block) the others
            log.warning("skipping selection %s", " ".join(str(exc).split()))
            continue
        if kind is None or sel["kind"] == kind:
            out.append(sel)
    return out


def write_selection(folder: str | Path, name: str, *, kind: str = "averages", average_ids=None,
                    rule: dict | None = None, points=None, note: str = "", overwrite: bool = False) -> Path:
    """Validate and write ``folder/<name>.json`` atomically; returns the path."""
    from spicompute.io.provenance import write_json_atomic

    path = selection_path(folder, name)
    if path.exists() and not overwrite:
        raise FileExistsError(f"selection {name!r} exists")
    payload = {"name": name, "kind": kind, "note": str(note),
               "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if average_ids is not None:
        payload["average_ids"] = integer_ids(average_ids, path)
    if rule is not None:
        payload["rule"] = rule
    if points is not None:
        payload["points"] = np.asarray(points, dtype=float).tolist()
    parse_selection(payload, path)
    write_json_atomic(path, payload)
    return path


def apply_rule(table: pd.DataFrame, rule: dict, source="rule") -> np.ndarray:
    """(N,) bool: rows satisfying every condition of a rule."""
    keep = np.ones(len(table), bool)
    for col, cond in rule.items():
        if col not in table.columns:
            raise InputError(source, f"rule.{col}", f"no such column (have {', '.join(map(str, table.columns))})")
        values = table[col].to_numpy()
        if isinstance(cond, dict):
            keep &= (values >= cond.get("min", -np.inf)) & (values <= cond.get("max", np.inf))
        else:
            keep &= np.isin(values, cond)
    return keep


def members(table: pd.DataFrame, selection: dict) -> np.ndarray:
    """(N,) bool: rows of a per-average table in an averages selection."""
    keep = np.ones(len(table), bool)
    if "average_ids" in selection:
        keep &= np.isin(table["average_id"].to_numpy(), selection["average_ids"])
    if "rule" in selection:
        keep &= apply_rule(table, selection["rule"], selection["name"])
    return keep
