"""Runs: the workspace, every DVC experiment and the git commits with results.

Read through DVC's Python API only (``dvc.api.exp_show``, ``params_show``,
``metrics_show`` and ``DVCFileSystem(rev=…)``); nothing is re-run.  An
output of a revision is copied out of the DVC cache (or git) once into
``<repo>/.dvc/tmp/dashboard/<rev>/<path>`` (DVC ignores its tmp folder), so
every loader works on plain local files and revision sha's make immutable
cache keys.
"""

from __future__ import annotations

import functools
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

WORKSPACE = "workspace"


@dataclass(frozen=True)
class Run:
    """One browsable run: ``rev`` is "workspace" or a full git/experiment sha."""

    name: str
    rev: str
    kind: str  # "workspace", "commit" or "experiment"
    created: str = ""
    parent: str = ""

    @property
    def label(self) -> str:
        short = "" if self.rev == WORKSPACE else f" ({self.rev[:7]})"
        return f"{self.name}{short}"


def is_dvc_repo(repo: str | Path) -> bool:
    return (Path(repo) / ".dvc").is_dir()


def list_runs(repo: str | Path, num: int = 5) -> list[Run]:
    """The workspace, then each of the last ``num`` commits and its experiments.

    Returns just the workspace when ``repo`` is not a DVC project.
    """
    runs = [Run("workspace", WORKSPACE, "workspace")]
    if not is_dvc_repo(repo):
        return runs
    import dvc.api
    from dvc.repo import Repo

    rows = dvc.api.exp_show(repo=str(repo), num=num)
    with Repo(str(repo)) as r:
        scm = r.scm
        for row in rows:
            rev, typ, exp = row.get("rev"), row.get("typ"), row.get("Experiment")
            if rev in (None, WORKSPACE) or typ not in ("baseline", "branch_base",
                                                       "branch_commit", "commit"):
                continue
            try:
                sha = scm.resolve_rev(rev)
            except Exception:  # a queued/failed experiment without a commit: not browsable
                continue
            created = str(row.get("Created") or "")
            if typ == "baseline":
                runs.append(Run(str(rev), sha, "commit", created))
            else:
                runs.append(Run(str(exp or rev), sha, "experiment", created,
                                str(row.get("parent") or "")))
    seen, unique = set(), []
    for run in runs:
        if run.rev not in seen:
            seen.add(run.rev)
            unique.append(run)
    return unique


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(tree, list) and all(isinstance(v, (int, float)) for v in tree) and len(tree) <= 8:
        out[prefix[:-1]] = tuple(tree)
    elif isinstance(tree, (int, float, str, bool)) or tree is None:
        out[prefix[:-1]] = tree
    return out


def params_of(repo: str | Path, rev: str) -> dict:
    """Flattened params (``section.key`` -> value) of a run; {} if unreadable."""
    import dvc.api

    try:
        return _flatten(dvc.api.params_show(repo=str(repo), rev=None if rev == WORKSPACE else rev))
    except Exception:
        return {}


def metrics_of(repo: str | Path, rev: str) -> dict:
    """Flattened metrics (``file:key.sub`` -> value) of a run; {} if none could be read."""
    import dvc.api

    try:
        tree = dvc.api.metrics_show(repo=str(repo), rev=None if rev == WORKSPACE else rev)
    except Exception:
        return {}
    out = {}
    for key, value in _flatten(tree).items():
        if isinstance(value, tuple):
            continue
        out[key] = value
    return out


