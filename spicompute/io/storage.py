"""One storage path for HDF5, torch and folder outputs.

Every byte of these outputs reaches the disk through Python's own ``write``
and ``close`` (:func:`write_bytes`), inside :func:`~spicompute.io.provenance.atomic_path`:
a full disk, a quota or a file size limit (ENOSPC / EDQUOT / EFBIG) is then
an :class:`~spicompute.errors.OutputError` ``cannot write <file>: ...`` with
the temporary removed and the previous output untouched.

HDF5 outputs of moderate size (volumes, phased densities, embeddings) are
built in memory (:func:`memory_output`) and written in one piece: HDF5's own
writer can crash the process when a flush fails at ``File.close()``, which
no Python code can turn into a message.  Torch files are serialised into a
buffer (:func:`torch_bytes`) so that the zip archive's member names are fixed
(``archive/...``) instead of following the temporary file's name: identical
weights give identical bytes.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

from spicompute.errors import InputError, OutputError
from spicompute.io.provenance import _alive, _write_failure, atomic_path

def write_bytes(path: str | os.PathLike, data) -> None:
    """Write ``data`` (bytes-like) atomically to ``path``; flushed and fsynced before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def memory_output(path: str | os.PathLike) -> Iterator[io.BytesIO]:
    """A buffer to write a file into (``h5py.File(buf, "w")``, ``torch.save(obj, buf)``);
    written to ``path`` atomically when the block ends without error.

    Memory: about the size of the file.
    """
    buf = io.BytesIO()
    yield buf
    write_bytes(path, buf.getbuffer())


def torch_bytes(obj) -> bytes:
    """``torch.save`` of ``obj`` into memory: the zip members are named ``archive/...``."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_torch(path: str | os.PathLike, obj) -> None:
    """Write a torch object (state dict, checkpoint) atomically with deterministic bytes."""
    write_bytes(path, torch_bytes(obj))


def load_torch(path: str | os.PathLike, what: str = "torch file"):
    """``torch.load(weights_only=True)`` on CPU, with one-line errors naming ``path``.

    A file holding arbitrary Python objects (a pickle that could run code) is
    refused without suggesting to turn that protection off.
    """
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's advice on pickle protocols: the error below says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(path, None, f"{what} not found") from None
    except IsADirectoryError:
        raise InputError(path, None, f"{what} expected, found a folder") from None
    except PermissionError:
        raise InputError(path, None, "permission denied") from None
    except pickle.UnpicklingError:
        raise InputError(path, None, f"refused: not a plain {what} (holds Python objects other than "
                                     "tensors, numbers and strings)") from None
    except Exception as exc:  # torn zip, foreign format
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(path, None, f"not a readable {what} ({first[:160]})") from None


#: ``.<name>.<pid>.<random>.tmp`` (atomic_path, staged_folder): the pid is the last number before
#: the random part, whatever digits the name itself holds
_TEMPORARY = re.compile(r"^\.(?:.+)\.(\d+)\.[A-Za-z0-9_]+\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete ``.<name>.<pid>.*.tmp`` files and folders in ``folder`` left by dead processes.

    Called when a stage starts, so that a run killed mid-write (whose
    temporaries no rename will ever claim) leaves nothing behind after the
    next run, even when that run writes no file of the same name.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(".*.tmp"):
        match = _TEMPORARY.match(tmp.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def staged_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` that replaces ``path`` when the block succeeds.

    For outputs that are folders (training curves): a failed run leaves the
    previous folder as it was.  The swap is two renames; between them a
    reader can find the folder missing, never half-written.
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(dest.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent))
    except OSError as exc:
        raise OutputError(dest, _write_failure(exc)) from exc
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.{os.getpid()}.old.tmp")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(dest, _write_failure(exc)) from exc
        raise
