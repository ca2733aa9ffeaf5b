#!/usr/bin/env bash
# Second GPU call (after bench/gpu_check.sh, which builds): the measurements that take longest.
#   1. python -m sp24.bench crossover  -> python/sp24/data/crossover.json (the FFN's auto fallback)
#   2. python -m sp24.demo --config gpu -> OUTDIR/demo_gpu/summary.json (dense vs 2:4 training)
# Each step is time-boxed so the whole call fits the device tool's 10-minute limit.
#
#   SP24_SKIP_BUILD=1 bash bench/gpu_train.sh OUTDIR      (the build from gpu_check.sh is reused)
#
# If the GPU machine lacks matplotlib (the demo then writes no PNG), redraw the plot here with
#   python -c "import json, pathlib, sp24.demo as d; d.plot(json.load(open('OUT/demo_gpu/summary.json')), pathlib.Path('OUT/demo_gpu/curves.png'))"
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_train.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
rc=0
if [ "${SP24_SKIP_BUILD:-0}" != "1" ]; then
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} SKBUILD_BUILD_DIR=build/gpu timeout 240 \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1 || rc=1
fi
echo "== crossover"
timeout ${SP24_CROSSOVER_S:-200} "$PY" -m sp24.bench crossover --out "$OUT" >"$OUT/crossover.log" 2>&1 || { rc=1; tail -n 20 "$OUT/crossover.log"; }
cp -f python/sp24/data/crossover.json "$OUT/" 2>/dev/null || true
echo "== demo (gpu config)"
timeout ${SP24_DEMO_S:-330} "$PY" -m sp24.demo --config gpu --out "$OUT/demo_gpu" ${SP24_DEMO_ARGS:-} >"$OUT/demo.log" 2>&1 || { rc=1; tail -n 20 "$OUT/demo.log"; }
tail -n 30 "$OUT/demo.log"
exit $rc
