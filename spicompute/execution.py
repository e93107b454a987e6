"""Where the heavy stages run: in-process, a local Dask cluster, or an existing scheduler.

Every data-parallel stage (``classify2d``, ``ccmatrix``, ``orient``) takes a
``scheduler`` parameter with one convention:

* ``""`` -- in-process (no Dask);
* ``"local:N"`` -- a Dask ``LocalCluster`` of N worker processes (one thread
  each), started and stopped by the stage;
* anything else -- the address of a running Dask scheduler
  (``tcp://host:8786``, ``tls://...``), e.g. one started on a SLURM cluster by
  :func:`slurm_cluster` / ``python -m spicompute.execution slurm`` (docs/scaling.md).

The results do not depend on where the work runs (see each stage's docs for
bitwise vs. float-tolerance equality).

SLURM: :func:`slurm_cluster` builds a ``dask_jobqueue.SLURMCluster`` from a
few documented settings (:class:`SlurmSettings`); each SLURM job runs Dask
worker processes that connect back to the scheduler, whose address the user
passes to a stage, e.g. ``dvc exp run -S classify2d.scheduler=tcp://10.0.0.5:8786``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

from spicompute.errors import ParameterError, one_line
from spicompute.params import validate_scheduler  # noqa: F401  (re-exported)


def local_workers(scheduler: str) -> int:
    """N of ``local:N``; 0 for "" or an address."""
    if not scheduler.startswith("local:"):
        return 0
    return int(scheduler.partition(":")[2])


def worker_threads(scheduler: str) -> int:
    """Threads per worker for BLAS/torch: cores / N on ``local:N`` (no oversubscription), 0 (leave as is)
    on a remote scheduler, whose workers were sized by whoever started them."""
    n = local_workers(scheduler)
    return max(1, (os.cpu_count() or 1) // n) if n else 0


#: glibc allocator settings (bytes) for the compute processes: the CLI (every stage, in-process) and Dask
#: workers.  The stages allocate large temporaries in every block (likelihood blocks of ~30 MB, the
#: (P, R*K) model matrices of ~160 MB, gather outputs of ~1 MB); glibc mmaps every allocation over its
#: mmap threshold and unmaps it on release, and trims the heap top beyond its trim threshold, so the
#: pages of such a temporary are faulted in (and zeroed by the kernel) again at every allocation.
#: Dask's nanny exports ``MALLOC_TRIM_THRESHOLD_=65536`` to every worker, and setting any threshold
#: switches glibc's dynamic mmap threshold off, so every array over 128 KiB was mmap-ed there (one
#: classify2d iteration at 50,000 frames: 1.07 s instead of 0.72 s in-process).  Measured on Dragonfly's
#: 30,000-frame file, one E+M step (docs/scaling.md, 2026-12-05): a full iteration 2.94 s with glibc's
#: defaults, 3.46 s at glibc's dynamic end points (32 MiB / 64 MiB), 2.45-2.58 s at 256 MiB / 1 GiB; a
#: pruned one 0.93 / 0.97 / 0.78-0.81 s; the whole 10-iteration run 21.4 -> 17.7 s.  The cost: up to
#: ``trim`` bytes of freed memory stay mapped in the process, and the peak RSS of a classify2d run
#: grew 12 % (the streamed-memory test measures it through the CLI).  A stage process exits when the
#: stage ends; a Dask worker lives on between tasks and its nanny counts what it keeps as unmanaged
#: memory, so workers trim beyond 64 MiB (1-4 % slower per step than 1 GiB, measured as above).
MALLOC_MMAP_THRESHOLD = 256 * 2**20
MALLOC_TRIM_THRESHOLD = 1 * 2**30
WORKER_TRIM_THRESHOLD = 64 * 2**20


def tune_malloc(mmap_threshold: int = MALLOC_MMAP_THRESHOLD, trim_threshold: int = MALLOC_TRIM_THRESHOLD) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` / ``M_TRIM_THRESHOLD`` in this process (process-wide: the CLI calls
    it once before a stage runs, Dask workers through a plugin); False where the C library is not glibc
    (macOS, musl: nothing to do)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, int(mmap_threshold))) and bool(mallopt(m_trim_threshold, int(trim_threshold)))


def heap_stats() -> dict | None:
    """glibc's own account of this process's allocator (``mallinfo2``): ``mmapped`` bytes held in
    mmap-ed chunks and ``free_kept`` bytes freed but kept in the heap; None where the C library is not
    glibc >= 2.33.  What :func:`tune_malloc` changes is visible here: a large array served from the
    heap instead of mmap, and its memory kept for the next allocation after it is freed."""
    import ctypes
    import ctypes.util

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return {"mmapped": int(info.hblkhd), "free_kept": int(info.fordblks)}


def _malloc_plugin():
    """A Dask ``WorkerPlugin`` running :func:`tune_malloc` on every worker, present and future."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class TuneMalloc(WorkerPlugin):
        name = "spicompute-tune-malloc"

        def setup(self, worker):
            tune_malloc(trim_threshold=WORKER_TRIM_THRESHOLD)

    return TuneMalloc()


