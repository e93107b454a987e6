"""The data-parallel stages on a real Dask cluster (2 worker *processes*) give the in-process result;
the SLURM recipe (dask-jobqueue) builds the job script it documents.

Equality, and why:
* ccmatrix and orient: **bitwise**.  Both cut the work into the same blocks whichever way they run
  (ccmatrix: bands of block rows; orient: chunks of ``chunk`` orientations x ``average_chunk``
  averages, a task being a run of orientation chunks whose weighted sums the client adds chunk by
  chunk in the in-process order), and each block is the same float computation.
* classify2d: **bitwise for the same frame shards** (the in-process executor with ``n_shards=2`` sums
  the same two partial sums in the same order as the two Dask tasks), and to float tolerance
  (rtol 1e-4) against one unsharded pass, whose E/M sums add the frames in another order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from tests.emc2d.test_emc2d_data import make_frames  # noqa: E402
from tests.orient.test_orient import cube_slices, make_averages, noisy  # noqa: E402

from spicompute.cli import main  # noqa: E402
from spicompute.emc2d.run import EMCConfig, run_bootstrap  # noqa: E402
from spicompute.errors import ParameterError  # noqa: E402
from spicompute.io.averages import write_averages  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 single-threaded worker processes, reached by its tcp address."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c:
        yield c


@pytest.mark.slow
def test_classify2d_on_two_worker_processes(cluster):
    fs = make_frames(n_frames=240, photons=300.0, seed=3)[0]
    cfg = dict(n_models=3, n_rot=16, n_runs=2, subset_fraction=0.8, max_iter=3, min_iter=3,
               device="cpu", n_shards=2)
    local = run_bootstrap(fs, EMCConfig(**cfg))
    with distributed.Client(cluster.scheduler_address) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        remote = run_bootstrap(fs, EMCConfig(**cfg, scheduler=cluster.scheduler_address), client=client)
    assert np.array_equal(remote.models, local.models)
    assert np.array_equal(remote.occupancy, local.occupancy)
    for a, b in zip(remote.frames, local.frames):
        for key in ("index", "model", "rotation_deg", "scale"):
            assert np.array_equal(a[key], b[key]), key
    one = run_bootstrap(fs, EMCConfig(**{**cfg, "n_shards": 1}))
    np.testing.assert_allclose(remote.models, one.models, rtol=1e-4, atol=1e-5 * one.models.max())
    for a, b in zip(remote.frames, one.frames):
        assert np.mean(a["model"] == b["model"]) > 0.99


def test_streamed_classify2d_shards_are_read_by_the_workers(cluster, tmp_path):
    """Streamed shards travel as (file, rows): the worker processes read the frames themselves."""
    from spicompute.io.frames import write_frames
    from spicompute.io.stream import FrameFile

    fs = make_frames(n_frames=200, photons=200.0, seed=4)[0]
    write_frames(tmp_path / "frames.h5", fs, layout="sparse")
    cfg = dict(n_models=3, n_rot=12, n_runs=1, max_iter=2, min_iter=2, device="cpu", n_shards=2,
               block_frames=40)
    local = run_bootstrap(fs, EMCConfig(**cfg, stream=False))
    with distributed.Client(cluster.scheduler_address) as client:
        remote = run_bootstrap(FrameFile(tmp_path / "frames.h5"), EMCConfig(**cfg, stream=True), client=client)
    assert np.array_equal(remote.models, local.models)
    assert np.array_equal(remote.frames[0]["model"], local.frames[0]["model"])


def test_ccmatrix_stage_on_two_worker_processes(cluster, tmp_path):
    from tests.landscape.test_commonlines import beamstop_valid, make_object, slices
    from scipy.spatial.transform import Rotation

    from spicompute.landscape.commonlines import read_ccmatrix
    from spicompute.io.averages import AverageSet

    rng = np.random.default_rng(11)
    imgs = slices(make_object(rng), Rotation.random(14, random_state=4)).astype(np.float32)
    m = len(imgs)
    weight = beamstop_valid(m).astype(np.float32)
    avg = AverageSet(imgs * weight, weight, np.arange(m), np.zeros(m), np.arange(m),
                     rng.uniform(10, 50, m), 0.04, 0.2066)
    write_averages(tmp_path / "averages.h5", avg)
    out = {}
    for name, sched in (("local", ""), ("dask", cluster.scheduler_address)):
        (tmp_path / "params.yaml").write_text(json.dumps(
            {"ccmatrix": {"n_angles": 60, "block": 3, "band_blocks": 1, "scheduler": sched}}))
        assert main(["ccmatrix", "--params", str(tmp_path / "params.yaml"), "-q",
                     "--averages", str(tmp_path / "averages.h5"), "--out", str(tmp_path / f"{name}.h5"),
                     "--metrics", str(tmp_path / f"{name}.json")]) == 0
        out[name] = read_ccmatrix(tmp_path / f"{name}.h5")
    assert np.array_equal(out["dask"].cc, out["local"].cc)
    assert np.array_equal(out["dask"].angle_a, out["local"].angle_a)
    assert out["local"].cc.shape == (m, m) and np.ptp(out["local"].cc[np.triu_indices(m, 1)]) > 0.05


@pytest.fixture()
def keep_torch_threads():
    """orient.threads sets torch's (process-wide) thread count: restore it for later tests."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_orient_stage_on_two_worker_processes(cluster, tmp_path, keep_torch_threads):
    from spicompute.orient.quaternions import random_quaternions

    rng = np.random.default_rng(9)
    avg = make_averages(noisy(cube_slices(random_quaternions(10, rng)), 1e5, rng))
    write_averages(tmp_path / "averages.h5", avg)
    res = {}
    for name, sched in (("local", ""), ("dask", cluster.scheduler_address)):
        # the same torch threads per task as the single-threaded workers: float32 matrix products
        # split over more threads sum in another order
        (tmp_path / "params.yaml").write_text(json.dumps(
            {"orient": {"num_div": 6, "refine": True, "refine_iterations": 1, "average_chunk": 3,
                        "scheduler": sched, "threads": 1}}))
        t = str(tmp_path)
        assert main(["orient", "--params", f"{t}/params.yaml", "--averages", f"{t}/averages.h5",
                     "--out", f"{t}/{name}.parquet", "--h5", f"{t}/{name}.h5",
                     "--metrics", f"{t}/{name}.json", "-q"]) == 0
        with h5py.File(tmp_path / f"{name}.h5") as h5:
            res[name] = {k: h5[k][()] for k in ("best_cc", "mean_cc", "std_cc", "best_index", "quaternion")}
        res[name]["table"] = pd.read_parquet(tmp_path / f"{name}.parquet")
    for key in ("best_cc", "mean_cc", "std_cc", "best_index", "quaternion"):
        assert np.array_equal(res["dask"][key], res["local"][key]), key
    pd.testing.assert_frame_equal(res["dask"]["table"], res["local"]["table"], check_exact=True)
    assert np.all(res["local"]["table"]["gain"] > 1.2)  # real cubes were fitted


