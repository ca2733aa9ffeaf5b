// Host emulation of the CUDA subset used by csrc/cuda/*.cu: a TEST TOOL, never a runtime path.
//
// The same .cu file that nvcc compiles is compiled by g++ against this header (the folder
// csrc/emu/include holds cuda_runtime.h / cuda_fp16.h / cuda_bf16.h stand-ins that include it),
// with -DSP24_EMU, and every launch goes through sp24::launch_kernel (csrc/cuda/launch.cuh). The CI
// lane (scripts/emu.sh) builds it with ASan + UBSan and compares every output bit with the CPU
// kernels and sp24.reference.
//
// What is modelled, and how faithfully:
//   * Threads of a block run as real OS threads (a reused pool), handing one baton around: a thread
//     runs until it reaches a __syncthreads, a __shfl_xor_sync or its end, then the next one in the
//     block's schedule order runs. That is one legal interleaving of the CUDA model, chosen to be
//     the worst case for a missing barrier: no thread sees a write of a later thread unless a
//     barrier orders them. The schedule order changes from block to block (forward, reverse,
//     shuffled; SP24_EMU_ORDER=forward|reverse|shuffle pins one), so a wrong barrier, a read of
//     another thread's data before the barrier, or a wrong shuffle partner changes the output.
//     Blocks run one after another (alternating forward and reverse block order per launch).
//   * __shfl_xor_sync exchanges through per-warp slots; all 32 lanes must take part (full mask).
//   * __syncthreads with threads that never arrive is reported as a deadlock and aborts.
//   * uint2 / uint4 keep their hardware alignment (8 / 16 bytes), so a misaligned vector access is a
//     UBSan "misaligned address" error; __shared__ arrays are static arrays with their real bounds
//     (UBSan -fsanitize=bounds catches an index past a dimension).
//   * fp16 / bf16 conversions round to nearest-even; a NaN converts to 0x7FFF (see below).
//   * Launch limits are enforced like the hardware: a bad configuration does not run and
//     cudaGetLastError() returns cudaErrorInvalidConfiguration with a message naming the limit.
//   * atomicAdd / atomicMax are real atomics.
// Not modelled: timing, occupancy, the weak memory model between blocks and between threads inside
// a barrier interval (only one interleaving is ever run), shared memory as uninitialised storage
// (a __shared__ array keeps the previous block's contents), fp32 arithmetic NaN bits (the host FPU
// propagates a NaN operand's payload; GPU arithmetic writes the canonical 0x7FFFFFFF), fast-math
// intrinsics (none are used).
#pragma once
#ifndef SP24_EMU
#error "csrc/emu/cuda_emu.h is the host emulation of CUDA; build with -DSP24_EMU"
#endif

#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A block's shared memory: one static array per kernel instantiation. Blocks run one after another,
// so every thread of the running block sees the same array.
#define __shared__ static

// ---- vector and index types (hardware sizes and alignments) -----------------------------------
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
static_assert(sizeof(uint2) == 8 && alignof(uint2) == 8, "uint2 must be 8 bytes, 8-aligned as on the GPU");
static_assert(sizeof(uint4) == 16 && alignof(uint4) == 16, "uint4 must be 16 bytes, 16-aligned as on the GPU");
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return uint4{x, y, z, w}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }

// ---- 16-bit float types -----------------------------------------------------------------------
// Storage only (2 bytes, 2-aligned, trivial), like the real __half / __nv_bfloat16.
struct alignas(2) __half { unsigned short __x; };
struct alignas(2) __nv_bfloat16 { unsigned short __x; };
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit types must be 2 bytes");

namespace sp24_emu {
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
}  // namespace sp24_emu

