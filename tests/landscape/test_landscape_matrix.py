"""benchmarks/landscape_matrix.py: every cell is a simulatable data set, a bad cell is one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spicompute.simulation.simulate import SimulationParams
from tests.conftest import REPO, load_benchmark


def test_every_cell_simulates_and_differs_from_the_base_in_its_factor():
    m = load_benchmark("landscape_matrix")
    base = m.cell_params("base", 6000, 4, 0)["simulate"]
    for name in m.CELLS:
        sim = m.cell_params(name, 6000, 4, 0)["simulate"]
        SimulationParams.from_dict(sim)
        changed = {k for k in sim if sim[k] != base[k]}
        assert changed <= set(m.CELLS[name]) and (changed or name == "base"), (name, changed)
    shares = m.contaminant_share(0.30)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["dimer"] + shares["rod"] + shares["aggregate"] == pytest.approx(0.30)


def test_a_cell_that_cannot_be_simulated_is_one_line_naming_cell_and_parameter(tmp_path):
    script = tmp_path / "bad_matrix.py"
    script.write_text(
        "import runpy, sys\n"
        f"sys.argv = ['landscape_matrix.py', '--cells', 'size_6pct', '--workdir', r'{tmp_path / 'w'}']\n"
        f"g = runpy.run_path(r'{REPO / 'benchmarks' / 'landscape_matrix.py'}', run_name='not_main')\n"
        "g['CELLS']['size_6pct'] = {'size_jitter': 0.6}\n"
        "class A: cells=['size_6pct']; frames=100; runs=2; seed=0; workdir=''; out=''; resume=False\n"
        "g['main_'](A())\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "simulate.size_jitter (cell size_6pct)" in lines[0], out.stderr
    assert not (tmp_path / "w").exists()


def test_a_landscape_variant_parses_its_settings_and_rejects_others():
    m = load_benchmark("landscape_matrix")
    assert m.parse_sets(["ccmatrix.size_normalise=true", "embed.n_components=4"]) == {
        ("ccmatrix", "size_normalise"): True, ("embed", "n_components"): 4}
    for bad in ("size_normalise=true", "simulate.seed=3", "ccmatrix.size_normalise", "frames.x=1"):
        with pytest.raises(SystemExit, match="--set"):
            m.parse_sets([bad])


def _finished_cell(m, top, name):
    """A cell folder as a finished run leaves it (each input file holding its own path)."""
    import yaml

    src = top / name
    for rel in m.LANDSCAPE_INPUTS:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    (src / "params.yaml").write_text(yaml.safe_dump(m.cell_params(name, 600, 2, 0)))
    return src


def test_a_variant_reruns_the_landscape_on_the_cells_classifications(tmp_path):
    """A finished cell's frames, averages and truth are linked, not copied, into <cell>@<variant>;
    the parameters differ only in the --set keys."""
    import yaml

    m = load_benchmark("landscape_matrix")
    src = _finished_cell(m, tmp_path, "base")
    ran = []
    m.run_stage = lambda root, name, stages, pfile: ran.append((root.name, name)) or 0.0
    dst, seconds = m.variant_cell(tmp_path, "base", "sizenorm", {("ccmatrix", "size_normalise"): True}, {})
    assert dst.name == "base@sizenorm" and ran == [("base@sizenorm", "ccmatrix"), ("base@sizenorm", "embed")]
    for rel in m.LANDSCAPE_INPUTS:
        assert (dst / rel).is_symlink() and (dst / rel).read_text() == rel
    a, b = (yaml.safe_load((d / "params.yaml").read_text()) for d in (src, dst))
    assert b["ccmatrix"].pop("size_normalise") is True
    a["ccmatrix"].pop("size_normalise")
    assert a == b


def test_a_classify2d_variant_reclassifies_the_same_frames(tmp_path):
    import yaml

    m = load_benchmark("landscape_matrix")
    _finished_cell(m, tmp_path, "fluence_halo")
    ran = []
    m.run_stage = lambda root, name, stages, pfile: ran.append(name) or 0.0
    dst, seconds = m.variant_cell(tmp_path, "fluence_halo", "beta", {("classify2d", "beta_scope"): "dataset"}, {})
    assert ran == ["classify2d", "ccmatrix", "embed"] and set(seconds) == set(ran)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_symlink()) == \
        sorted(m.CLASSIFY_INPUTS)          # the frames and the truth, not the old classification
    assert yaml.safe_load((dst / "params.yaml").read_text())["classify2d"]["beta_scope"] == "dataset"


def test_an_oracle_cell_rescores_the_landscape_on_ideal_averages_of_the_same_classes(tmp_path):
    """--oracle: the cell's averages replaced by one sharp view of each class's members at
    their photons, the other inputs linked, the landscape stages rerun with the cell's params."""
    import numpy as np
    import pandas as pd
    import yaml

    from spicompute.io.averages import AverageSet, read_averages, write_averages
    from spicompute.io.truth import write_truth
    from spicompute.simulation.simulate import simulate
    from tests.conftest import small_simulation_params

    m = load_benchmark("landscape_matrix")
    params = m.cell_params("photons_300", 600, 2, 0)
    params["simulate"].update(small_simulation_params(n_frames=60, photons_mean=300, background_photons=50))
    p = SimulationParams.from_dict(params["simulate"])
    fs, truth = simulate(p, progress=False)
    src = tmp_path / "photons_300"
    for rel in m.LANDSCAPE_INPUTS:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if not rel.endswith(("truth.h5", "averages.h5", "frames.parquet")):
            (src / rel).write_text(rel)
    (src / "params.yaml").write_text(yaml.safe_dump(params))
    (src / "metrics" / "ccmatrix.json").write_text('{"q_min_nm": 0.05, "q_max_nm": 0.4}')
    write_truth(src / "data" / "truth.h5", truth)
    pd.DataFrame({"frame_id": np.arange(60), "average_id": np.arange(60) % 6}).to_parquet(
        src / "results" / "frames.parquet")
    size = p.detector_size
    qg = fs.detector.q.reshape(size, size, 3)
    dq = float(qg[size // 2, size // 2 + 1, 0] - qg[size // 2, size // 2, 0])
    weight = np.broadcast_to(fs.detector.mask.reshape(size, size), (6, size, size)).astype(np.float32)
    real = np.ones((6, size, size), np.float32)
    write_averages(src / "data" / "averages.h5", AverageSet(real, weight, np.arange(6), np.zeros(6, np.int64),
                                                            np.arange(6), np.full(6, 10.0), dq, p.wavelength_nm))
    ran = []
    m.run_stage = lambda root, name, stages, pfile: ran.append((root.name, name)) or 0.0
    dst, seconds = m.oracle_cell(tmp_path, "photons_300", "counts", {}, seed=0)
    assert dst.name == "photons_300@oracle_counts"
    assert ran == [(dst.name, "ccmatrix"), (dst.name, "embed")] and "oracle" in seconds
    ideal = read_averages(dst / "data" / "averages.h5")
    np.testing.assert_array_equal(ideal.average_id, np.arange(6))
    np.testing.assert_allclose(ideal.intensity.sum(axis=(1, 2)), (real * (weight > 0)).sum(axis=(1, 2)), rtol=1e-4)
    assert ideal.intensity.std() > 0        # views, not the flat input
    assert (dst / "data" / "truth.h5").is_symlink() and not (dst / "data" / "averages.h5").is_symlink()
    used = yaml.safe_load((dst / "params.yaml").read_text())
    assert (used["ccmatrix"].pop("q_min_nm"), used["ccmatrix"].pop("q_max_nm")) == (0.05, 0.4)  # the cell's range
    for key in ("q_min_nm", "q_max_nm"):
        params["ccmatrix"].pop(key)
    assert used == params
