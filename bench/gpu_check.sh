#!/usr/bin/env bash
# The GPU check of sp24, sized to one 15-minute device window (bench/results/README.md, runbook):
#
#   call 1 (<= 9 min including the build; run tool timeout_s 560):
#     build (sm_90a only) -> the CUDA tests that decide correctness (pytest -m gpu: bit-exact
#     kernels, GEMM, layout against cuSPARSELt, writers' checks, FFN on CUDA) -> golden cuSPARSELt
#     buffers -> a small compute-sanitizer memcheck -> docs/DESIGN.md 'Targets' benchmarks (FP8 too) at their headline
#     shapes -> one summary table (pass/fail, numbers against targets): OUT/SUMMARY.md, printed last.
#   call 2 (<= 4 min, if time is left; timeout_s 240):
#     build (incremental when the machine is still warm) -> crossover (shortened) -> MoE experts bench
#     (Nano-like shape) -> GPU demo (40 steps)
#     -> summary.
#
#   bash bench/gpu_check.sh [--call 1|2] OUTDIR     run
#   bash bench/gpu_check.sh [--call 1|2] --plan     print the steps, time boxes and commands; run nothing
#   bash bench/gpu_check.sh [--call 1|2] --dry-run OUTDIR
#                                                   every step echoes its command instead of running it;
#                                                   the bookkeeping and the summary renderer run for real
#                                                   (CI runs this on a CPU machine)
#
# Every step has a time box, cut to what is left of the call's budget; a step with under 10 s left is
# skipped (and counted as failed). A failing step is logged (OUT/<step>.log) and the rest still run.
# The exit status is non-zero if any step failed.
#
# Environment (all optional):
#   PYTHON               interpreter with torch 2.11 cu130 (default: python3)
#   SP24_CHECK_BUDGET    seconds for the whole call (default 525 for call 1, 225 for call 2)
#   SP24_BUILD_JOBS      parallel compile jobs (default: nproc)
#   SP24_STEPS           run only these steps (space-separated names, see --plan)
#   SP24_CUSPARSELT_LIB  path of another libcusparseLt.so.0 (e.g. the newest 0.8.x wheel's, same
#                        SONAME): preloaded for every step after the build; the JSON records which one ran
set -uo pipefail

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }

CALL=1
MODE=run
OUT=""
while [ $# -gt 0 ]; do
  case $1 in
    --plan) MODE=plan ;;
    --dry-run) MODE=dry ;;
    --call) CALL=${2:-}; shift ;;
    --call=*) CALL=${1#--call=} ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) OUT=$1 ;;
  esac
  shift
done
if [ "$CALL" != 1 ] && [ "$CALL" != 2 ]; then
  echo "gpu_check.sh: --call must be 1 or 2, got '$CALL'" >&2
  exit 2
fi
if [ "$MODE" != plan ] && [ -z "$OUT" ]; then
  echo "gpu_check.sh: OUTDIR missing" >&2
  usage >&2
  exit 2
fi

cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
if [ "$CALL" = 1 ]; then BUDGET=${SP24_CHECK_BUDGET:-525}; else BUDGET=${SP24_CHECK_BUDGET:-225}; fi
JOBS=${SP24_BUILD_JOBS:-$(nproc 2>/dev/null || echo 4)}
OUTQ=${OUT:-OUT}

# ---- the steps: name, time box (s), command ------------------------------------------------------
# compute-sanitizer on a few small kernel cases (bf16 and fp32) and the cuSPARSELt layout writers
# (a fresh process: each shape's first call runs the writer next to cuSPARSELt's compression); no
# caching allocator, so an access past a tensor's end is caught instead of landing in a neighbour.
MEMCHECK_K=${SP24_SANITIZE_K:-"(small and dtype2 and tie_free and not largest_abs and not subset95 and (17x36 or 64x256 or 100x65 or 68x136)) or (small and dtype0 and tie_free and 64x256 and not transposed and not largest_abs) or (small and dtype2 and (apply or to_dense)) or fused_writer or direct_writer or (cuda and 64x128 and randn)"}
NAMES=()
BOXES=()
CMDS=()
add() { NAMES+=("$1"); BOXES+=("$2"); CMDS+=("$3"); }

BUILD="env SKBUILD_BUILD_DIR=build/gpu CMAKE_BUILD_PARALLEL_LEVEL=$JOBS SP24_CUDA=ON TORCH_CUDA_ARCH_LIST=9.0a \
SP24_BUILD_BENCH=OFF $PY -m pip install --no-build-isolation --no-deps --no-index -v -e ."
IMPORT="$PY -c 'import json, sp24, torch; i = sp24.build_info(); print(json.dumps(i, indent=2, default=str)); \
assert i[\"with_cuda\"] and torch.cuda.is_available(), \"no CUDA build or no GPU\"'"
if [ "$CALL" = 1 ]; then
  add build 140 "$BUILD"
  add import 15 "$IMPORT"
  add tests 125 "$PY -m pytest tests -m gpu -q -ra -p no:cacheprovider --maxfail=25 --junitxml=$OUTQ/junit.xml"
  add goldens 25 "$PY bench/capture_goldens.py --out $OUTQ/goldens"
  add memcheck 45 "env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
--print-limit 50 $PY -m pytest tests/test_gpu_kernels.py tests/test_sparsify_cslt.py tests/test_gpu_gemm.py -q \
-p no:cacheprovider -k '$MEMCHECK_K'"
  add bench_sparsify 35 "$PY -m sp24.bench sparsify --out $OUTQ --no-progress --reps 30 --warmup 5"
  add bench_gemm 40 "$PY -m sp24.bench gemm --out $OUTQ --no-progress --shapes 4096:16384 --tokens 16384 --bias --reps 30 --warmup 5"
  add bench_ffn 70 "$PY -m sp24.bench ffn --out $OUTQ --no-progress --shapes 4096:16384 --tokens 16384 --reps 20 --warmup 5"
  add bench_fp8 30 "$PY -m sp24.bench fp8 --out $OUTQ --no-progress --reps 10 --warmup 3"
else
  add build 120 "$BUILD"
  add import 10 "$IMPORT"
  add crossover 45 "$PY -m sp24.bench crossover --out $OUTQ --no-progress --shapes 4096:16384 --dtypes bfloat16 \
--tokens 256,1024,4096,16384 --compile off --reps 8 --warmup 2"
  add bench_moe 25 "$PY -m sp24.bench moe --out $OUTQ --no-progress --shape nano --reps 5 --warmup 2"
  add demo 25 "$PY -m sp24.demo --config gpu --out $OUTQ/demo_gpu --steps 40"
fi

if [ "$MODE" = plan ]; then
  total=0
  echo "gpu_check.sh call $CALL: budget ${BUDGET}s; steps in order (time box, command):"
  for i in "${!NAMES[@]}"; do
    printf '  %-15s %4ss  %s\n' "${NAMES[$i]}" "${BOXES[$i]}" "${CMDS[$i]}"
    total=$((total + BOXES[i]))
  done
  echo "  sum of time boxes: ${total}s (each box is cut to what is left of ${BUDGET}s); then: $PY -m sp24.bench summary $OUTQ"
  exit 0
fi

mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
export PATH="$PATH:/usr/local/cuda/bin"  # compute-sanitizer
failed=()
steps_json=""
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))

