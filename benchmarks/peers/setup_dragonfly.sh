#!/usr/bin/env bash
# Build the peer (Dragonfly, PyPI `dragonfly-spi`) in its own venv for bench_peers.py.
#   bash benchmarks/peers/setup_dragonfly.sh
# Needs Debian libhdf5-dev libgsl-dev libopenmpi-dev openmpi-bin (installed with apt-get
# when running as root and missing). Exits non-zero with the reason when it cannot.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${DRAGONFLY_VENV:-$HERE/.venv-dragonfly}"
PY="${PYTHON:-python3}"
DEBS="libhdf5-dev libgsl-dev libopenmpi-dev openmpi-bin"
missing=""
for d in $DEBS; do dpkg -s "$d" >/dev/null 2>&1 || missing="$missing $d"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  else
    echo "setup_dragonfly: missing Debian packages:$missing (not root or no apt-get)" >&2
    exit 2
  fi
fi
if [ ! -x "$VENV/bin/dragonfly.emc" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q dragonfly-spi mpi4py
fi
"$VENV/bin/python" -c "import dragonfly, mpi4py, dragonfly.utils.py_src.calc_cc; print('dragonfly', dragonfly.__version__ if hasattr(dragonfly, '__version__') else '?', 'ready in $VENV')"
