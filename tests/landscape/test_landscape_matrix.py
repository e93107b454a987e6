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
