"""A tiny git + DVC project for the dashboard tests (made in a temporary folder).

Stage ``toy`` writes a landscape (results/parts/embed.parquet: pc_1..3 of 30
averages, turned by ``toy.angle`` degrees about pc_3, clusters relabelled by
``toy.shift``), results/parts/classify2d.parquet and metrics/toy.json;
stage ``select`` depends on selections/ like the real one.  The baseline is
run and committed with its metrics in git.
"""

from __future__ import annotations

import sys
from pathlib import Path

BIN = Path(sys.executable).parent

TOY = '''
import json, pathlib, yaml, numpy as np, pandas as pd
p = yaml.safe_load(open("params.yaml"))["toy"]
rng = np.random.default_rng(0)
m = 30
xyz = rng.normal(size=(m, 3)) * [3.0, 1.5, 0.5]
t = np.radians(p["angle"])
rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
xyz = xyz @ rot.T
cluster = (np.arange(m) % 3 + p["shift"]) % 3
for d in ("results/parts", "metrics"):
    pathlib.Path(d).mkdir(parents=True, exist_ok=True)
pd.DataFrame({"average_id": np.arange(m), "pc_1": xyz[:, 0], "pc_2": xyz[:, 1], "pc_3": xyz[:, 2],
              "cluster": cluster}).to_parquet("results/parts/embed.parquet", index=False)
pd.DataFrame({"average_id": np.arange(m), "run": np.arange(m) % 2, "model": np.arange(m) // 2,
              "n_frames": rng.uniform(10, 50, m)}).to_parquet("results/parts/classify2d.parquet",
                                                            index=False)
json.dump({"silhouette": 0.5 + p["shift"] / 10, "n_averages": m}, open("metrics/toy.json", "w"))
'''

SELECT = '''
import json, pathlib, pandas as pd
ids = set()
for f in sorted(pathlib.Path("selections").glob("*.json")):
    ids |= set(json.loads(f.read_text()).get("average_ids", []))
t = pd.read_parquet("results/parts/embed.parquet")[["average_id"]]
t["selected"] = t["average_id"].isin(ids) if ids else True
t.to_parquet("results/parts/select.parquet", index=False)
'''

DVC_YAML = """stages:
  toy:
    cmd: {py} toy.py
    deps: [toy.py]
    params: [toy]
    outs: [results/parts/embed.parquet, results/parts/classify2d.parquet]
    metrics:
    - metrics/toy.json:
        cache: false
  select:
    cmd: {py} pick.py
    deps: [pick.py, selections, results/parts/embed.parquet]
    outs: [results/parts/select.parquet]
"""


def run(cmd, cwd) -> str:
    """A command in ``cwd`` with the project's venv on PATH and a git identity (fails loudly)."""
    from tests.test_dvc_project import _run

    return _run(cmd, cwd)


def dvc(args, cwd) -> str:
    return run([str(BIN / "dvc"), *args], cwd)


def make_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "toy.py").write_text(TOY)
    (root / "pick.py").write_text(SELECT)
    (root / "params.yaml").write_text("toy:\n  angle: 0\n  shift: 0\n")
    (root / "dvc.yaml").write_text(DVC_YAML.format(py=sys.executable))
    (root / "selections").mkdir()
    (root / "selections" / "README.md").write_text("named selections\n")
    (root / ".gitignore").write_text("/results/\n")
    run(["git", "init", "-q"], root)
    dvc(["init", "-q"], root)
    dvc(["config", "core.analytics", "false"], root)
    dvc(["config", "core.check_update", "false"], root)
    dvc(["repro", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "baseline"], root)
    return root
