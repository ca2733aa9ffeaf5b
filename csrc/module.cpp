// The pybind11 module sp24._C: build information and plain helpers. Tensor ops are not exposed
// here; they are registered with TORCH_LIBRARY (schemas.cpp) and reached as torch.ops.sp24.*.
// Keeping at::Tensor out of pybind signatures avoids torch/extension.h, libtorch_python and a
// clash between pip's pybind11 and the copy torch bundles.
#include <pybind11/pybind11.h>

#include <string>

#include "sp24_build_config.h"

#ifdef SP24_WITH_CUDA
#include <cuda_runtime_api.h>
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
}