// NaN: every NaN converts to 0x7FFF, sign and payload dropped. Evidence: CUDA 13.0's own headers,
// whose host code paths NVIDIA keeps equal to the device results -- cuda_fp16.hpp
// (__internal_float2half: "NaN/+Inf/-Inf" -> 0x7fffU for a NaN) and cuda_bf16.hpp
// (__internal_float2bfloat16: NaN -> 0x7fffU); both headers name 0x7FFF the canonical NaN
// (CUDART_NAN_FP16, CUDART_NAN_BF16). It is what cvt.rn.f16.f32 / cvt.rn.bf16.f32 write on the
// device per those headers; no GPU has confirmed it for this project (emulation only).
inline __half __float2half_rn(float f) {
  const uint32_t u = sp24_emu::f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  uint16_t h;
  if (a > 0x7f800000u) {
    h = 0x7fffu;                         // NaN: canonical
  } else if (a >= 0x477ff000u) {
    h = sign | 0x7c00u;                  // >= 65520 (the midpoint to 2^16) and Inf: Inf
  } else if (a < 0x38800000u) {          // below 2^-14: a subnormal half or zero
    if (a <= 0x33000000u) {
      h = sign;                          // <= 2^-25 (a tie with 0 goes to the even 0)
    } else {
      const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
      const uint32_t shift = 126u - e;   // value = m * 2^(e-150) = (m >> shift) * 2^-24
      uint32_t r = m >> shift;
      const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
      if (rem > half || (rem == half && (r & 1u))) ++r;
      h = static_cast<uint16_t>(sign | r);
    }
  } else {
    uint32_t r = (a - 0x38000000u) >> 13;  // rebias 127 -> 15
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    h = static_cast<uint16_t>(sign | r);
  }
  return __half{h};
}

// A NaN widens to 0x7FFFFFFF (sign dropped, all-ones mantissa), as cuda_fp16.hpp's host path of
// __half2float does; sp24 only ranks NaNs or feeds them to arithmetic, so the payload never
// reaches an output.
inline float __half2float(__half h) {
  const uint32_t x = h.__x, sign = (x & 0x8000u) << 16, e = (x >> 10) & 0x1fu;
  uint32_t m = x & 0x3ffu;
  if (e == 0x1fu) return sp24_emu::bits_f32(m ? 0x7fffffffu : (sign | 0x7f800000u));
  if (e == 0) {
    if (m == 0) return sp24_emu::bits_f32(sign);
    uint32_t ee = 113;
    while (!(m & 0x400u)) { m <<= 1; --ee; }
    return sp24_emu::bits_f32(sign | (ee << 23) | ((m & 0x3ffu) << 13));
  }
  return sp24_emu::bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = sp24_emu::f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};  // NaN: canonical
  const uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);                   // nearest, ties to even
  return __nv_bfloat16{static_cast<unsigned short>(r >> 16)};
}

// Exact (bf16 is the top half of an fp32), NaN payload kept, as on the device (a 16-bit shift).
inline float __bfloat162float(__nv_bfloat16 b) { return sp24_emu::bits_f32(static_cast<uint32_t>(b.__x) << 16); }

// ---- runtime API subset -----------------------------------------------------------------------
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };

