"""glibc allocator settings: stage temporaries stay in the heap instead of being page-faulted again.

The stages allocate large temporaries block after block (likelihood blocks of ~30 MB, the ~160 MB
model matrices of classify2d); with glibc's defaults such arrays are mmap-ed and unmapped on release,
so every allocation faults its pages in again (17 % of a classify2d run on Dragonfly's file,
``spicompute.execution.MALLOC_MMAP_THRESHOLD``).  The CLI and Dask workers call ``tune_malloc``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# glibc's own account (spicompute.execution.heap_stats) while a 64 MiB array is alive and after it is
# freed, in a fresh process with glibc's defaults or tuned
CHILD = r"""
import json, sys
import numpy as np
from spicompute.execution import heap_stats, tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
out = []
for _ in range(3):
    a = np.ones(8 * 2**20)
    alive = heap_stats()
    del a
    freed = heap_stats()
    out.append(None if alive is None else {"mmapped_alive": alive["mmapped"], "kept_free": freed["free_kept"]})
print(json.dumps(out))
"""


def _account(mode: str) -> list:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_freed_large_arrays_without_page_faults():
    from spicompute.execution import heap_stats, tune_malloc

    if not tune_malloc() or heap_stats() is None:
        pytest.skip("C library is not glibc >= 2.33")
    default, tuned = _account("default"), _account("tuned")
    size = 64 * 2**20
    # glibc's defaults: a 64 MiB array is over the (at most 32 MiB) dynamic mmap threshold, so it is
    # mapped at every allocation and unmapped on release (its pages faulted in again next time)
    assert all(r["mmapped_alive"] >= size for r in default), default
    assert all(r["kept_free"] < size for r in default), default
    # tuned: it lives in the heap, and the freed block stays there for the next allocation
    assert all(r["mmapped_alive"] < size for r in tuned), tuned
    assert all(r["kept_free"] >= size for r in tuned), tuned


def test_the_cli_tunes_the_allocator_before_a_stage(monkeypatch, tmp_path, capsys):
    import spicompute.cli as cli

    calls = []
    monkeypatch.setattr(cli, "tune_malloc", lambda: calls.append(True) or True)
    rc = cli.main(["classify2d", "--params", str(tmp_path / "missing.yaml"), "--frames",
                   str(tmp_path / "missing.h5"), "--out", str(tmp_path / "averages.h5")])
    assert rc == 2 and calls == [True]
