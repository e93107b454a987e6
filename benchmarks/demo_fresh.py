"""The first ``make demo`` as a new user runs it: fresh clone, no venv, no pip cache.

Clones this repository (its committed HEAD) into a temporary folder, runs ``make demo``
there with ``PIP_NO_CACHE_DIR=1`` (every wheel downloaded) on a free port, and times it
until the dashboard's health endpoint answers; then stops the dashboard and reads where
the time went: installation (until the first stage starts), each DVC stage (from the
stage log's timestamps and the stages' metrics), the dashboard start.  Issue 20 item 5:
target <= 10 min on 2 cores.

    python benchmarks/demo_fresh.py [--port 8599] [--keep DIR] [--out benchmarks/measured/make_demo_fresh.json]

Needs network access to the package index and ~3 GB of disk; takes ~8-10 minutes.
Never run it beside another benchmark (it uses every core).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_RE = re.compile(r"^Running stage '([^']+)'")
TIME_RE = re.compile(r"^(\d\d):(\d\d):(\d\d) ")


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def stage_spans(events: list[tuple[float, str]]) -> dict:
    """Seconds per DVC stage: from its 'Running stage' line to the next one (the last one to
    the Makefile's 'Dashboard on' line).  ``events``: (arrival time, line)."""
    marks = [(t, m.group(1)) for t, line in events if (m := STAGE_RE.match(line))]
    end = next((t for t, line in events if line.startswith("Dashboard on")), None)
    out = {}
    for i, (t, name) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else end
        out[name] = None if stop is None else round(stop - t, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8599)
    ap.add_argument("--keep", default="", help="clone here and keep it (default: a temporary folder, removed)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    ap.add_argument("--out", default="", help="JSON results file")
    args = ap.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="demo-fresh-"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"demo_fresh: {work} is not empty")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    env = dict(os.environ, PIP_NO_CACHE_DIR="1", DVC_NO_ANALYTICS="1")
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if ".venv" not in p)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(["make", "demo", f"PORT={args.port}"], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    events: list[tuple[float, str]] = []      # (arrival time, line), filled by a reader thread

    def read():
        for line in proc.stdout:
            events.append((time.perf_counter(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    answered = None
    try:
        while time.perf_counter() - t0 < args.timeout:
            if healthy(args.port):
                answered = time.perf_counter()
                break
            if proc.poll() is not None:
                break
            time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=5)
    load1 = os.getloadavg()
    if answered is None:
        tail = "\n".join(line for _, line in events[-20:])
        raise SystemExit(f"demo_fresh: the dashboard never answered (make exit {proc.returncode}):\n{tail}")
    first = next((t for t, line in events if STAGE_RE.match(line)), answered)
    spans = stage_spans(events)
    pipeline_end = next((t for t, line in events if line.startswith("Dashboard on")), answered)
    metrics = {}
    for name in spans:
        f = work / "metrics" / f"{name}.json"
        if f.exists():
            sec = json.loads(f.read_text()).get("seconds")
            metrics[name] = sec if isinstance(sec, (int, float)) else None
    result = {
        "what": "first `make demo` on a fresh clone: no .venv, PIP_NO_CACHE_DIR=1, until /_stcore/health answered",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
        "cpu_count": os.cpu_count(), "load_average_start": [round(v, 2) for v in load0],
        "load_average_end": [round(v, 2) for v in load1],
        "seconds_until_dashboard": round(answered - t0, 1),
        "seconds_install": round(first - t0, 1),
        "seconds_pipeline": round(pipeline_end - first, 1),
        "seconds_dashboard_start": round(answered - pipeline_end, 1),
        "seconds_per_stage_wall": spans, "seconds_per_stage_metrics": metrics,
        "target_seconds": 600,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
