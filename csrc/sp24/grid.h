// Launch grids of the tiled CUDA kernels, as plain host code (no CUDA, no torch) so that a machine
// without a GPU can test them (sp24._C.tile_grid, tests/test_grid_limits.py).
//
// A kernel over R x C tiles (R along the fast index) runs R*C blocks, numbered
//     b = blockIdx.y * gridDim.x + blockIdx.x,   tile (b % R, b / R),   b >= R*C: the block exits
// and folded onto grid.x (at most 2^31 - 1) first, grid.y (at most 65535) only beyond it. Neither
// limit then refuses a shape the CPU kernels accept: grid.y > 1 needs more than 2^31 - 1 tiles of
// at least 4096 elements, i.e. an operand beyond any GPU's memory. (Column tiles on grid.y capped
// K at 65535 * 256 and N, F at 65535 * 64 before.)
#pragma once
#include <cstdint>

#ifndef SP24_HD
#ifdef __CUDACC__
#define SP24_HD __host__ __device__ __forceinline__
#else
#define SP24_HD inline
#endif
#endif

namespace sp24 {

constexpr int64_t kMaxGridX = 2147483647;  // CUDA's limits on gridDim.x and gridDim.y
constexpr int64_t kMaxGridY = 65535;

// Tile sizes, shared by the launchers here and the kernels (csrc/cuda/sparse24_cuda.cu).
constexpr int64_t kRowTileRows = 64;   // sparsify24: 64 rows x 256 columns per block
constexpr int64_t kRowTileCols = 256;
constexpr int64_t kTTile = 64;         // sparsify24_transposed, transposed_split: 64 tokens x 64 columns

SP24_HD int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }  // no a + b - 1 overflow

struct TileGrid {
  uint32_t x = 0, y = 0;  // gridDim.x, gridDim.y (0 when there is nothing to launch)
  int64_t fast = 0;       // R: tiles along the fast index
  int64_t tiles = 0;      // R * C
  bool fits = true;       // false: more blocks than one launch can hold (see above: unreachable)
};

inline TileGrid tile_grid(int64_t fast, int64_t slow) {
  TileGrid g;
  g.fast = fast;
  if (fast <= 0 || slow <= 0) return g;
  if (__builtin_mul_overflow(fast, slow, &g.tiles)) {
    g.fits = false;
    return g;
  }
  const int64_t x = g.tiles < kMaxGridX ? g.tiles : kMaxGridX;
  const int64_t y = ceil_div(g.tiles, x);
  g.fits = y <= kMaxGridY;
  g.x = static_cast<uint32_t>(x);
  g.y = static_cast<uint32_t>(g.fits ? y : kMaxGridY);
  return g;
}

// The launchers' grids: sparsify24 over (M, K), the transposed kernels over (T tokens, N columns).
inline TileGrid sparsify24_grid(int64_t M, int64_t K) {
  return tile_grid(ceil_div(M, kRowTileRows), ceil_div(K, kRowTileCols));
}
inline TileGrid transposed_grid(int64_t T, int64_t N) { return tile_grid(ceil_div(T, kTTile), ceil_div(N, kTTile)); }

// The shared-memory tile of the transposed kernels, kTTile tokens x kTTile columns of es-byte
// elements: rows of kTTile elements without padding, and 32 bytes of padding after every 16-row
// block; element (t, c) sits tile_offset(es, t, c) elements from the start. (Why: the kernels'
// comment on TileLayout; tests/test_grid_limits.py counts the bank conflicts of their accesses.)
constexpr int kTileBlockRows = 16;
SP24_HD constexpr int tile_block_elems(int es) { return kTileBlockRows * static_cast<int>(kTTile) + 32 / es; }
SP24_HD constexpr int tile_elems(int es) { return static_cast<int>(kTTile) / kTileBlockRows * tile_block_elems(es); }
SP24_HD constexpr int tile_offset(int es, int t, int c) {
  return (t / kTileBlockRows) * tile_block_elems(es) + (t % kTileBlockRows) * static_cast<int>(kTTile) + c;
}

// Block b's tile: (b % fast, b / fast); false for the padding blocks b >= tiles of the last grid row.
SP24_HD bool tile_of(int64_t b, int64_t fast, int64_t tiles, int64_t& f, int64_t& s) {
  if (b >= tiles) return false;
  f = b % fast;
  s = b / fast;
  return true;
}

}  // namespace sp24