#: seconds to reach a scheduler before the stage gives up (a one-line error naming ``<stage>.scheduler``)
CONNECT_TIMEOUT_S = 60.0
#: seconds a stage waits with work pending and no worker connected before it fails; workers that died
#: (or SLURM jobs that have not started yet) otherwise leave it waiting for ever.  Environment override:
#: ``SPICOMPUTE_DASK_NO_WORKER_TIMEOUT`` (seconds).
NO_WORKER_TIMEOUT_S = 300.0


def _no_worker_timeout() -> float:
    raw = os.environ.get("SPICOMPUTE_DASK_NO_WORKER_TIMEOUT", "")
    try:
        return float(raw) if raw else NO_WORKER_TIMEOUT_S
    except ValueError:
        raise ParameterError("SPICOMPUTE_DASK_NO_WORKER_TIMEOUT", f"must be a number of seconds, got {raw!r}") from None


def completed_results(client, futures, name: str = "scheduler", poll_s: float = 1.0):
    """Yield ``(index, result)`` for each of ``futures`` as it finishes, releasing it, with the ways a
    cluster fails turned into one-line :class:`ParameterError` errors naming ``name``:

    * the scheduler goes away mid-stage (its futures are cancelled);
    * a task brought down several workers in turn (Dask's ``KilledWorker``: it is retried on another
      worker up to ``distributed.scheduler.allowed-failures`` times first -- a single killed worker
      costs only the re-run of its tasks);
    * no worker is connected for :data:`NO_WORKER_TIMEOUT_S` while work is pending.

    An exception raised by the task itself propagates unchanged.  The caller writes its outputs only
    after the last result, so a failure leaves nothing half-written.
    """
    from distributed import wait

    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover - older distributed
        from distributed import KilledWorker

    cancelled = _cancelled_errors()
    address = getattr(client, "scheduler", None)
    address = getattr(address, "address", "") or "the scheduler"
    limit = _no_worker_timeout()
    lost = _lost_scheduler(name, address, "it stopped or the network failed")
    pending = dict(enumerate(futures))
    idle_since = None
    while pending:
        try:
            done, _ = wait(list(pending.values()), timeout=poll_s, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        except cancelled:
            raise lost from None
        for i in [i for i, f in pending.items() if f in done]:
            fut = pending.pop(i)
            try:
                result = fut.result()
            except cancelled:
                raise lost from None
            except KilledWorker as exc:
                raise ParameterError(name, f"a task died with {one_line(exc, 160)} on several workers in turn "
                                           "(out of memory? see the worker logs); nothing was written") from None
            fut.release()
            yield i, result
        if done or not pending:
            idle_since = None
            continue
        if client.status not in ("running", "connecting", "newly-created"):
            raise lost
        if client.scheduler_info().get("workers"):
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > limit:
            raise ParameterError(name, f"no Dask worker connected to {address} for {limit:.0f} s with work "
                                       "pending (workers died or never started); nothing was written")


def gather(client, futures, name: str = "scheduler") -> list:
    """The results of ``futures`` in order (:func:`completed_results` for the failures)."""
    out = [None] * len(futures)
    for i, result in completed_results(client, futures, name):
        out[i] = result
    return out


@contextmanager
def dask_client(scheduler: str, name: str = "scheduler"):
    """Context manager yielding a ``dask.distributed.Client`` for ``scheduler`` (None for "").

    A ``local:N`` cluster is started here and shut down on exit; a remote
    scheduler is only connected to (its workers stay up for the next stage).
    Every worker gets :func:`tune_malloc` (a worker plugin, so workers that
    join later get it too).
    """
    scheduler = validate_scheduler(name, scheduler)
    if not scheduler:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    cluster = None
    if local_workers(scheduler):
        cluster = LocalCluster(n_workers=local_workers(scheduler), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except Exception as exc:  # unreachable address, timeout, refused
            raise ParameterError(name, f"cannot reach the Dask scheduler {scheduler!r} ({one_line(exc, 200)})") from None
    try:
        client.register_plugin(_malloc_plugin())
        yield client
    except ParameterError:
        raise
    except Exception as exc:
        if _lost(client, exc):  # any call (scatter, submit, gather) after the scheduler went away
            raise _lost_scheduler(name, repr(scheduler), one_line(exc, 120)) from None
        raise
    finally:
        try:
            client.close(timeout=5)
        except Exception:  # a dead scheduler: nothing to close politely
            pass
        if cluster is not None:
            cluster.close()


def _cancelled_errors() -> tuple[type, ...]:
    """The exceptions of futures cancelled because the scheduler went away."""
    from distributed.client import FutureCancelledError

    try:
        from distributed.client import FuturesCancelledError
    except ImportError:  # pragma: no cover - older distributed
        return (FutureCancelledError,)
    return FutureCancelledError, FuturesCancelledError


def _lost_scheduler(name: str, address: str, detail: str) -> ParameterError:
    return ParameterError(name, f"lost the Dask scheduler {address} mid-stage ({detail}); nothing was "
                                "written, re-run the stage")


def _lost(client, exc: Exception) -> bool:
    """Did ``exc`` come from losing the scheduler (not from the stage's own work)?"""
    from distributed.comm.core import CommClosedError

    if isinstance(exc, (CommClosedError, *_cancelled_errors())):
        return True
    return isinstance(exc, OSError) and client.status != "running"


def resolve_device(device, name: str = "device") -> str:
    """The torch device of a stage: ``auto`` (or empty) -> ``cuda`` when torch sees a GPU, else ``cpu``;
    ``cuda``/``cuda:N`` without a GPU is a :class:`ParameterError` naming ``name`` (the stage's
    ``<stage>.device``)."""
    import torch

    if device in ("", "auto", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(name, f"{device!r} requested but no CUDA device is present")
    return str(device)


def n_workers(client) -> int:
    """Workers currently connected to ``client``'s scheduler (at least 1)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


# ----------------------------------------------------------------------------- SLURM
@dataclass
class SlurmSettings:
    """One SLURM job = one Dask worker node.

    queue : SLURM partition (``#SBATCH -p``), e.g. ``maxcpu`` / ``upex``.
    cores : cores per job (``--cpus-per-task``); the job runs ``processes``
        Dask worker processes sharing them (``cores / processes`` threads each).
    memory : memory per job, e.g. ``"64GB"`` (``--mem``); split between processes.
    walltime : ``HH:MM:SS`` per job (``-t``); EMC resumes from checkpoints, so a job
        ending mid-stage costs at most one iteration when it is re-run.
    processes : Dask worker processes per job (1 suits the torch/BLAS-threaded kernels).
    account : ``-A`` account, or None.
    job_extra : further ``#SBATCH`` lines, e.g. ``["--constraint=EPYC", "--gres=gpu:1"]``.
    job_script_prologue : shell lines run before the worker starts (``module load``, venv activation).
    local_directory : worker scratch space on the node (spilled data).
    interface : network interface for the workers and scheduler (e.g. ``ib0``), or None.
    python : interpreter of the workers (default: this one, so the same venv is used).
    """

    queue: str = "all"
    cores: int = 16
    memory: str = "64GB"
    walltime: str = "04:00:00"
    processes: int = 1
    account: str | None = None
    job_extra: list[str] = field(default_factory=list)
    job_script_prologue: list[str] = field(default_factory=list)
    local_directory: str | None = None
    interface: str | None = None
    python: str | None = None

    def validate(self) -> "SlurmSettings":
        p = "slurm."
        if not isinstance(self.queue, str) or not self.queue:
            raise ParameterError(p + "queue", f"must be a partition name, got {self.queue!r}")
        for name in ("cores", "processes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ParameterError(p + name, f"must be an integer >= 1, got {v!r}")
        if self.processes > self.cores:
            raise ParameterError(p + "processes", f"{self.processes} processes need >= as many cores, got {self.cores}")
        if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", str(self.memory)):
            raise ParameterError(p + "memory", f"must look like '64GB' or '500MiB', got {self.memory!r}")
        if not re.fullmatch(r"(\d+-)?\d{1,3}:\d\d(:\d\d)?", str(self.walltime)):
            raise ParameterError(p + "walltime", f"must be [D-]HH:MM[:SS], got {self.walltime!r}")
        for name in ("job_extra", "job_script_prologue"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
                raise ParameterError(p + name, f"must be a list of strings, got {v!r}")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "SlurmSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ParameterError(f"slurm.{unknown[0]}", "unknown parameter")
        return cls(**d).validate()


def slurm_cluster(settings: SlurmSettings, **extra):
    """A ``dask_jobqueue.SLURMCluster`` for ``settings`` (no job is submitted until ``scale``).

    ``extra`` goes to ``SLURMCluster`` unchanged (e.g. ``scheduler_options``).
    Its ``job_script()`` is the sbatch script each worker job runs;
    ``cluster.scale(jobs=n)`` submits n jobs and ``cluster.scheduler_address``
    is what a stage's ``scheduler`` parameter takes.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:  # pragma: no cover - installed with the project
        raise ParameterError("slurm", "needs dask-jobqueue (pip install dask-jobqueue)") from exc
    s = settings.validate()
    kw = dict(queue=s.queue, cores=s.cores, memory=s.memory, walltime=s.walltime,
              processes=s.processes, account=s.account, job_extra_directives=list(s.job_extra),
              job_script_prologue=list(s.job_script_prologue), python=s.python or sys.executable,
              local_directory=s.local_directory, interface=s.interface)
    if "scheduler_options" not in extra:
        extra["scheduler_options"] = {"dashboard_address": ":0"}
    return SLURMCluster(**{k: v for k, v in kw.items() if v is not None}, **extra)


def main(argv=None) -> int:
    """``python -m spicompute.execution slurm ...``: start workers on SLURM, print the address, wait.

    Keep it running (tmux/screen or a small SLURM job of its own) while the
    stages run; Ctrl-C cancels the worker jobs.  ``--dry-run`` prints the
    job script and exits.
    """
    ap = argparse.ArgumentParser(prog="python -m spicompute.execution",
                                 description="start Dask workers on SLURM for the spicompute stages")
    sub = ap.add_subparsers(dest="kind", required=True)
    sl = sub.add_parser("slurm", help="SLURMCluster via dask-jobqueue")
    sl.add_argument("--queue", default=SlurmSettings.queue)
    sl.add_argument("--cores", type=int, default=SlurmSettings.cores)
    sl.add_argument("--memory", default=SlurmSettings.memory)
    sl.add_argument("--walltime", default=SlurmSettings.walltime)
    sl.add_argument("--processes", type=int, default=SlurmSettings.processes)
    sl.add_argument("--account", default=None)
    sl.add_argument("--job-extra", action="append", default=[], help="extra #SBATCH option (repeatable)")
    sl.add_argument("--prologue", action="append", default=[], help="shell line before the worker (repeatable)")
    sl.add_argument("--interface", default=None)
    sl.add_argument("--local-directory", default=None)
    sl.add_argument("--jobs", type=int, default=2, help="SLURM jobs (worker nodes) to submit")
    sl.add_argument("--dry-run", action="store_true", help="print the job script and exit")
    args = ap.parse_args(argv)
    settings = SlurmSettings(queue=args.queue, cores=args.cores, memory=args.memory, walltime=args.walltime,
                             processes=args.processes, account=args.account, job_extra=args.job_extra,
                             job_script_prologue=args.prologue, interface=args.interface,
                             local_directory=args.local_directory)
    try:
        cluster = slurm_cluster(settings)
    except ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(cluster.job_script())
        cluster.close()
        return 0
    cluster.scale(jobs=args.jobs)
    print(cluster.scheduler_address, flush=True)
    print(f"# {args.jobs} SLURM jobs submitted; pass the address above as <stage>.scheduler. Ctrl-C stops.",
          file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