def test_orient_average_chunks_do_not_change_the_result():
    """In-process, any ``average_chunk`` gives the same numbers to float32 rounding (and the default
    one bitwise what a cluster gives, above)."""
    from spicompute.orient.fit import cube_reference, fit_orientations
    from spicompute.orient.sampling import fundamental_orientations
    from spicompute.orient.quaternions import random_quaternions

    rng = np.random.default_rng(2)
    avg = make_averages(noisy(cube_slices(random_quaternions(20, rng)), 1e5, rng))
    quats = fundamental_orientations(6)[0]
    a = fit_orientations(avg, cube_reference(42.0), quats, r_min=3, r_max=20, chunk=100)
    b = fit_orientations(avg, cube_reference(42.0), quats, r_min=3, r_max=20, chunk=100, average_chunk=7)
    np.testing.assert_allclose(b.best_cc, a.best_cc, rtol=1e-5)
    np.testing.assert_allclose(b.mean_cc, a.mean_cc, rtol=1e-5)
    assert np.mean(a.best_index == b.best_index) >= 0.95
    with pytest.raises(ParameterError, match="average_chunk"):
        fit_orientations(avg, cube_reference(42.0), quats, r_min=3, r_max=20, average_chunk=0)


def test_orient_split_over_orientations_is_bitwise_for_any_task_count(cluster, keep_torch_threads, monkeypatch):
    """Tasks are runs of orientation chunks (no slice computed twice); however many, the merged
    best / mean / spread equal the in-process scan bit for bit."""
    import torch

    from spicompute.orient import fit as orient_fit
    from spicompute.orient.quaternions import random_quaternions
    from spicompute.orient.sampling import fundamental_orientations

    torch.set_num_threads(1)
    rng = np.random.default_rng(5)
    avg = make_averages(noisy(cube_slices(random_quaternions(12, rng)), 1e5, rng))
    quats, weights = fundamental_orientations(6)
    kw = dict(r_min=3, r_max=20, chunk=37, average_chunk=5, weights=weights)
    ref = orient_fit.fit_orientations(avg, orient_fit.cube_reference(42.0), quats, **kw)
    spans = orient_fit._orientation_tasks(len(quats), 37, 3)
    assert spans[0][0] == 0 and spans[-1][1] == len(quats) and len(spans) == 3
    assert all(a[1] == b[0] and a[0] % 37 == 0 for a, b in zip(spans, spans[1:]))
    with distributed.Client(cluster.scheduler_address) as client:
        for per_worker in (1, 4, 50):
            monkeypatch.setattr(orient_fit, "DASK_TASKS_PER_WORKER", per_worker)
            got = orient_fit.fit_orientations(avg, orient_fit.cube_reference(42.0), quats, client=client,
                                              worker_threads=1, **kw)
            for key in ("best_cc", "mean_cc", "std_cc", "best_index", "gain"):
                assert np.array_equal(getattr(got, key), getattr(ref, key), equal_nan=True), (per_worker, key)
    assert np.all(ref.gain > 1.2)


