"""The CUDA launchers' grids and shared tile layout (csrc/sp24/grid.h), tested on the host.

* Grid limits: every tiled kernel numbers its blocks linearly over (grid.x, grid.y), so the CPU,
  Meta and CUDA ops accept the same shapes. Column tiles on grid.y alone (at most 65535) would cap
  sparsify24 at K <= 16,776,960 and the transposed kernels at N, F <= 4,194,240 on CUDA only
  (OLD_K_CAP, OLD_N_CAP; the tests go past them). The launchers' grid function is plain host code
  (sp24._C.launch_grid); the emulation lane runs the kernels themselves.
* Bank conflicts: with a shared tile pitch of 66 elements (old_offset) the 4 lanes that read one
  column 16 rows apart would share banks (2-way for 16-bit types, 4-way for fp32). The tile pads 32
  bytes per 16-row block instead (sp24._C.tile_offset); the counts below follow the kernels' thread
  mappings (csrc/cuda/sparse24_cuda.cu).
"""

import pytest
import torch

from sp24 import _C, _ops

OLD_K_CAP, OLD_N_CAP = 65535 * 256, 65535 * 64  # the largest K / N, F with column tiles on grid.y alone
MAX_X, MAX_Y = 2**31 - 1, 65535


def ceil_div(a, b):
    return -(-a // b)


@pytest.mark.parametrize("kernel,rows,cols,tile", [
    ("sparsify24", 64, OLD_K_CAP + 256, (64, 256)),
    ("sparsify24", 3, 2**31, (64, 256)),
    ("sparsify24", 2**20, 2**22, (64, 256)),
    ("transposed", 64, OLD_N_CAP + 64, (64, 64)),
    ("transposed", 4, 2**32, (64, 64)),
    ("transposed", 2**17, 2**17, (64, 64)),
])
def test_launch_grid_fits_beyond_the_old_caps(kernel, rows, cols, tile):
    g = _C.launch_grid(kernel, rows, cols)
    tiles = ceil_div(rows, tile[0]) * ceil_div(cols, tile[1])
    assert g["fits"] and g["tiles"] == tiles and g["fast"] == ceil_div(rows, tile[0])
    assert 1 <= g["x"] <= MAX_X and 1 <= g["y"] <= MAX_Y
    assert g["x"] * g["y"] >= tiles  # every tile gets a block
    assert g["x"] * (g["y"] - 1) < tiles  # and no whole grid row of padding blocks


def test_launch_grid_folds_onto_grid_y_only_past_grid_x():
    g = _C.launch_grid("transposed", 2**40, 2**12)  # 2^40 tiles: more than grid.x holds
    assert g["fits"] and g["x"] == MAX_X and g["y"] == ceil_div(2**40, MAX_X)
    small = _C.launch_grid("sparsify24", 65, 257)
    assert (small["x"], small["y"], small["tiles"]) == (4, 1, 4)
    assert not _C.launch_grid("transposed", 2**62, 2**62)["fits"]  # beyond any launch: refused, no overflow
    assert _C.launch_grid("sparsify24", 0, 128)["tiles"] == 0
    # tile counts near INT64_MAX: no overflow in the ceil-division
    g = _C.launch_grid("transposed", 2**63 - 1, 1)
    assert g["fast"] == ceil_div(2**63 - 1, 64) and g["fast"] > 0 and not g["fits"]
    assert _C.launch_grid("sparsify24", 1, 2**63 - 100)["tiles"] == ceil_div(2**63 - 100, 256)
    with pytest.raises(ValueError, match="kernel must be 'sparsify24' or 'transposed', got 'rows'"):
        _C.launch_grid("rows", 1, 1)


def test_cpu_and_meta_accept_shapes_beyond_the_old_cuda_caps():
    K = OLD_K_CAP + 256
    x = torch.zeros(1, K, dtype=torch.bfloat16)
    x[0, -4:] = torch.tensor([1.0, -3.0, 2.0, 0.5])
    v, i, _ = _ops.sparsify24(x, "largest_abs", None, False)
    assert v.shape == (1, K // 2) and v[0, -2:].tolist() == [-3.0, 2.0] and i[0, -2:].tolist() == [1, 2]
    vm, im, _ = _ops.sparsify24(x.to("meta"), "largest_abs", None, False)
    assert vm.shape == (1, K // 2) and im.shape == (1, K // 2)
    N = OLD_N_CAP + 64
    xt = torch.zeros(4, N, dtype=torch.bfloat16)
    xt[:, -1] = torch.tensor([1.0, -3.0, 2.0, 0.5])
    cols = torch.tensor([N - 1, 0])
    tv, ti = _ops.sparsify24_transposed(xt, "largest_abs", cols)
    assert tv.tolist() == [[-3.0, 2.0], [0.0, 0.0]] and ti.tolist() == [[1, 2], [0, 1]]
    assert _ops.sparsify24_transposed(xt.to("meta"), "largest_abs", None)[0].shape == (N, 2)
    sv, si, _ = _ops.sparsify24(xt, "largest_abs", None, False)  # (4, N) row-wise 2:4, F = N
    out = _ops.transposed_split(sv, si, cols, cols, "largest_abs")
    assert out[0].tolist() == [[-3.0, 2.0], [0.0, 0.0]] and out[2][0].tolist() == [1.0, -3.0, 2.0, 0.5]


# ---- shared-memory bank conflicts of the transposed kernels' tile ----------------------------------
def conflicts(accesses):
    """Worst bank conflict of one shared-memory instruction: accesses = [(byte address, bytes)] of the
    threads served together. Distinct 4-byte words in one of the 32 banks are serialised; threads
    reading the same word are not."""
    words = {a // 4 + k for a, n in accesses for k in range(max(1, n // 4))}
    per_bank = {}
    for w in words:
        per_bank[w % 32] = per_bank.get(w % 32, 0) + 1
    return max(per_bank.values())


def compute_phase(es, offset):
    """token24_store and the split's dense read: thread tid -> column j = tid // 4, part = tid % 4,
    reading tile rows part*16 + r, one instruction per r. Worst over warps and instructions."""
    return max(conflicts([(offset(es, (tid % 4) * 16 + r, tid // 4) * es, es) for tid in range(32 * w, 32 * w + 32)])
               for w in range(8) for r in range(16))


def new_offset(es, t, c):
    return _C.tile_offset(es, t, c)


def old_offset(es, t, c):  # a T tile[64][64 + 2]: one 2-element pad per row
    return t * 66 + c


@pytest.mark.parametrize("es", [2, 4], ids=["16bit", "fp32"])
def test_tile_compute_phase_is_conflict_free(es):
    assert compute_phase(es, old_offset) == {2: 2, 4: 4}[es]  # what the review found
    assert compute_phase(es, new_offset) == 1


@pytest.mark.parametrize("es", [2, 4], ids=["16bit", "fp32"])
def test_tile_load_phases_are_conflict_free(es):
    for t in range(64):
        assert new_offset(es, t, 0) * es % 16 == 0, "rows must stay 16-byte aligned for the vector stores"
    assert _C.tile_elems(es) * es == 64 * 64 * es + 4 * 32  # 32 bytes per 16-row block, no more
    # sparsify24_transposed, vectorised load: 16-byte chunks, chunk ch of row tt; a 16-byte store is
    # served a quarter-warp (8 threads) at a time
    E = 16 // es
    cpr = 64 // E
    for k in range(64 // (256 // cpr)):
        for q in range(256 // 8):
            tids = range(8 * q, 8 * q + 8)
            acc = [(new_offset(es, tid // cpr + k * (256 // cpr), (tid % cpr) * E) * es, 16) for tid in tids]
            assert conflicts(acc) == 1
    # element-wise load: j = tid % 64, row tid // 64 + 4k, a warp at a time
    for k in range(16):
        for w in range(8):
            acc = [(new_offset(es, tid // 64 + 4 * k, tid % 64) * es, es) for tid in range(32 * w, 32 * w + 32)]
            assert conflicts(acc) == 1
    # transposed_split: group q = tid % 16 of row tid // 16 + 16k, 4 elements (8 or 16 bytes) per
    # store; an 8-byte store is served a half-warp at a time, a 16-byte one a quarter-warp
    n = 16 if es == 2 else 8
    for k in range(4):
        for q in range(256 // n):
            acc = [(new_offset(es, tid // 16 + 16 * k, 4 * (tid % 16)) * es, 4 * es) for tid in range(n * q, n * q + n)]
            assert conflicts(acc) == 1
