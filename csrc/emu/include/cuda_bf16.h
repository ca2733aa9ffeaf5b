// Stand-in for the CUDA toolkit's <cuda_bf16.h> in the host emulation build only (g++ -Icsrc/emu/include
// -DSP24_EMU): csrc/cuda/*.cu include the real header under nvcc and this one under g++.
#pragma once
#include "../cuda_emu.h"