namespace sp24_emu {

struct LastError {
  cudaError_t code = cudaSuccess;
  std::string message;  // kept after cudaGetLastError() resets the code (cudaGetErrorString reads it)
};
inline LastError& last_error() {
  static thread_local LastError e;
  return e;
}
inline void set_error(cudaError_t code, const std::string& msg) {
  last_error().code = code;
  last_error().message = msg;
}

// ---- the scheduler ----------------------------------------------------------------------------
enum class St : uint8_t { kNew, kReady, kRunning, kBarrier, kWarp, kDone };

struct Block;
struct Worker {
  std::condition_variable cv;
  Block* block = nullptr;
  int start = -1;  // an emulated thread this worker is asked to start
};

struct Block {
  dim3 grid, dim;
  uint3 idx;
  int n = 0, live = 0, bar_arrived = 0;
  const std::function<void()>* body = nullptr;
  std::vector<int> order;
  std::vector<St> st;
  std::vector<Worker*> owner;
  std::vector<int> warp_arrived;
  std::vector<uint64_t> slot, rel;
  bool done = false;
  std::condition_variable done_cv;
};

struct Stats {
  int64_t launches = 0, blocks = 0, threads = 0, barriers = 0, shuffles = 0, workers = 0, rejected = 0;
};

struct State {
  std::mutex mu;  // guards everything below and every Block; only one emulated thread runs at a time
  std::vector<Worker*> idle;
  Stats stats;
  uint64_t block_counter = 0;
  int order_mode = -1;  // -1: rotate; 0 forward, 1 reverse, 2 shuffle
  State() {
    const char* e = std::getenv("SP24_EMU_ORDER");
    const std::string m = e ? e : "";
    order_mode = m == "forward" ? 0 : m == "reverse" ? 1 : m == "shuffle" ? 2 : -1;
  }
};
// Never destroyed: pool threads are still blocked on their condition variables at exit.
inline State& state() {
  static State* s = new State;
  return *s;
}

struct Ctx {
  uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
  dim3 blockDim, gridDim;
  Block* block = nullptr;
  int tid = 0;
};
inline Ctx& ctx() {
  static thread_local Ctx c;
  return c;
}

[[noreturn]] inline void fatal(const std::string& msg) {
  std::fprintf(stderr, "sp24 CUDA emulation: %s\n", msg.c_str());
  std::fflush(stderr);
  std::abort();
}

inline int pick(const Block& b) {
  for (int t : b.order)
    if (b.st[t] == St::kNew || b.st[t] == St::kReady) return t;
  return -1;
}

[[noreturn]] inline void deadlock(const Block& b) {
  int at_bar = 0, at_warp = 0;
  for (St s : b.st) at_bar += s == St::kBarrier, at_warp += s == St::kWarp;
  fatal("deadlock in block (" + std::to_string(b.idx.x) + "," + std::to_string(b.idx.y) + "," +
        std::to_string(b.idx.z) + "): " + std::to_string(at_bar) + " threads wait in __syncthreads and " +
        std::to_string(at_warp) + " in a warp shuffle, " + std::to_string(b.live) +
        " threads alive (a barrier or shuffle not reached by every thread)");
}

void worker_main(Worker* w);

inline Worker* get_worker() {
  State& s = state();
  if (!s.idle.empty()) {
    Worker* w = s.idle.back();
    s.idle.pop_back();
    return w;
  }
  Worker* w = new Worker;
  ++s.stats.workers;
  std::thread(worker_main, w).detach();
  return w;
}

// Gives the baton to thread t of b (not the caller's). Lock held.
inline void hand_to(Block& b, int t) {
  if (b.st[t] == St::kNew) {
    Worker* w = get_worker();
    b.owner[t] = w;
    b.st[t] = St::kRunning;
    w->block = &b;
    w->start = t;
    w->cv.notify_one();
  } else {
    b.st[t] = St::kRunning;
    b.owner[t]->cv.notify_one();
  }
}

// The running thread `self` has put itself into a wait state: run the next thread, and return
// when `self` has the baton again. Lock held.
inline void wait_turn(std::unique_lock<std::mutex>& lk, Block& b, int self) {
  const int t = pick(b);
  if (t < 0) deadlock(b);
  if (t == self) {
    b.st[self] = St::kRunning;
    return;
  }
  hand_to(b, t);
  Worker* me = b.owner[self];
  me->cv.wait(lk, [&] { return b.st[self] == St::kRunning; });
}

inline void release_barrier(Block& b) {
  for (int i = 0; i < b.n; ++i)
    if (b.st[i] == St::kBarrier) b.st[i] = St::kReady;
  b.bar_arrived = 0;
  ++state().stats.barriers;
}

inline void set_ctx(Block& b, int t) {
  Ctx& c = ctx();
  c.block = &b;
  c.tid = t;
  c.blockDim = b.dim;
  c.gridDim = b.grid;
  c.blockIdx = b.idx;
  const unsigned u = static_cast<unsigned>(t);
  c.threadIdx = uint3{u % b.dim.x, (u / b.dim.x) % b.dim.y, u / (b.dim.x * b.dim.y)};
}

inline void worker_main(Worker* w) {
  State& s = state();
  std::unique_lock<std::mutex> lk(s.mu);
  for (;;) {
    w->cv.wait(lk, [&] { return w->start >= 0; });
    Block* b = w->block;
    int t = w->start;
    w->start = -1;
    for (;;) {
      b->owner[t] = w;
      set_ctx(*b, t);
      lk.unlock();
      (*b->body)();
      lk.lock();
      b->st[t] = St::kDone;
      --b->live;
      const int wp = t / 32;
      if (b->warp_arrived[wp] > 0) fatal("a thread exited while other lanes of its warp wait in __shfl_xor_sync");
      if (b->bar_arrived > 0 && b->bar_arrived == b->live) release_barrier(*b);
      const int nx = pick(*b);
      if (nx < 0) {
        if (b->live != 0) deadlock(*b);
        b->done = true;
        b->done_cv.notify_all();
        break;
      }
      if (b->st[nx] == St::kNew) {  // not started yet: run it on this OS thread
        b->st[nx] = St::kRunning;
        t = nx;
        continue;
      }
      hand_to(*b, nx);
      break;
    }
    s.idle.push_back(w);
  }
}

inline void make_order(Block& b) {
  State& s = state();
  const uint64_t k = s.block_counter++;
  const int mode = s.order_mode >= 0 ? s.order_mode : static_cast<int>(k % 3);
  b.order.resize(b.n);
  for (int i = 0; i < b.n; ++i) b.order[i] = mode == 1 ? b.n - 1 - i : i;
  if (mode == 2) {  // deterministic Fisher-Yates (splitmix64 of the block counter)
    uint64_t x = k * 0x9e3779b97f4a7c15ull + 0x5eed;
    for (int i = b.n - 1; i > 0; --i) {
      x += 0x9e3779b97f4a7c15ull;
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      std::swap(b.order[i], b.order[static_cast<int>(z % static_cast<uint64_t>(i + 1))]);
    }
  }
}

// Hardware launch limits (compute capability 8.x / 9.x).
inline std::string check_config(dim3 g, dim3 b, size_t smem) {
  auto d = [](dim3 v) {
    return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
  };
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  if (b.x == 0 || b.y == 0 || b.z == 0 || g.x == 0 || g.y == 0 || g.z == 0)
    return "invalid configuration argument: grid " + d(g) + " / block " + d(b) + " has a zero dimension";
  if (threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64)
    return "invalid configuration argument: block " + d(b) + " has " + std::to_string(threads) +
           " threads; the limits are 1024 threads and (1024, 1024, 64) per dimension";
  if (g.x > 2147483647u || g.y > 65535u || g.z > 65535u)
    return "invalid configuration argument: grid " + d(g) + " exceeds the limits (2147483647, 65535, 65535)";
  if (smem > 49152)
    return "invalid configuration argument: " + std::to_string(smem) +
           " bytes of dynamic shared memory, above the 48 KiB available without opt-in";
  return "";
}

inline void run_grid(dim3 grid, dim3 dim, const std::function<void()>& body) {
  State& s = state();
  std::unique_lock<std::mutex> lk(s.mu);
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  const bool reverse = (s.stats.launches & 1) != 0;
  ++s.stats.launches;
  for (uint64_t i = 0; i < nblocks; ++i) {
    const uint64_t lin = reverse ? nblocks - 1 - i : i;
    Block b;
    b.grid = grid;
    b.dim = dim;
    b.idx = uint3{static_cast<unsigned>(lin % grid.x), static_cast<unsigned>((lin / grid.x) % grid.y),
                  static_cast<unsigned>(lin / (uint64_t(grid.x) * grid.y))};
    b.n = static_cast<int>(dim.x * dim.y * dim.z);
    b.live = b.n;
    b.body = &body;
    b.st.assign(b.n, St::kNew);
    b.owner.assign(b.n, nullptr);
    b.warp_arrived.assign((b.n + 31) / 32, 0);
    b.slot.assign(b.warp_arrived.size() * 32, 0);
    b.rel.assign(b.slot.size(), 0);
    make_order(b);
    ++s.stats.blocks;
    s.stats.threads += b.n;
    hand_to(b, pick(b));
    b.done_cv.wait(lk, [&] { return b.done; });
  }
}

template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t, A&&... args) {
  const std::string why = check_config(grid, block, smem);
  if (!why.empty()) {  // like the hardware: nothing runs, the error waits for cudaGetLastError()
    {
      std::lock_guard<std::mutex> g(state().mu);
      ++state().stats.rejected;
    }
    set_error(cudaErrorInvalidConfiguration, why);
    return;
  }
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);  // converted as a kernel call would
  const std::function<void()> body = [&] { std::apply(kernel, params); };
  run_grid(grid, block, body);
}