# run_step NAME BOX CMD: time-boxed, output to $OUT/NAME.log, recorded in summary.json
run_step() {
  local name=$1 limit=$2 cmd=$3 t left rc dt
  if [ -n "${SP24_STEPS:-}" ] && [[ " $SP24_STEPS " != *" $name "* ]]; then
    echo "== [$name] not selected (SP24_STEPS)"
    return
  fi
  t=$(date +%s)
  left=$((DEADLINE - t))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "== [$name] SKIPPED: the call's budget (${BUDGET}s) is spent"
    failed+=("$name")
    steps_json="${steps_json}${steps_json:+,}{\"step\":\"$name\",\"rc\":-1,\"seconds\":0,\"box\":$2}"
    return
  fi
  echo "== [$name] (time box ${limit}s) $cmd"
  if [ "$MODE" = dry ]; then
    echo "[dry-run] $cmd" >"$OUT/$name.log"
    rc=0
  else
    # the command line is this script's own text (see the table above), not outside input
    timeout --kill-after=10 "$limit" bash -c "$cmd" >"$OUT/$name.log" 2>&1
    rc=$?
  fi
  dt=$(($(date +%s) - t))
  if [ "$rc" -ne 0 ]; then
    failed+=("$name")
    echo "   FAILED rc=$rc after ${dt}s (last lines of $OUT/$name.log):"
    tail -n 12 "$OUT/$name.log" | sed 's/^/   | /'
  else
    echo "   ok (${dt}s)"
  fi
  steps_json="${steps_json}${steps_json:+,}{\"step\":\"$name\",\"rc\":$rc,\"seconds\":$dt,\"box\":$2}"
}

# ---- environment ---------------------------------------------------------------------------------
{
  echo "{\"call\": $CALL, \"dry_run\": $([ "$MODE" = dry ] && echo true || echo false),"
  echo " \"git_commit\": \"$(git rev-parse HEAD 2>/dev/null || echo unknown)\","
  echo " \"nvidia_smi\": \"$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)\","
  echo " \"nproc\": $(nproc 2>/dev/null || echo 0)}"
} >"$OUT/env.json"

for i in "${!NAMES[@]}"; do
  if [ "${NAMES[$i]}" = import ] && [ -n "${SP24_CUSPARSELT_LIB:-}" ]; then
    export LD_PRELOAD="${SP24_CUSPARSELT_LIB}${LD_PRELOAD:+:$LD_PRELOAD}"
    echo "== LD_PRELOAD=$LD_PRELOAD (another cuSPARSELt for every step from here on)"
  fi
  run_step "${NAMES[$i]}" "${BOXES[$i]}" "${CMDS[$i]}"
done
if [ "$CALL" = 2 ] && [ "$MODE" = run ] && [ -f python/sp24/data/crossover.json ]; then
  cp -f python/sp24/data/crossover.json "$OUT/" 2>/dev/null || true
fi

# ---- summary -------------------------------------------------------------------------------------
total=$(($(date +%s) - T0))
fail_json=""
for f in "${failed[@]+"${failed[@]}"}"; do fail_json="${fail_json}${fail_json:+,}\"$f\""; done
echo "{\"call\":$CALL,\"budget_seconds\":$BUDGET,\"steps\":[${steps_json}],\"failed\":[${fail_json}],\"total_seconds\":${total}}" \
  >"$OUT/summary.json"
"$PY" -m sp24.bench summary "$OUT" --out "$OUT/SUMMARY.md" || { echo "(summary renderer failed; raw: $OUT/summary.json)"; failed+=("summary"); }
[ -f "$OUT/SUMMARY.md" ] && cat "$OUT/SUMMARY.md"
echo "== call $CALL: ${total}s of ${BUDGET}s; failed: ${failed[*]:-none}; logs and JSON in $OUT"
[ ${#failed[@]} -eq 0 ]
