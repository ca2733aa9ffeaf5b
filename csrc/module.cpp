// The pybind11 module sp24._C: build information and plain helpers. Tensor ops are not exposed
// here; they are registered with TORCH_LIBRARY (schemas.cpp) and reached as torch.ops.sp24.*.
// Keeping at::Tensor out of pybind signatures avoids torch/extension.h, libtorch_python and a
// clash between pip's pybind11 and the copy torch bundles.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "sp24/cslt_alg.h"
#include "sp24/fp8.h"
#include "sp24/cslt_identity.h"
#include "sp24/cslt_layout.h"
#include "sp24/grid.h"
#include "sp24_build_config.h"

#ifdef SP24_WITH_CUDA
#include <cuda_runtime_api.h>
#include "cusparselt/cslt.h"
#include "cusparselt/version.h"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "sp24 native module: build information (ops live in torch.ops.sp24)";
  m.def("build_info", []() {
    py::dict d;
    d["torch_version"] = SP24_TORCH_VERSION;
#ifdef SP24_WITH_CUDA
    d["with_cuda"] = true;
    d["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
    d["cuda_archs"] = SP24_CUDA_ARCHS;
    d["cusparselt_version"] = std::to_string(SP24_CSLT_MAJOR) + "." + std::to_string(SP24_CSLT_MINOR) + "." +
                              std::to_string(SP24_CSLT_PATCH);
#else
    d["with_cuda"] = false;
    d["cuda_version"] = py::none();
    d["cuda_archs"] = "";
    d["cusparselt_version"] = py::none();
#endif
    d["compiler"] =
#if defined(__clang__)
        std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        std::string("gcc ") + __VERSION__;
#else
        std::string("unknown");
#endif
    return d;
  });
  // What the check of the direct cuSPARSELt layout writer found (csrc/cusparselt/cslt.h), per key.
  m.def("cslt_direct_layout_checks", []() {
    py::list out;
#ifdef SP24_WITH_CUDA
    for (const auto& c : sp24::cslt::direct_layout_checks()) {
      py::dict d;
      d["writer"] = c.writer;
      d["device"] = c.device;
      d["dtype"] = c.dtype;
      d["M"] = c.M;
      d["K"] = c.K;
      d["bytes"] = c.bytes;
      d["same"] = c.same;
      out.append(d);
    }
#endif
    return out;
  });
  // How many of torch's intra-op threads an at::parallel_for over n items runs on, as the CPU kernels
  // use it: 1 if the extension were built without OpenMP (tests/test_cpu_threads.py).
  m.def("parallel_threads_seen", [](int64_t n) {
    std::mutex mu;
    std::set<int> seen;
    at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
      std::lock_guard<std::mutex> lock(mu);
      seen.insert(at::get_thread_num());
    });
    return static_cast<int64_t>(seen.size());
  }, py::arg("n"));
  // The CUDA launchers' grids and shared tile layout (sp24/grid.h), plain host code: the shape limits
  // and the bank conflicts are tested without a GPU (tests/test_grid_limits.py).
  m.def("launch_grid", [](const std::string& kernel, int64_t rows, int64_t cols) {
    sp24::TileGrid g;
    if (kernel == "sparsify24") {
      g = sp24::sparsify24_grid(rows, cols);
    } else if (kernel == "transposed") {
      g = sp24::transposed_grid(rows, cols);
    } else {
      throw std::invalid_argument("sp24._C.launch_grid: kernel must be 'sparsify24' or 'transposed', got '" + kernel + "'");
    }
    py::dict d;
    d["x"] = g.x;
    d["y"] = g.y;
    d["fast"] = g.fast;
    d["tiles"] = g.tiles;
    d["fits"] = g.fits;
    return d;
  }, py::arg("kernel"), py::arg("rows"), py::arg("cols"));
  m.def("tile_offset", &sp24::tile_offset, py::arg("elem_size"), py::arg("t"), py::arg("c"));
  m.def("tile_elems", &sp24::tile_elems, py::arg("elem_size"));
  // Host run of the direct writer's metadata function (the CUDA kernel is a grid-stride loop over
  // it), so that a machine without a GPU can check it against sp24.reference.cslt_layout.
  m.def("cslt_meta_host", [](py::bytes indices, int64_t M, int64_t K) {
    std::string idx = indices;
    if (!sp24::cslt_layout_domain(M, K) || static_cast<int64_t>(idx.size()) != M * K / 2) {
      throw std::invalid_argument("sp24._C.cslt_meta_host: needs M % 64 == 0, K % 32 == 0 and M*K/2 index bytes");
    }
    std::string meta(static_cast<size_t>(M * K / 8), '\0');
    for (int64_t off = 0; off < M * K / 8; ++off) {
      meta[off] = static_cast<char>(sp24::cslt_meta_byte(reinterpret_cast<const uint8_t*>(idx.data()), K, off));
    }
    return py::bytes(meta);
  }, py::arg("indices"), py::arg("M"), py::arg("K"));
  // sp24's float -> e4m3 and e4m3 -> float conversions (sp24/fp8.h, the functions every kernel
  // runs) on host bytes, so that the tests can hold them against torch over whole ranges of floats.
  m.def("e4m3_from_float", [](py::bytes floats) {
    std::string in = floats;
    if (in.size() % 4 != 0) throw std::invalid_argument("sp24._C.e4m3_from_float: needs whole float32s (4 bytes each)");
    std::string out(in.size() / 4, '\0');
    for (size_t i = 0; i < out.size(); ++i) {
      float f;
      std::memcpy(&f, in.data() + 4 * i, 4);
      out[i] = static_cast<char>(sp24::e4m3_from_float(f));
    }
    return py::bytes(out);
  }, py::arg("floats"));
  m.def("e4m3_to_float", [](py::bytes codes) {
    std::string in = codes;
    std::string out(in.size() * 4, '\0');
    for (size_t i = 0; i < in.size(); ++i) {
      const float f = sp24::e4m3_to_float(static_cast<uint8_t>(in[i]));
      std::memcpy(&out[4 * i], &f, 4);
    }
    return py::bytes(out);
  }, py::arg("codes"));
  // The attributes sp24 writes back after a cuSPARSELt search (sp24/cslt_alg.h), as a tuple
  // (id, split_k, split_k_mode, split_k_buffers); -1 = cuSPARSELt's default.
  m.def("cslt_normalize_alg", [](int id, int split_k, int mode, int buffers) {
    const sp24::CsltAlg n = sp24::normalize_cslt_alg({id, split_k, mode, buffers});
    return py::make_tuple(n.id, n.split_k, n.split_k_mode, n.split_k_buffers);
  }, py::arg("id"), py::arg("split_k"), py::arg("split_k_mode"), py::arg("split_k_buffers"));
  // The 8 identity words of a GEMM-ready buffer made on `device_type` ("cpu" or "cuda") with
  // device index `device_index`, for a 2:4 (m, k) operand of `dtype` ("float16" / "bfloat16").
  m.def("cslt_identity", [](const std::string& device_type, int device_index, int64_t m, int64_t k,
                            const std::string& dtype) {
    sp24::CsltIdentity id;
    id.m = m;
    id.k = k;
    if (dtype == "float16") {
      id.dtype = 1;
    } else if (dtype == "bfloat16") {
      id.dtype = 2;
    } else {
      throw std::invalid_argument("sp24._C.cslt_identity: dtype must be float16 or bfloat16, got " + dtype);
    }
    if (device_type == "cpu") {
      id.kind = sp24::kLayoutCpuPacking;
    } else if (device_type == "cuda") {
#ifdef SP24_WITH_CUDA
      id.kind = sp24::kLayoutCusparselt;
      id.cslt_version = sp24::cslt::runtime_version();
      id.arch = sp24::cslt::device_arch(device_index);
#else
      throw std::invalid_argument("sp24._C.cslt_identity: this build has no CUDA kernels");
#endif
    } else {
      throw std::invalid_argument("sp24._C.cslt_identity: no GEMM-ready buffer layout for device " + device_type);
    }
    int64_t w[sp24::kCsltIdentityWords];
    id.to_words(w);
    py::list out;
    for (int64_t v : w) out.append(v);
    return out;
  }, py::arg("device_type"), py::arg("device_index"), py::arg("m"), py::arg("k"), py::arg("dtype"));
  // The cuSPARSELt statuses that make sparse24_mm fall back to the dense GEMM (every other one raises).
  m.def("cslt_fallback_statuses", []() {
    py::list out;
#ifdef SP24_WITH_CUDA
    std::vector<std::string> names;
    for (int s = 0; s <= 32; ++s) {
      if (!sp24::cslt::is_unsupported(s)) continue;
      const char* n = cusparseLtGetErrorName(static_cast<cusparseStatus_t>(s));
      names.push_back(n ? n : std::to_string(s));
    }
    std::sort(names.begin(), names.end());
    for (const auto& n : names) out.append(n);
#endif
    return out;
  });
  // cuSPARSELt versions (sp24::cslt_version_code: major*1000000 + minor*1000 + patch): the headers sp24 was compiled against and
  // the library the loader resolved (no GPU needed), and the mismatch message ("" if usable).
  m.def("cslt_version_code", &sp24::cslt_version_code, py::arg("major"), py::arg("minor"), py::arg("patch"));
  m.def("cslt_version_string", &sp24::cslt_version_string, py::arg("code"));
  m.def("cslt_versions", []() {
    py::dict d;
#ifdef SP24_WITH_CUDA
    d["header"] = sp24::cslt::header_version();
    d["runtime"] = sp24::cslt::runtime_version();
    d["mismatch"] = sp24::cslt::version_mismatch();
#else
    d["header"] = py::none();
    d["runtime"] = py::none();
    d["mismatch"] = "this build has no CUDA kernels";
#endif
    return d;
  });
}
