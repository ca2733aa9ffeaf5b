#!/usr/bin/env bash
# One entry point that works on a fresh machine: creates a venv (if needed), installs torch and the
# build/test tools, builds sp24 against that torch, then runs what was asked.
#
#   bash scripts/dev.sh test [pytest args]   # the test suite
#   bash scripts/dev.sh demo [demo args]     # the main job (python -m sp24.demo)
#   bash scripts/dev.sh check                # python -m sp24: build info + every op vs the oracle
#   bash scripts/dev.sh build                # only (re)build
#   bash scripts/dev.sh emu [pytest args]    # the CUDA kernels run on the CPU under ASan + UBSan, bit for
#                                            # bit against the CPU kernels (scripts/emu.sh; no GPU needed)
#   bash scripts/dev.sh emu-plant [NAME ...] # plants known bugs in a temp copy; the lane must fail on each
#
# Environment:
#   SP24_VENV   venv folder (default .venv)
#   SP24_TORCH  torch requirement (default torch==2.13.0, a CPU build; torch==2.11.0 is the CUDA one)
#   SP24_CUDA   AUTO|ON|OFF for the build (default AUTO: CUDA kernels iff torch is a CUDA build + nvcc)
#   TORCH_CUDA_ARCH_LIST  CUDA archs (default 8.0;9.0a)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${SP24_VENV:-.venv}
TORCH_REQ=${SP24_TORCH:-torch==2.13.0}
what=${1:-test}
shift || true

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.sp24-deps"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$TORCH_REQ" ]; then
  "$PY" -m pip install -q --disable-pip-version-check "$TORCH_REQ" numpy pytest hypothesis expecttest \
    scikit-build-core pybind11 cmake ninja matplotlib tqdm
  echo "$TORCH_REQ" > "$stamp"
fi

build() {
  # one CMake build folder per venv: a CPU-torch and a CUDA-torch build must not share a cache
  SKBUILD_BUILD_DIR="build/$(basename "$VENV")" "$PY" -m pip install -q --disable-pip-version-check \
    --no-build-isolation --no-deps -e .
}

case "$what" in
  build) build ;;
  test) build; "$PY" -m pytest -q "$@" ;;
  check) build; "$PY" -m sp24 "$@" ;;
  demo) build; "$PY" -m sp24.demo "$@" ;;
  emu) build; bash scripts/emu.sh "$PY" "$@" ;;
  emu-plant) build; "$PY" scripts/emu_plant.py "$PY" "$@" ;;
  *) echo "usage: bash scripts/dev.sh {test|demo|check|build|emu|emu-plant} [args]" >&2; exit 2 ;;
esac
