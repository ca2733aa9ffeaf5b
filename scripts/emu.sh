#!/usr/bin/env bash
# The CUDA emulation lane: csrc/cuda/*.cu compiled as host C++ (g++) against csrc/emu/cuda_emu.h
# with ASan + UBSan (no recovery), loaded by tests/emu through ctypes, every output compared bit for
# bit with the CPU kernels and sp24.reference. Beside it, the cuSPARSELt core (csrc/cusparselt/core.cpp)
# compiled against the contract test double of the cuSPARSELt API (csrc/emu/cusparselt/), which
# tests/emu/test_cslt_contract.py drives through sp24's call sequences. Needs no GPU and no CUDA toolkit.
#
#   bash scripts/emu.sh PYTHON [pytest args]     (normally through: bash scripts/dev.sh emu)
#
# PYTHON must import a built sp24 (the CPU ops are the comparison). The sanitizer runtime is
# preloaded into that Python (with libstdc++, which ASan's __cxa_throw interceptor needs at start).
# Any sanitizer report aborts the run; a kernel mismatch fails its test. (--capture=sys: a report
# goes to the real stderr, not into pytest's capture file, which an abort would lose.) Environment:
#   SP24_EMU_CXX    compiler (default g++)
#   SP24_EMU_ORDER  pin the thread order inside a block: forward | reverse | shuffle (default: rotate)
#   SP24_EMU_SRC    folder holding csrc/ (default: this checkout; scripts/emu_plant.sh builds a copy)
#   SP24_EMU_OUT    build folder of the library (default build/emu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: bash scripts/emu.sh PYTHON [pytest args]}
shift
CXX=${SP24_EMU_CXX:-g++}
SRC=${SP24_EMU_SRC:-.}
OUT=${SP24_EMU_OUT:-build/emu}
mkdir -p "$OUT"
lib="$OUT/libsp24emu.so"
cslt_lib="$OUT/libsp24cslt.so"

asan=$("$CXX" -print-file-name=libasan.so)
stdcxx=$("$CXX" -print-file-name=libstdc++.so)
if [ ! -e "$asan" ] || [ "$asan" = "libasan.so" ]; then
  echo "scripts/emu.sh: $CXX has no AddressSanitizer runtime (libasan.so); install it, e.g. apt-get install libasan8" >&2
  exit 1
fi

t0=$(date +%s)
echo "=== emulation lane: building $SRC/csrc/cuda/*.cu as host C++ with ASan + UBSan ==="
"$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Wall -Wextra -Wno-unknown-pragmas -Werror -fPIC -shared -pthread -DSP24_EMU -DSP24_WITH_CUDA=1 \
  -I"$SRC/csrc/emu/include" -I"$SRC/csrc" -x c++ "$SRC"/csrc/cuda/*.cu -x c++ "$SRC/csrc/emu/emu_capi.cpp" -o "$lib"
echo "built $lib in $(( $(date +%s) - t0 )) s"
t1=$(date +%s)
"$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Wall -Wextra -Werror -fPIC -shared -pthread -I"$SRC/csrc/emu/cusparselt" -I"$SRC/csrc" \
  "$SRC/csrc/cusparselt/core.cpp" "$SRC/csrc/emu/cusparselt/cusparselt_double.cpp" "$SRC/csrc/emu/cslt_capi.cpp" \
  -o "$cslt_lib"
echo "built $cslt_lib (cuSPARSELt core + contract double) in $(( $(date +%s) - t1 )) s"
# The double's own self-test: each documented rule it models refused with its status, and its
# products equal a naive fp32-accumulated product (its results are what the contract tests trust).
"$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Wall -Wextra -Werror -pthread -I"$SRC/csrc/emu/cusparselt" "$SRC/csrc/emu/cusparselt/cusparselt_double.cpp" \
  "$SRC/csrc/emu/cusparselt/selftest.cpp" -o "$OUT/cslt_double_selftest"
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1" "$OUT/cslt_double_selftest" | tail -n 3

case "${SP24_EMU_ORDER:-}" in
  "") ;;
  forward|reverse|shuffle) ;;
  *) echo "scripts/emu.sh: SP24_EMU_ORDER must be forward, reverse or shuffle, got '${SP24_EMU_ORDER}'" >&2; exit 2 ;;
esac

LD_PRELOAD="$asan $stdcxx" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
SP24_EMU_LIB="$PWD/$lib" \
SP24_CSLT_LIB="$PWD/$cslt_lib" \
  "$PY" -m pytest -q -rfE --capture=sys -p no:cacheprovider tests/emu "$@"
echo "emulation lane done in $(( $(date +%s) - t0 )) s"
