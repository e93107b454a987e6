"""A Dask cluster failing under a stage: one-line errors naming ``<stage>.scheduler``, nothing written.

The scheduler and the workers run as separate processes here (``dask scheduler`` / ``dask worker``,
as on SLURM), so that the test can kill them:

* an unreachable address fails after the connect timeout;
* a scheduler killed mid-stage fails the stage at once (its futures are cancelled);
* workers that all died fail the stage after ``SPICOMPUTE_DASK_NO_WORKER_TIMEOUT`` instead of
  leaving it waiting for ever;
* one worker killed mid-task costs only the re-run of its task on another worker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from spicompute.cli import main
from spicompute.errors import ParameterError

distributed = pytest.importorskip("distributed")


class Cluster:
    """``dask scheduler`` + ``dask worker --nworkers n`` subprocesses (own process groups)."""

    def __init__(self, tmp_path, n_workers: int):
        self.file = tmp_path / "scheduler.json"
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(self.file),
             "--port", "0", "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=env)
        deadline = time.monotonic() + 60
        while not self.file.exists() or not self.file.read_text().strip():
            if time.monotonic() > deadline:
                self.close()
                pytest.fail("dask scheduler did not start")
            time.sleep(0.1)
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nworkers", str(n_workers),
             "--nthreads", "1", "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=env)
        with distributed.Client(self.address, timeout="60s") as c:
            c.wait_for_workers(n_workers, timeout=60)

    def kill_scheduler(self):
        os.killpg(self.scheduler.pid, signal.SIGKILL)

    def kill_workers(self):
        os.killpg(self.workers.pid, signal.SIGKILL)

    def close(self):
        for p in (getattr(self, "workers", None), self.scheduler):
            if p is not None and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


@pytest.fixture()
def cluster2(tmp_path):
    c = Cluster(tmp_path, 2)
    yield c
    c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_small_averages(path) -> None:
    import numpy as np
    from scipy.spatial.transform import Rotation
    from tests.landscape.test_commonlines import beamstop_valid, make_object, slices

    from spicompute.io.averages import AverageSet, write_averages

    rng = np.random.default_rng(1)
    imgs = slices(make_object(rng), Rotation.random(6, random_state=1)).astype(np.float32)
    weight = beamstop_valid(len(imgs)).astype(np.float32)
    m = len(imgs)
    write_averages(path, AverageSet(imgs * weight, weight, np.arange(m), np.zeros(m), np.arange(m),
                                    np.full(m, 30.0), 0.04, 0.2066))


def test_unreachable_scheduler_is_a_one_line_parameter_error(tmp_path, capsys, monkeypatch):
    import spicompute.execution as execution

    monkeypatch.setattr(execution, "CONNECT_TIMEOUT_S", 2.0)
    (tmp_path / "params.yaml").write_text(json.dumps({"ccmatrix": {"scheduler": f"tcp://127.0.0.1:{_free_port()}"}}))
    write_small_averages(tmp_path / "averages.h5")
    t = str(tmp_path)
    assert main(["ccmatrix", "--params", f"{t}/params.yaml", "-q", "--averages", f"{t}/averages.h5",
                 "--out", f"{t}/cc.h5", "--metrics", f"{t}/cc.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ccmatrix.scheduler" in err and "cannot reach" in err and "\n" not in err
    assert not (tmp_path / "cc.h5").exists() and not (tmp_path / "cc.json").exists()


@pytest.mark.parametrize("when", ["setup", "iterating"])
def test_scheduler_killed_mid_stage_fails_the_stage_and_writes_nothing(tmp_path, capsys, cluster2, monkeypatch,
                                                                       when):
    """Killed while the frames are being shipped, or between iterations (once a checkpoint exists)."""
    import spicompute.execution as execution
    from tests.emc2d.test_emc2d_data import make_frames

    from spicompute.io.frames import write_frames

    write_frames(tmp_path / "frames.h5", make_frames(n_frames=120, photons=200.0, seed=2)[0])
    # many short iterations: the stage is still iterating when the scheduler is killed
    (tmp_path / "params.yaml").write_text(json.dumps({"classify2d": {
        "n_models": 3, "n_rot": 8, "n_runs": 1, "max_iter": 2000, "min_iter": 2000, "tol": 0.0,
        "device": "cpu", "scheduler": cluster2.address}}))
    monkeypatch.setattr(execution, "CONNECT_TIMEOUT_S", 3.0)  # also the client's reconnection attempts
    checkpoints = tmp_path / "checkpoints"
    stop = threading.Event()

    def kill():
        if when == "setup":
            scatter = distributed.Client.scatter

            def scatter_then_die(self, *a, **k):
                cluster2.kill_scheduler()
                return scatter(self, *a, **k)

            monkeypatch.setattr(distributed.Client, "scatter", scatter_then_die)
            return
        while not stop.is_set() and not any(checkpoints.rglob("*.h5")):
            time.sleep(0.05)
        cluster2.kill_scheduler()

    killer = threading.Thread(target=kill)
    killer.start()
    if when == "setup":
        killer.join()
    t = str(tmp_path)
    try:
        rc = main(["classify2d", "--params", f"{t}/params.yaml", "--frames", f"{t}/frames.h5", "-q",
                   "--out", f"{t}/averages.h5", "--metrics", f"{t}/classify2d.json",
                   "--checkpoints", str(checkpoints)])
    finally:
        stop.set()
        killer.join()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert "classify2d.scheduler" in err[-1] and "lost the Dask scheduler" in err[-1]
    assert not (tmp_path / "averages.h5").exists() and not (tmp_path / "classify2d.json").exists()


def test_no_worker_left_fails_after_the_timeout(cluster2, monkeypatch):
    from spicompute.execution import gather

    monkeypatch.setenv("SPICOMPUTE_DASK_NO_WORKER_TIMEOUT", "3")
    with distributed.Client(cluster2.address) as client:
        futures = [client.submit(time.sleep, 30, pure=False) for _ in range(2)]
        time.sleep(0.5)
        cluster2.kill_workers()
        t0 = time.monotonic()
        with pytest.raises(ParameterError, match=r"orient\.scheduler.*no Dask worker connected .* for 3 s"):
            gather(client, futures, "orient.scheduler")
        assert time.monotonic() - t0 < 30


def test_one_killed_worker_costs_only_a_rerun(cluster2):
    """Dask re-runs the tasks of a killed worker elsewhere; the stage's gather just gets the results."""
    from spicompute.execution import gather

    with distributed.Client(cluster2.address) as client:
        pids = client.run(os.getpid)
        futures = [client.submit(sum, [i, 1], pure=False) for i in range(4)]
        slow = [client.submit(time.sleep, 2, pure=False) for _ in range(2)]
        time.sleep(0.5)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        assert gather(client, futures + slow, "ccmatrix.scheduler") == [1, 2, 3, 4, None, None]