def _equal(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _text(v) -> str:
    """A parameter or metric value as text, floats to 4 significant digits."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def diff(a: dict, b: dict) -> pd.DataFrame:
    """Keys whose values differ between two flat dicts: columns key, a, b (and change)."""
    rows = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if not _equal(va, vb):
            change = None
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)) \
                    and not isinstance(va, bool) and not isinstance(vb, bool):
                change = vb - va
            rows.append({"key": key, "a": "—" if va is None else _text(va),
                         "b": "—" if vb is None else _text(vb),
                         "change": None if change is None else float(f"{change:.4g}")})
    return pd.DataFrame(rows, columns=["key", "a", "b", "change"])


KEY_METRICS = ("silhouette", "explained_variance_total", "cc_offdiag_mean", "best_val_loss",
               "best_cc_mean", "n_averages")


def metric(values: dict, key: str):
    """A metric by its name: ``key`` itself or ``<file>:key`` (DVC prefixes names
    that occur in several metrics files); None if absent."""
    if key in values:
        return values[key]
    for k, v in values.items():
        if k.endswith(":" + key):
            return v
    return None


def runs_table(repo: str | Path, runs: list[Run], params: dict[str, dict],
               metrics: dict[str, dict]) -> pd.DataFrame:
    """One row per run: name, kind, date, params changed against the first
    commit (the baseline), and the key metrics present in any run."""
    base = next((r for r in runs if r.kind == "commit"), runs[0])
    base_params = params.get(base.rev, {})
    keys = [k for k in KEY_METRICS if any(metric(metrics.get(r.rev, {}), k) is not None
                                          for r in runs)]
    if not keys:  # fall back to whatever scalar metrics exist
        seen = []
        for r in runs:
            seen += [k for k, v in metrics.get(r.rev, {}).items()
                     if isinstance(v, (int, float)) and k not in seen]
        keys = seen[:6]
    rows = []
    for run in runs:
        p = params.get(run.rev, {})
        changed = diff(base_params, p)
        row = {"run": run.label, "kind": run.kind, "created": run.created,
               "changed params": ", ".join(f"{k}={v}" for k, v in zip(changed["key"], changed["b"]))
               if run.rev != base.rev else "(baseline)"}
        for k in keys:
            v = metric(metrics.get(run.rev, {}), k)
            row[k] = float(f"{v:.4g}") if isinstance(v, float) else v
        rows.append(row)
    return pd.DataFrame(rows)


@functools.lru_cache(maxsize=8)
def _filesystem(repo: str, rev: str):
    """A DVCFileSystem per (repo, rev): creating one costs 0.1-0.2 s."""
    from dvc.api import DVCFileSystem

    return DVCFileSystem(repo, rev=rev)


def run_dir(repo: str | Path, rev: str) -> Path:
    """Local folder mirroring a run's outputs (the repo itself for the workspace)."""
    if rev == WORKSPACE:
        return Path(repo)
    if not rev.isalnum():
        raise ValueError(f"not a revision sha: {rev!r}")
    return Path(repo) / ".dvc" / "tmp" / "dashboard" / rev


def materialize(repo: str | Path, rev: str, relative: str) -> Path:
    """Local path of ``relative`` in a run, fetched from git/the DVC cache if needed.

    For the workspace the path is returned as is (it may not exist).  For a
    revision the file (or folder) is copied once; a path the revision lacks,
    or whose cache is not local, comes back as a non-existing path.
    """
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"not a path inside the project: {relative!r}")
    target = run_dir(repo, rev) / rel
    if rev == WORKSPACE or target.exists():
        return target
    if not target.parent.exists() and not run_dir(repo, rev).exists():
        prune(repo)
    try:
        fs = _filesystem(str(repo), rev)
        if not fs.exists(rel.as_posix()):
            return target
        tmp = target.with_name(target.name + ".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if fs.isdir(rel.as_posix()):
            fs.get(rel.as_posix(), str(tmp), recursive=True)
        else:
            fs.get_file(rel.as_posix(), str(tmp))
        tmp.rename(target)
    except Exception:  # cache not local (pull it), or an unreadable revision
        shutil.rmtree(target.with_name(target.name + ".part"), ignore_errors=True)
        Path(str(target) + ".part").unlink(missing_ok=True)
    return target


MAX_REVISIONS = 8


def prune(repo: str | Path, keep: int = MAX_REVISIONS - 1) -> list[str]:
    """Delete all but the ``keep`` most recently used revision folders of
    :func:`run_dir` (a bounded on-disk cache); returns the revisions removed."""
    base = Path(repo) / ".dvc" / "tmp" / "dashboard"
    if not base.is_dir():
        return []
    folders = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                     reverse=True)
    removed = []
    for p in folders[keep:]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
    return removed


def output_info(repo: str | Path, rev: str, relative: str) -> tuple[bool, int | None]:
    """(exists, size in bytes) of an output in a run, without copying it."""
    if rev == WORKSPACE:
        p = Path(repo) / relative
        return (p.exists(), p.stat().st_size if p.is_file() else None)
    try:
        fs = _filesystem(str(repo), rev)
        if not fs.exists(relative):
            return (False, None)
        size = fs.info(relative).get("size")
        return (True, int(size) if size is not None else None)
    except Exception:
        return (False, None)


HERE, NOT_IN_CACHE, NOT_PRODUCED = "here", "not in the local cache", "not produced"
PROBES = ("results/parts/embed.parquet", "results/parts/classify2d.parquet", "data/averages.h5",
          "data/frames.h5")


_READABLE: set = set()  # (repo, rev, path) found readable: a revision's outputs never change


def readable(repo: str, rev: str, relative: str) -> str:
    """Whether an output of a run can be read here: HERE, NOT_IN_CACHE (tracked at that
    revision, but its data is neither in the workspace nor in the local DVC cache) or
    NOT_PRODUCED (the revision has no such output).  Reads at most one byte; only a
    readable answer is remembered (a `dvc fetch` later turns the others readable)."""
    if (repo, rev, relative) in _READABLE:
        return HERE
    state = _readable(repo, rev, relative)
    if state == HERE and rev != WORKSPACE and len(_READABLE) < 4096:
        _READABLE.add((repo, rev, relative))
    return state


def _readable(repo: str, rev: str, relative: str) -> str:
    if rev == WORKSPACE:
        return HERE if (Path(repo) / relative).exists() else NOT_PRODUCED
    try:
        fs = _filesystem(str(repo), rev)
        if not fs.exists(relative):
            return NOT_PRODUCED
        if fs.isdir(relative):
            return HERE
        with fs.open(relative, "rb") as fh:
            fh.read(1)
        return HERE
    except Exception:  # the DVC cache lacks the file (dvc pull), or the revision is unreadable
        return NOT_IN_CACHE


def availability(repo: str | Path, run: Run) -> str:
    """The state of a run's outputs, by the first of PROBES its revision tracks."""
    states = [readable(str(repo), run.rev, p) for p in PROBES]
    return next((s for s in states if s != NOT_PRODUCED), NOT_PRODUCED)


def bring_command(run: Run, state: str) -> str:
    """The command that makes a run's outputs readable here ("" when they are)."""
    short = run.rev[:7]
    if state == HERE:
        return ""
    if state == NOT_IN_CACHE:
        if run.kind == "experiment":
            return f"dvc exp pull origin {run.name}"
        return "dvc fetch --all-commits"
    if run.kind == "experiment":
        return f"dvc exp apply {run.name} && dvc repro"
    return f"git checkout {short} && dvc repro"
