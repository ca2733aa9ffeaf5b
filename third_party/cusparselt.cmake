# cuSPARSELt: use the copy that the installed torch itself loads, from the `nvidia-cusparselt*`
# wheel torch depends on. No copy of cuSPARSELt lives in this repository.
#   0.8.x: <site-packages>/nvidia/cusparselt/{include,lib}; its header includes <cusparse.h>,
#          which comes from the `nvidia-cusparse` wheel (<site-packages>/nvidia/cu13/include).
#   0.10+: <site-packages>/nvidia/cu13/{include,lib}.
# The wheels ship only libcusparseLt.so.0 (no unversioned .so), so we ask for it by full name.
# Override with -DCUSPARSELT_ROOT=/path/to/cusparselt.
#
# Minimum: cuSPARSELt 0.8 (CompressedSize2 / Compress2, the split-K attributes, the 0.8 status
# names). Older headers stop the configure step with a message.
#
# Sets: CUSPARSELT_INCLUDE_DIR (include directories for the sources that include cusparseLt.h),
#       CUSPARSELT_LIBRARY, CUSPARSELT_LIBRARY_DIR, CUSPARSELT_VERSION_STRING, and the function
#       sp24_header_shim().
set(_sp24_cslt_hints
  ${CUSPARSELT_ROOT}
  ${SP24_SITE_PACKAGES}/nvidia/cusparselt
  ${SP24_SITE_PACKAGES}/nvidia/cu13
  ${SP24_SITE_PACKAGES}/nvidia/cu12)

find_path(CUSPARSELT_HEADER_DIR cusparseLt.h HINTS ${_sp24_cslt_hints} PATH_SUFFIXES include NO_DEFAULT_PATH)
find_library(CUSPARSELT_LIBRARY NAMES libcusparseLt.so.0 cusparseLt HINTS ${_sp24_cslt_hints} PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)
# The toolkit's cusparse.h first: then nvcc's own headers are the only CUDA headers on the path.
find_path(CUSPARSE_HEADER_DIR cusparse.h
  HINTS ${CUDAToolkit_INCLUDE_DIRS} ${SP24_SITE_PACKAGES}/nvidia/cu13/include ${SP24_SITE_PACKAGES}/nvidia/cusparse/include
        ${SP24_SITE_PACKAGES}/nvidia/cu12/include
  NO_DEFAULT_PATH)

if(NOT CUSPARSELT_HEADER_DIR OR NOT CUSPARSELT_LIBRARY)
  message(FATAL_ERROR "sp24: cuSPARSELt not found next to torch (looked in ${_sp24_cslt_hints}). "
                      "Install the nvidia-cusparselt wheel that matches your torch, or pass -DCUSPARSELT_ROOT=..., "
                      "or build without CUDA: SP24_CUDA=OFF pip install --no-build-isolation -e .")
endif()
if(NOT CUSPARSE_HEADER_DIR)
  message(FATAL_ERROR "sp24: cusparse.h (needed by cusparseLt.h) not found; install the nvidia-cusparse wheel")
endif()

# ---- version: read from the header, minimum 0.8 ------------------------------------------------
file(STRINGS "${CUSPARSELT_HEADER_DIR}/cusparseLt.h" _sp24_cslt_ver REGEX "^#define CUSPARSELT_VER_(MAJOR|MINOR|PATCH) ")
set(CUSPARSELT_VERSION_STRING "")
foreach(_part MAJOR MINOR PATCH)
  string(REGEX MATCH "CUSPARSELT_VER_${_part} +([0-9]+)" _m "${_sp24_cslt_ver}")
  set(_sp24_cslt_${_part} "${CMAKE_MATCH_1}")
endforeach()
if(_sp24_cslt_MAJOR STREQUAL "" OR _sp24_cslt_MINOR STREQUAL "")
  message(FATAL_ERROR "sp24: cannot read CUSPARSELT_VER_MAJOR/MINOR from ${CUSPARSELT_HEADER_DIR}/cusparseLt.h; "
                      "sp24 needs cuSPARSELt >= 0.8")
endif()
set(CUSPARSELT_VERSION_STRING "${_sp24_cslt_MAJOR}.${_sp24_cslt_MINOR}.${_sp24_cslt_PATCH}")
if(CUSPARSELT_VERSION_STRING VERSION_LESS 0.8)
  message(FATAL_ERROR "sp24: cuSPARSELt ${CUSPARSELT_VERSION_STRING} found in ${CUSPARSELT_HEADER_DIR}; sp24 needs "
                      "cuSPARSELt >= 0.8 (the version torch 2.11 ships). Install a newer nvidia-cusparselt wheel or pass "
                      "-DCUSPARSELT_ROOT=...")
endif()
get_filename_component(CUSPARSELT_LIBRARY_DIR "${CUSPARSELT_LIBRARY}" DIRECTORY)

# ---- headers without shadowing -----------------------------------------------------------------
# sp24_header_shim(OUT_VAR SRC_DIR NAME header...): copies only the named headers from SRC_DIR into
# <build>/generated/shim/NAME and puts that folder in OUT_VAR. pip's <site-packages>/nvidia/cu13/include
# also holds cuda_runtime.h, cuda_fp16.h, ... of possibly another CUDA version than nvcc's; adding it
# with -I would let those shadow nvcc's own. The copies' own includes (<cuComplex.h>, ...) then
# resolve to nvcc's toolkit headers.
function(sp24_header_shim out_var src_dir name)
  set(_dst "${CMAKE_CURRENT_BINARY_DIR}/generated/shim/${name}")
  file(REMOVE_RECURSE "${_dst}")
  file(MAKE_DIRECTORY "${_dst}")
  foreach(_h ${ARGN})
    if(NOT EXISTS "${src_dir}/${_h}")
      message(FATAL_ERROR "sp24: ${_h} not found in ${src_dir}")
    endif()
    file(COPY "${src_dir}/${_h}" DESTINATION "${_dst}")
  endforeach()
  set(${out_var} "${_dst}" PARENT_SCOPE)
endfunction()

# cusparseLt.h itself: only for the sources that include it (CMakeLists.txt).
set(CUSPARSELT_INCLUDE_DIR ${CUSPARSELT_HEADER_DIR})
# The CUDA library headers that cusparseLt.h and torch's ATen/cuda/CUDAContext.h include, where the
# toolkit lacks them (a toolkit with only nvcc + cudart, as on the build machines): a shim of just
# these, target-wide.
set(SP24_CUDA_LIB_HEADER_DIRS "")
if(NOT EXISTS "${CUDAToolkit_INCLUDE_DIRS}/cusparse.h")
  foreach(_d ${CUDAToolkit_INCLUDE_DIRS})
    if(EXISTS "${_d}/cusparse.h")
      set(_sp24_toolkit_has_cusparse ON)
    endif()
  endforeach()
  if(NOT _sp24_toolkit_has_cusparse)
    sp24_header_shim(_sp24_libs_shim "${CUSPARSE_HEADER_DIR}" cuda-libs
      cusparse.h cublas_v2.h cublas_api.h cublasLt.h cusolverDn.h cusolver_common.h)
    set(SP24_CUDA_LIB_HEADER_DIRS "${_sp24_libs_shim}")
  endif()
endif()
