# SPI Landscape — the two commands of the README:
#   make demo   set up, run the whole pipeline on the embedded simulated data, open the dashboard
#   make test   set up (venv, packages, Debian chromium for the browser test) and run every test
#   make test-fast   the same without the tests marked slow (whole stages end to end), for development
VENV      ?= .venv
PYTHON    ?= python3
PORT      ?= 8501
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# one pytest worker per core (pytest-xdist), one compute thread each (tests/conftest.py); a
# test file runs on one worker, so its module fixtures (a pipeline run, a simulated data set)
# are built once.  TEST_WORKERS=0: one process
TEST_WORKERS ?= auto
PYTEST    = $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: setup demo pipeline dashboard baseline check-baseline test test-fast test-dashboard browser bench bench-dashboard bench-peers \
        clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

pipeline: setup
	dvc repro

# run from the repo root: .streamlit/config.toml applies and `dashboard` is importable
dashboard: setup
	PYTHONPATH=$(CURDIR) python -m streamlit run dashboard/app.py --server.headless true \
	  --server.address 127.0.0.1 --server.port $(PORT) --browser.gatherUsageStats false

# record the default run as the baseline: its small metrics files go into git with dvc.lock,
# so `dvc metrics diff`, `dvc exp show` and the dashboard's Runs page compare against it
baseline: pipeline
	git add dvc.lock metrics
	git commit -m "baseline: default pipeline run (dvc.lock + metrics)" -- dvc.lock metrics

# after `make demo` (or `dvc repro`) on a new machine: does this installation reproduce the committed
# baseline?  One verdict line per stage (metrics within stated tolerances, timings ignored)
check-baseline: setup
	$(VENV)/bin/python -m spicompute.check_baseline --rev HEAD

test-dashboard: setup browser
	$(PYTEST) tests/dashboard

bench-dashboard: setup browser
	$(VENV)/bin/python benchmarks/bench_dashboard.py

demo: pipeline
	@echo "Dashboard on http://127.0.0.1:$(PORT) (Ctrl-C stops it)"
	$(MAKE) --no-print-directory dashboard

# Debian's chromium drives the headless-browser test (Playwright without its own browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and not root: the browser test will be skipped"; fi; }

test: setup browser
	$(PYTEST)

test-fast: setup browser
	$(PYTEST) -m "not slow"

bench: setup
	$(VENV)/bin/python benchmarks/run_all.py

bench-peers: setup  # Dragonfly (PyPI) vs ours on the same file: ~15 min, see benchmarks/peers/README.md
	bash benchmarks/peers/setup_dragonfly.sh && $(VENV)/bin/python benchmarks/peers/bench_peers.py

clean-outputs:
	rm -rf data results metrics dvclive models checkpoints
