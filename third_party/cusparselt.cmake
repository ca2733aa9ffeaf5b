# cuSPARSELt: use the copy that the installed torch itself loads, from the `nvidia-cusparselt*`
# wheel torch depends on. No copy of cuSPARSELt lives in this repository.
#   0.8.x: <site-packages>/nvidia/cusparselt/{include,lib}; its header includes <cusparse.h>,
#          which comes from the `nvidia-cusparse` wheel (<site-packages>/nvidia/cu13/include).
#   0.10+: <site-packages>/nvidia/cu13/{include,lib}.
# The wheels ship only libcusparseLt.so.0 (no unversioned .so), so we ask for it by full name.
# Override with -DCUSPARSELT_ROOT=/path/to/cusparselt.
set(_sp24_cslt_hints
  ${CUSPARSELT_ROOT}
  ${SP24_SITE_PACKAGES}/nvidia/cusparselt
  ${SP24_SITE_PACKAGES}/nvidia/cu13
  ${SP24_SITE_PACKAGES}/nvidia/cu12)

find_path(CUSPARSELT_HEADER_DIR cusparseLt.h HINTS ${_sp24_cslt_hints} PATH_SUFFIXES include NO_DEFAULT_PATH)
find_library(CUSPARSELT_LIBRARY NAMES libcusparseLt.so.0 cusparseLt HINTS ${_sp24_cslt_hints} PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)
find_path(CUSPARSE_HEADER_DIR cusparse.h
  HINTS ${SP24_SITE_PACKAGES}/nvidia/cu13 ${SP24_SITE_PACKAGES}/nvidia/cusparse ${SP24_SITE_PACKAGES}/nvidia/cu12 ${CUDAToolkit_INCLUDE_DIRS}
  PATH_SUFFIXES include)

if(NOT CUSPARSELT_HEADER_DIR OR NOT CUSPARSELT_LIBRARY)
  message(FATAL_ERROR "sp24: cuSPARSELt not found next to torch (looked in ${_sp24_cslt_hints}). "
                      "Install the nvidia-cusparselt wheel that matches your torch, or pass -DCUSPARSELT_ROOT=..., "
                      "or build without CUDA: SP24_CUDA=OFF pip install --no-build-isolation -e .")
endif()
if(NOT CUSPARSE_HEADER_DIR)
  message(FATAL_ERROR "sp24: cusparse.h (needed by cusparseLt.h) not found; install the nvidia-cusparse wheel")
endif()
set(CUSPARSELT_INCLUDE_DIR ${CUSPARSELT_HEADER_DIR} ${CUSPARSE_HEADER_DIR})
