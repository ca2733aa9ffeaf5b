# cuBLAS (for the compiled benchmarks in bench/ only; the extension itself does not link it): the
# copy that the installed torch itself loads, from the `nvidia-cublas*` wheel torch depends on.
#   CUDA 13 wheels: <site-packages>/nvidia/cu13/{include,lib}/ (libcublas.so.13, libcublasLt.so.13)
#   CUDA 12 wheels: <site-packages>/nvidia/cublas/{include,lib}/ (libcublas.so.12)
# The wheels ship only versioned .so files, so we ask for them by full name. Falls back to the
# CUDA toolkit's copy; override with -DCUBLAS_ROOT=/path.
set(_sp24_cublas_hints
  ${CUBLAS_ROOT}
  ${SP24_SITE_PACKAGES}/nvidia/cu13
  ${SP24_SITE_PACKAGES}/nvidia/cublas
  ${SP24_SITE_PACKAGES}/nvidia/cu12)

find_path(CUBLAS_INCLUDE_DIR cublas_v2.h HINTS ${_sp24_cublas_hints} ${CUDAToolkit_INCLUDE_DIRS}
  PATH_SUFFIXES include NO_DEFAULT_PATH)
find_library(CUBLAS_LIBRARY NAMES libcublas.so.13 libcublas.so.12 cublas
  HINTS ${_sp24_cublas_hints} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)
find_library(CUBLASLT_LIBRARY NAMES libcublasLt.so.13 libcublasLt.so.12 cublasLt
  HINTS ${_sp24_cublas_hints} ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)

if(NOT CUBLAS_INCLUDE_DIR OR NOT CUBLAS_LIBRARY OR NOT CUBLASLT_LIBRARY)
  message(FATAL_ERROR "sp24: cuBLAS not found for the benchmarks (looked in ${_sp24_cublas_hints} and the CUDA "
                      "toolkit; got header '${CUBLAS_INCLUDE_DIR}', libs '${CUBLAS_LIBRARY}' '${CUBLASLT_LIBRARY}'). "
                      "Install the nvidia-cublas wheel that matches your torch, pass -DCUBLAS_ROOT=..., or build "
                      "without the benchmarks (SP24_BUILD_BENCH=OFF).")
endif()