inline Stats stats() {
  std::lock_guard<std::mutex> g(state().mu);
  return state().stats;
}
inline void set_order(int mode) {
  std::lock_guard<std::mutex> g(state().mu);
  state().order_mode = mode;
}

}  // namespace sp24_emu

#define threadIdx (::sp24_emu::ctx().threadIdx)
#define blockIdx (::sp24_emu::ctx().blockIdx)
#define blockDim (::sp24_emu::ctx().blockDim)
#define gridDim (::sp24_emu::ctx().gridDim)

// ---- device functions -------------------------------------------------------------------------
inline void __syncthreads() {
  using namespace sp24_emu;
  Block& b = *ctx().block;
  const int self = ctx().tid;
  std::unique_lock<std::mutex> lk(state().mu);
  b.st[self] = St::kBarrier;
  if (++b.bar_arrived == b.live) release_barrier(b);
  wait_turn(lk, b, self);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  using namespace sp24_emu;
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move at most 8 bytes");
  Block& b = *ctx().block;
  const int self = ctx().tid, w = self / 32, lane = self % 32;
  if (mask != 0xffffffffu || width != 32) fatal("__shfl_xor_sync: only full-warp shuffles are emulated");
  if ((w + 1) * 32 > b.n) fatal("__shfl_xor_sync in a partial warp (block of " + std::to_string(b.n) + " threads)");
  if (lane_mask < 0 || lane_mask > 31) fatal("__shfl_xor_sync: laneMask " + std::to_string(lane_mask) + " outside 0..31");
  std::unique_lock<std::mutex> lk(state().mu);
  uint64_t v = 0;
  std::memcpy(&v, &var, sizeof(T));
  b.slot[w * 32 + lane] = v;
  b.st[self] = St::kWarp;
  if (++b.warp_arrived[w] == 32) {  // the whole warp is here: publish its values
    for (int l = 0; l < 32; ++l) {
      b.rel[w * 32 + l] = b.slot[w * 32 + l];
      b.st[w * 32 + l] = St::kReady;
    }
    b.warp_arrived[w] = 0;
    ++state().stats.shuffles;
  }
  wait_turn(lk, b, self);
  T out;
  std::memcpy(&out, &b.rel[w * 32 + (lane ^ lane_mask)], sizeof(T));
  return out;
}

template <typename T>
inline T __ldg(const T* p) {
  return *p;  // a misaligned vector pointer is a UBSan error here, as it is a fault on the GPU
}

template <typename T>
inline T atomicAdd(T* p, T v) {
  static_assert(std::is_integral<T>::value, "emulated atomicAdd: integer types only");
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline int atomicMax(int* p, int v) {
  int old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = sp24_emu::last_error().code;
  sp24_emu::last_error().code = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return sp24_emu::last_error().code; }
inline const char* cudaGetErrorString(cudaError_t e) {
  if (e == cudaSuccess) return "no error";
  const std::string& m = sp24_emu::last_error().message;
  return m.empty() ? "unknown error" : m.c_str();
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t = nullptr) {
  if (bytes != 0 && p == nullptr) {
    sp24_emu::set_error(cudaErrorInvalidValue, "cudaMemsetAsync: null pointer");
    return cudaErrorInvalidValue;
  }
  std::memset(p, value, bytes);
  return cudaSuccess;
}
