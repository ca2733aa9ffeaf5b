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
#   TORCH_CUDA_ARCH_LIST  CUDA archs (default 8.0;9.0a;10.0;11.0;12.0+PTX)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${SP24_VENV:-.venv}
TORCH_REQ=${SP24_TORCH:-torch==2.13.0}
what=${1:-test}
shift || true
case "$what" in test|demo|check|build|emu|emu-plant) ;; *)
  echo "usage: bash scripts/dev.sh {test|demo|check|build|emu|emu-plant} [args]" >&2; exit 2 ;;
esac

# One line per stage on stderr, with the time since the start: the first run spends minutes in
# pip and the compiler, and should say so rather than sit silent.
t0=$(date +%s)
stage() { local s=$(( $(date +%s) - t0 )); printf '[sp24 %d:%02d] %s\n' $((s / 60)) $((s % 60)) "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  stage "venv: creating $VENV (python3 -m venv)"
  python3 -m venv "$VENV"
else
  stage "venv: using $VENV"
fi
PY="$VENV/bin/python"
# the test extra's Hugging Face packages (tests/test_hf.py), pinned for reproducible runs
# and torchtitan (tests/test_torchtitan.py: sp24.integrations.torchtitan), which imports triton unconditionally
HF_REQS="transformers==5.24.0 peft==0.21.2 torchtitan==0.3.0 triton"
stamp="$VENV/.sp24-deps"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$TORCH_REQ $HF_REQS" ]; then
  stage "deps: installing $TORCH_REQ, the build/test tools and the test extra ($HF_REQS) into $VENV (first time only; about a minute for the CPU torch)"
  # shellcheck disable=SC2086  # HF_REQS is a list of requirements
  "$PY" -m pip install -q --disable-pip-version-check "$TORCH_REQ" numpy pytest hypothesis expecttest \
    scikit-build-core pybind11 cmake ninja matplotlib tqdm $HF_REQS
  echo "$TORCH_REQ $HF_REQS" > "$stamp"
else
  stage "deps: $TORCH_REQ, the tools and the test extra already installed in $VENV"
fi

build() {
  stage "build: compiling sp24 against $("$PY" -c 'import torch; print("torch", torch.__version__)') (CMake + C++; first time 30-60 s on 2 cores, then incremental)"
  # one CMake build folder per venv: a CPU-torch and a CUDA-torch build must not share a cache
  SKBUILD_BUILD_DIR="build/$(basename "$VENV")" "$PY" -m pip install -q --disable-pip-version-check \
    --no-build-isolation --no-deps -e .
}

case "$what" in
  build) build; stage "build: done" ;;
  test) build; stage "run: python -m pytest -q $*"; "$PY" -m pytest -q "$@" ;;
  check) build; stage "run: python -m sp24 $*"; "$PY" -m sp24 "$@" ;;
  demo) build; stage "run: python -m sp24.demo $*"; "$PY" -m sp24.demo "$@" ;;
  emu) build; stage "run: bash scripts/emu.sh"; bash scripts/emu.sh "$PY" "$@" ;;
  emu-plant) build; stage "run: scripts/emu_plant.py"; "$PY" scripts/emu_plant.py "$PY" "$@" ;;
esac
