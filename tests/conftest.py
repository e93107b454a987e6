"""Shared fixtures: small simulated data sets made in the test session."""

from __future__ import annotations

import os
from pathlib import Path

# `make test` runs one pytest-xdist worker per core: each worker (and the stages it starts)
# computes on one thread, or two workers' BLAS/OpenMP/torch pools would fight over the
# cores (measured with two workers: the suite 18 min 4 s instead of 20 min 24 s).  Set before
# numpy loads.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

os.environ.setdefault("SPICOMPUTE_NO_PROGRESS", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parent.parent
INTEROP = REPO.parent / "shared" / "interop"


# The files that take longest, longest first (measured with `--durations`, 2026-12-05).  `make test`
# hands whole files to the two workers in collection order (`--dist loadfile
# --no-loadscope-reorder`); starting these first keeps one of them from running alone at the end
# while the other worker idles (xdist's own order, by number of tests, put them last).
LONGEST_FILES = (              # seconds in a 13-minute `make test` (per file, setup + calls)
    "tests/test_geometries.py",                      # 239
    "tests/vae/test_chain_3d.py",                    # 175
    "tests/test_reliability.py",                     # 111
    "tests/ingest/test_euxfel_ingest.py",            # 100
    "tests/landscape/test_landscape_lowphoton.py",   # 90
    "tests/vae/test_vae.py",                         # 74
    "tests/test_rerun_identical.py",                 # 69
    "tests/ingest/test_euxfel_pipeline.py",          # 61
    "tests/test_faults.py",                          # 54
    "tests/vae/test_vae_stages.py",                  # 49
    "tests/test_pipeline.py",                        # 48
    "tests/emc2d/test_beta_scope.py",                # 45
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))   # stable


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Restore ``sys.modules['__main__']`` after every test.

    Streamlit's AppTest runs each page as ``__main__`` and leaves it installed; a later
    ``spawn`` child process (Dask nanny workers, multiprocessing) then re-executes that page
    script as its own main module and dies before it can start."""
    import sys

    main_module = sys.modules.get("__main__")
    yield
    if main_module is not None and sys.modules.get("__main__") is not main_module:
        sys.modules["__main__"] = main_module


def small_simulation_params(**overrides) -> dict:
    """A quick simulation: 33x33 detector, few frames, coarse volumes."""
    params = dict(n_frames=300, detector_size=33, binning=4, volume_size=64, melt_levels=5,
                  photons_mean=800, seed=1, beamstop_radius_px=1.5, gap_width_px=1)
    params.update(overrides)
    return params


@pytest.fixture(scope="session")
def small_simulation():
    """(FrameSet, Truth, SimulationParams) of a small simulated data set."""
    from spicompute.simulation.simulate import SimulationParams, simulate

    p = SimulationParams.from_dict(small_simulation_params())
    frames, truth = simulate(p, progress=False)
    return frames, truth, p


@pytest.fixture(scope="session")
def low_photon_simulation():
    """(FrameSet, Truth, SimulationParams): the paper's regime, ~400 particle photons
    plus ~50 background photons per frame (flat + gas term), on the small detector."""
    from spicompute.simulation.simulate import SimulationParams, simulate

    p = SimulationParams.from_dict(small_simulation_params(
        n_frames=600, photons_mean=400, background_photons=50, seed=2))
    frames, truth = simulate(p, progress=False)
    return frames, truth, p


CONTAMINANTS = ("dimer", "rod", "aggregate")


def members_with_truth(root: Path, columns=("class_name", "melt_t")):
    """Frames placed in an average (results/frames.parquet under ``root``) with the simulation
    truth's ``columns`` and a ``contaminant`` flag (dimer, rod or aggregate)."""
    import pandas as pd

    from spicompute.io.truth import read_truth

    frames = pd.read_parquet(root / "results" / "frames.parquet")
    truth = read_truth(root / "data" / "truth.h5")
    members = frames[frames["average_id"] >= 0].merge(
        pd.DataFrame({"frame_id": truth["frame_id"], **{c: truth[c] for c in columns}}), on="frame_id")
    members["contaminant"] = members["class_name"].isin(CONTAMINANTS)
    return members


def run_stages(root: Path, params: dict, names) -> None:
    """Run pipeline stages in-process exactly as dvc.yaml's commands do, with ``params``
    (written to ``root/params.yaml``) and every output under ``root``."""
    import yaml

    from spicompute.cli import main

    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outputs = ("data/", "results/", "metrics/", "models/", "dvclive/", "checkpoints/")
    for name in names:
        argv = stages[name]["cmd"].split()[1:]
        argv = [str(root / a) if a.startswith(outputs) else a for a in argv]
        argv = [str(root / "params.yaml") if a == "params.yaml" else a for a in argv]
        assert main(argv + ["-q"]) == 0, name


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) as a module, e.g. ``load_benchmark("run_all")``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def rng():
    return np.random.default_rng(1234)


def decode_plotly_array(value) -> np.ndarray:
    """A plotly figure-JSON array as numpy (plotly >= 6 writes typed arrays as base64)."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(s) for s in shape.split(",")]
        return arr.reshape(shape) if shape else arr
    return np.asarray(value, dtype=float)