def test_workers_get_the_allocator_settings(cluster):
    """dask_client registers a plugin that sets glibc's mmap/trim thresholds on every worker (Dask's
    nanny exports MALLOC_TRIM_THRESHOLD_, which makes glibc mmap every array over 128 KiB)."""
    from spicompute.execution import dask_client, tune_malloc

    assert tune_malloc() in (True, False)
    with dask_client(cluster.scheduler_address) as client:
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        heap = client.run(_large_array_in_heap)
    assert plugins and all("spicompute-tune-malloc" in p for p in plugins.values())
    # the setting took effect on every worker: a 64 MiB array comes from the heap, not from mmap
    assert heap and all(v in (True, None) for v in heap.values()), heap


def _large_array_in_heap():
    """On a worker: whether glibc served a 64 MiB array from its heap (None: not glibc >= 2.33)."""
    from spicompute.execution import heap_stats

    a = np.ones(8 * 2**20)
    stats = heap_stats()
    del a
    return None if stats is None else stats["mmapped"] < 64 * 2**20


@pytest.mark.parametrize("section", ["classify2d", "ccmatrix", "orient"])
@pytest.mark.parametrize("value", ["local:0", "local:two", "not an address", 7])
def test_bad_scheduler_is_a_parameter_error(tmp_path, capsys, section, value):
    (tmp_path / "params.yaml").write_text(json.dumps({section: {"scheduler": value}}))
    t = str(tmp_path)
    args = [section, "--params", f"{t}/params.yaml", "-q", "--averages" if section != "classify2d" else "--frames",
            f"{t}/missing.h5"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"{section}.scheduler" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- SLURM (dry run)
def test_slurm_job_script_from_settings():
    pytest.importorskip("dask_jobqueue")
    from spicompute.execution import SlurmSettings, slurm_cluster

    settings = SlurmSettings.from_dict({
        "queue": "maxcpu", "cores": 32, "memory": "128GB", "walltime": "12:00:00", "processes": 2,
        "account": "exfel", "job_extra": ["--constraint=EPYC"],
        "job_script_prologue": ["source /software/spi/venv/bin/activate"]})
    cluster = slurm_cluster(settings)
    try:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tcp://")
    finally:
        cluster.close()
    lines = script.splitlines()
    assert "#SBATCH -p maxcpu" in lines
    assert "#SBATCH -A exfel" in lines
    assert "#SBATCH --cpus-per-task=32" in lines
    assert "#SBATCH -t 12:00:00" in lines
    assert "#SBATCH --constraint=EPYC" in lines
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    start = next(i for i, line in enumerate(lines) if "distributed.cli.dask_worker" in line)
    assert lines.index("source /software/spi/venv/bin/activate") < start
    worker = lines[start]
    assert sys.executable in worker                       # the workers run this venv's Python
    assert "--nworkers 2" in worker and "--nthreads 16" in worker  # 32 cores over 2 processes


@pytest.mark.parametrize("bad, name", [({"cores": 0}, "cores"), ({"memory": "lots"}, "memory"),
                                       ({"walltime": "forever"}, "walltime"), ({"queu": "x"}, "queu"),
                                       ({"cores": 2, "processes": 4}, "processes"),
                                       ({"job_extra": "--exclusive"}, "job_extra")])
def test_slurm_settings_are_validated(bad, name):
    from spicompute.execution import SlurmSettings

    with pytest.raises(ParameterError, match=f"slurm.{name}"):
        SlurmSettings.from_dict(bad)


def test_slurm_cli_dry_run_prints_the_job_script(capsys):
    pytest.importorskip("dask_jobqueue")
    from spicompute.execution import main as cluster_main

    assert cluster_main(["slurm", "--queue", "upex", "--cores", "8", "--memory", "16GB", "--walltime",
                         "01:00:00", "--job-extra=--gres=gpu:1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH -p upex" in out and "#SBATCH --gres=gpu:1" in out and "#SBATCH -t 01:00:00" in out
    assert cluster_main(["slurm", "--memory", "lots", "--dry-run"]) == 2


def test_localhost_is_an_address_not_a_local_cluster():
    from spicompute.execution import local_workers
    from spicompute.params import validate_scheduler

    assert validate_scheduler("ccmatrix.scheduler", "localhost:8786") == "localhost:8786"
    assert local_workers("localhost:8786") == 0 and local_workers("local:3") == 3
    with pytest.raises(ParameterError, match="local:N"):
        validate_scheduler("orient.scheduler", "local")
