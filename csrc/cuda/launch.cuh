// The one place that launches a kernel. Every launch in csrc/cuda goes through launch_kernel, so
// the same .cu compiles with nvcc (a <<<>>> launch) and as host C++ against the emulation header
// csrc/emu/cuda_emu.h (-DSP24_EMU: threads of a block run as real threads with barriers), which
// the CI emulation lane runs under ASan + UBSan (scripts/emu.sh).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

namespace sp24 {

template <typename... P, typename... A>
inline void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          A&&... args) {
#ifdef SP24_EMU
  ::sp24_emu::launch(kernel, grid, block, smem, stream, std::forward<A>(args)...);
#else
  kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
#endif
}

}  // namespace sp24
