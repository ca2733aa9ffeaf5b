#!/usr/bin/env bash
# One-shot GPU check for sp24 on a GPU machine without network (issue #3):
#   build (CUDA, sm_90a, + compiled benchmarks) -> full test suite -> compute-sanitizer memcheck and
#   racecheck on a small kernel-test subset -> golden cuSPARSELt buffers -> kernel benchmarks.
# Everything lands in OUTDIR: one log per step, junit XML, benchmark JSON, env.json, summary.json.
# Each step is time-boxed; a failing step is logged and the rest still run; the exit status is
# non-zero if any step failed. Total well under 10 minutes on an H100.
#
#   bash bench/gpu_check.sh OUTDIR
#
# Environment (all optional):
#   PYTHON                 interpreter with torch 2.11 cu130 (default: python3)
#   TORCH_CUDA_ARCH_LIST   default 9.0a
#   SP24_BUILD_BENCH       ON|OFF, build the compiled bench binaries (default ON)
#   SP24_SKIP_BUILD=1      reuse the installed build
#   SP24_SANITIZE_K        pytest -k expression for the memcheck subset
#   SP24_RACECHECK_K       pytest -k expression for the racecheck subset
#   SP24_CHECK_BUDGET      seconds for the whole script (default 570): each step's time box is
#                          cut to what is left; a step with under 10 s left is skipped (failed)
#   SP24_STEPS             run only these steps (space-separated names: build pytest memcheck
#                          memcheck_cslt racecheck goldens bench_sparsify bench_gemm bench_ffn
#                          bench_binaries); e.g. two device calls:
#                          SP24_STEPS="build pytest memcheck memcheck_cslt racecheck goldens"
#                          then SP24_STEPS="build bench_sparsify bench_gemm bench_ffn bench_binaries"
#                          (each call starts on a fresh machine, so each builds)
set -uo pipefail

OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export SP24_BUILD_BENCH=${SP24_BUILD_BENCH:-ON}
export PATH="$PATH:/usr/local/cuda/bin"  # compute-sanitizer, ncu

failed=()
steps_json=""
T0=$(date +%s)
DEADLINE=$((T0 + ${SP24_CHECK_BUDGET:-570}))

# step NAME TIMEOUT_S CMD...: runs CMD with a time box, output to $OUT/NAME.log.
step() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${SP24_STEPS:-}" ] && [[ " $SP24_STEPS " != *" $name "* ]]; then
    echo "== [$name] not selected (SP24_STEPS)"
    return
  fi
  local t=$(date +%s)
  local left=$((DEADLINE - t))
  [ $left -lt $limit ] && limit=$left
  if [ $limit -lt 10 ]; then
    echo "== [$name] SKIPPED: the script's time budget is spent"
    failed+=("$name")
    steps_json="${steps_json}${steps_json:+,}{\"step\":\"$name\",\"rc\":-1,\"seconds\":0}"
    return
  fi
  echo "== [$name] $* (time box ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t))
  if [ $rc -ne 0 ]; then
    failed+=("$name")
    echo "   FAILED rc=$rc after ${dt}s (last lines of $OUT/$name.log):"
    tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
  else
    echo "   ok (${dt}s)"
  fi
  steps_json="${steps_json}${steps_json:+,}{\"step\":\"$name\",\"rc\":$rc,\"seconds\":$dt}"
}

# ---- environment -------------------------------------------------------------------------------
"$PY" - "$OUT/env.json" <<'EOF' || failed+=("env")
import json, subprocess, sys, platform
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception as e:  # tool missing
        return f"unavailable: {e}"
info = {
    "python": sys.version.split()[0],
    "platform": platform.platform(),
    "git_commit": run("git", "rev-parse", "HEAD"),
    "git_dirty": bool(run("git", "status", "--porcelain")),
    "nvidia_smi": run("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"),
    "nvcc": run("nvcc", "--version").splitlines()[-1:] ,
    "compute_sanitizer": run("compute-sanitizer", "--version").splitlines()[-1:],
}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                cusparselt_runtime=torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None)
except Exception as e:
    info["torch_error"] = repr(e)
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
EOF

# ---- build -------------------------------------------------------------------------------------
if [ "${SP24_SKIP_BUILD:-0}" != "1" ]; then
  step build 240 env SKBUILD_BUILD_DIR=build/gpu "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .
fi
"$PY" -c "import json, sp24; print(json.dumps(sp24.build_info(), indent=2, default=str))" >"$OUT/build_info.json" 2>&1 \
  || failed+=("import")

# ---- tests -------------------------------------------------------------------------------------
step pytest 240 "$PY" -m pytest tests --maxfail=30 -q -ra --junitxml="$OUT/junit.xml"

# compute-sanitizer on a small subset of the kernel tests (ids containing "small"; fp32 (dtype0:
# two 16-byte chunks per vector) and bf16 (dtype2) for memcheck, bf16 only and fewer inputs for
# the much slower racecheck).
MEMCHECK_K=${SP24_SANITIZE_K:-"small and not dtype1 and not randn and not tie_heavy"}
RACECHECK_K=${SP24_RACECHECK_K:-"small and not dtype0 and not dtype1 and not tie_heavy and not randn and not largest_abs"}
# No caching allocator under the sanitizer: every tensor is its own allocation, so an access past
# a tensor's end is caught instead of landing in a cached neighbour.
step memcheck 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 50 \
  "$PY" -m pytest tests/test_gpu_kernels.py -x -q -p no:cacheprovider -k "$MEMCHECK_K"
# the cuSPARSELt layout writers (the pack kernel and sparsify24_cslt's fused stores): a fresh process,
# so each shape's first call runs the writer next to cuSPARSELt's compression
step memcheck_cslt 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 50 \
  "$PY" -m pytest tests/test_sparsify_cslt.py tests/test_gpu_gemm.py -q -p no:cacheprovider \
  -k "fused_writer or direct_writer or (cuda and 64x128 and randn)"
step racecheck 100 compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 99 --print-limit 50 \
  "$PY" -m pytest tests/test_gpu_kernels.py -x -q -p no:cacheprovider -k "$RACECHECK_K"

# ---- golden cuSPARSELt buffers (.npz of plain arrays + .json, never pickles) --------------------
step goldens 60 "$PY" bench/capture_goldens.py --out "$OUT/goldens"

# ---- benchmarks (python -m sp24.bench, and the compiled binaries when they were built) ----------
step bench_sparsify 90 "$PY" -m sp24.bench sparsify --out "$OUT"
step bench_gemm 90 "$PY" -m sp24.bench gemm --out "$OUT"
step bench_ffn 120 "$PY" -m sp24.bench ffn --out "$OUT"
if [ "$SP24_BUILD_BENCH" = "ON" ]; then
  step bench_binaries 60 "$PY" -m sp24.bench binaries --out "$OUT"
fi

# ---- summary -----------------------------------------------------------------------------------
total=$(($(date +%s) - T0))
fail_json=$(printf '"%s",' "${failed[@]+"${failed[@]}"}")
fail_json="[${fail_json%,}]"
[ "$fail_json" = '[""]' ] && fail_json="[]"
echo "{\"steps\":[${steps_json}],\"failed\":${fail_json},\"total_seconds\":${total}}" >"$OUT/summary.json"
echo "== total ${total}s; failed: ${failed[*]:-none}; logs and JSON in $OUT"
[ ${#failed[@]} -eq 0 ]
