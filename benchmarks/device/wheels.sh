#!/usr/bin/env bash
# Fill .whl/ with what a lent GPU machine lacks to run coupler: this project's own wheel and the Dask stack.
#
# The device machine has JAX, Flax, optax, numpy and most of the scientific stack, no Dask, and no
# network. Run this here (where pip reaches the registries), then name `.whl` in the device call's
# `carry` (see benchmarks/device/issue22.sh). The Dask stack is taken at the versions of this
# checkout's .venv, so the device runs what the tests ran.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
rm -rf .whl && mkdir -p .whl
# the packages the device image does not hold (its list: /work/.library/device/KINDS.md)
pkgs=(dask distributed dask-jobqueue tornado zict tblib locket partd bokeh xyzservices)
pins=()
for p in "${pkgs[@]}"; do
    pins+=("$p==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]}"
"$PY" -m pip wheel -q --no-deps -w .whl .
rm -rf build/lib build/bdist.*  # setuptools builds in the tree; build/ also holds the docs' sources
ls -l .whl
du -sh .whl
