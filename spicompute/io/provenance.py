"""Atomic output files and provenance stamps.

Every output is written to a temporary name beside its destination and
renamed into place only when complete, so a failed stage never leaves a
half-written file that a later stage could mistake for a result.  Every HDF5
output carries the parameters and code version that made it -- but no
timestamp: identical science must hash identically, so that DVC can skip the
downstream stages of a re-run that changed nothing (the time of a run is in
``dvc.lock``'s history and the metrics files).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from spicompute import __version__
from spicompute.errors import OutputError, SpiError


#: fault injection (tests only): SIGKILL the process when the output of this file name is
#: complete under its temporary name, just before the rename
FAULT_ENV = "SPICOMPUTE_FAULT_KILL_BEFORE_RENAME"


def code_version() -> str:
    """The package version stamped into outputs.

    Not the git commit: a commit that leaves a stage's science unchanged must leave its
    outputs byte-identical, so that DVC skips the stages downstream.  Which code made
    an output is recorded by DVC (the md5 of every code dependency in ``dvc.lock``).
    """
    return __version__


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def provenance(stage: str, params: dict | None = None) -> dict:
    """Attributes that say which stage, parameters and code made a file."""
    return {
        "spicompute_stage": stage,
        "spicompute_version": code_version(),
        "spicompute_params": json.dumps(_jsonable(params or {}), sort_keys=True),
    }


def stamp(h5obj, stage: str, params: dict | None = None) -> None:
    """Write :func:`provenance` attributes on an h5py File or Group."""
    for key, value in provenance(stage, params).items():
        h5obj.attrs[key] = value


def stamped_params(h5obj) -> dict | None:
    """The parameters :func:`stamp` recorded on an HDF5 file or group, or None where there are none."""
    raw = h5obj.attrs.get("spicompute_params")
    try:
        params = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return params if isinstance(params, dict) else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename on success.

    On any exception the temporary file is removed and the destination is left
    untouched (an older complete file stays, a missing one stays missing).
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(dest)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(dest, _write_failure(exc)) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; outputs are shared with colleagues: honour the umask like open() does
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        if os.environ.get(FAULT_ENV) == dest.name:  # fault-injection tests: die at the worst moment
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp_path, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        # h5py reports a failed write as OSError, and the close that follows it as RuntimeError;
        # torch's zip writer says only "file write failed" (no errno): the cause is looked up
        if isinstance(exc, SpiError):
            raise
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "errno" in str(exc)):
            raise OutputError(dest, _write_failure(exc)) from exc
        if isinstance(exc, RuntimeError) and _TORCH_WRITE_FAILED.search(str(exc)):
            raise OutputError(dest, _write_failure(OSError(_likely_errno(dest), str(exc)))) from exc
        raise


_TORCH_WRITE_FAILED = re.compile(r"PytorchStreamWriter failed|file write failed|unexpected pos")


def _likely_errno(dest: Path) -> int:
    """The errno of a write that failed without one: file size limit, full disk, else EIO."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return errno.EFBIG
    with contextlib.suppress(OSError):
        st = os.statvfs(dest.parent)
        if st.f_bavail * st.f_frsize < 1 << 20:
            return errno.ENOSPC
    return errno.EIO


def _write_failure(exc: Exception) -> str:
    """A short reason for a failed write (HDF5 hides errno in a long message)."""
    code = getattr(exc, "errno", None)
    if code is None:
        match = re.search(r"errno = (\d+)", str(exc))
        code = int(match.group(1)) if match else None
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return f"{os.strerror(code)} (disk full, quota or file size limit)"
    if code is not None:
        return os.strerror(code)
    return " ".join(str(exc).split())[:200]


def _remove_stale_temporaries(dest: Path) -> None:
    """Delete temporaries of ``dest`` left by processes that no longer exist (e.g. killed)."""
    for tmp in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp"):
        pid = tmp.name[len(dest.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json_atomic(path: str | os.PathLike, payload: dict) -> None:
    """Write a JSON document (metrics, summaries) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=True) + "\n")
