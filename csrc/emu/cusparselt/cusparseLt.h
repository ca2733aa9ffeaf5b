/* Contract test double of the cuSPARSELt 0.8 C API subset sp24 calls: the declarations.
 *
 * A TEST TOOL (CI has no GPU): sp24's torch-free core (csrc/cusparselt/core.cpp) is compiled
 * against this header (-Icsrc/emu/cusparselt) and linked against cusparselt_double.cpp, a host-only
 * implementation written from cuSPARSELt's documentation. Names, numeric enum values and the sizes
 * and alignment of the opaque structs restate those of NVIDIA's cuSPARSELt 0.8.0 header (checked
 * against the nvidia-cusparselt-cu13 0.8.0 wheel: all enumerator values, sizes and alignments agree,
 * and the double compiles against NVIDIA's header too); this file is written independently and
 * declares only the functions the double implements. The test-only controls are in control.h.
 *
 * Self-contained: no CUDA toolkit header is needed. Where a CUDA header defines the same types
 * (library_types.h, driver_types.h, cusparse.h), include it BEFORE this one: its guard macro then
 * suppresses the definitions here. cudaStream_t is declared exactly as the toolkit and
 * csrc/emu/cuda_emu.h declare it (a pointer to the incomplete struct CUstream_st), so it is
 * compatible with both, whichever comes first (a repeated typedef / alias of the same type is legal).
 */
#if !defined(SP24_EMU_CUSPARSELT_H_)
#define SP24_EMU_CUSPARSELT_H_

#include <stddef.h> /* size_t */
#include <stdint.h> /* int64_t, uint8_t, uint32_t */

/* ---- version (cuSPARSELt 0.8.0) -------------------------------------------------------------- */
#define CUSPARSELT_VER_MAJOR 0
#define CUSPARSELT_VER_MINOR 8
#define CUSPARSELT_VER_PATCH 0
#define CUSPARSELT_VER_BUILD 4
#define CUSPARSELT_VERSION (CUSPARSELT_VER_MAJOR * 1000 + CUSPARSELT_VER_MINOR * 100 + CUSPARSELT_VER_PATCH)

/* Marks this header as the double (sp24 code can tell it apart from NVIDIA's). */
#define SP24_CUSPARSELT_DOUBLE 1

#if !defined(CUSPARSELT_API)
#if defined(_WIN32)
#define CUSPARSELT_API __stdcall
#else
#define CUSPARSELT_API
#endif
#endif

/* ---- CUDA runtime: stream handle --------------------------------------------------------------- */
#if !defined(__DRIVER_TYPES_H__)
struct CUstream_st;
typedef struct CUstream_st* cudaStream_t; /* same type as driver_types.h and csrc/emu/cuda_emu.h */
#endif

/* ---- CUDA library_types.h: data types and library properties (values as in CUDA 13.0) ----------- */
#if !defined(__LIBRARY_TYPES_H__)
typedef enum cudaDataType_t {
  CUDA_R_32F = 0,
  CUDA_R_64F = 1,
  CUDA_R_16F = 2,
  CUDA_R_8I = 3,
  CUDA_C_32F = 4,
  CUDA_C_64F = 5,
  CUDA_C_16F = 6,
  CUDA_C_8I = 7,
  CUDA_R_8U = 8,
  CUDA_C_8U = 9,
  CUDA_R_32I = 10,
  CUDA_C_32I = 11,
  CUDA_R_32U = 12,
  CUDA_C_32U = 13,
  CUDA_R_16BF = 14,
  CUDA_C_16BF = 15,
  CUDA_R_4I = 16,
  CUDA_C_4I = 17,
  CUDA_R_4U = 18,
  CUDA_C_4U = 19,
  CUDA_R_16I = 20,
  CUDA_C_16I = 21,
  CUDA_R_16U = 22,
  CUDA_C_16U = 23,
  CUDA_R_64I = 24,
  CUDA_C_64I = 25,
  CUDA_R_64U = 26,
  CUDA_C_64U = 27,
  CUDA_R_8F_E4M3 = 28,
  CUDA_R_8F_UE4M3 = 28,
  CUDA_R_8F_E5M2 = 29,
  CUDA_R_8F_UE8M0 = 30,
  CUDA_R_6F_E2M3 = 31,
  CUDA_R_6F_E3M2 = 32,
  CUDA_R_4F_E2M1 = 33
} cudaDataType;
typedef enum cudaDataType_t cudaDataType_t;

typedef enum libraryPropertyType_t { MAJOR_VERSION = 0, MINOR_VERSION = 1, PATCH_LEVEL = 2 } libraryPropertyType;
typedef enum libraryPropertyType_t libraryPropertyType_t;
#endif

/* ---- cuSPARSE (cusparse.h) types that cuSPARSELt uses ------------------------------------------- */
#if !defined(CUSPARSE_H_)
typedef enum {
  CUSPARSE_STATUS_SUCCESS = 0,
  CUSPARSE_STATUS_NOT_INITIALIZED = 1,
  CUSPARSE_STATUS_ALLOC_FAILED = 2,
  CUSPARSE_STATUS_INVALID_VALUE = 3,
  CUSPARSE_STATUS_ARCH_MISMATCH = 4,
  CUSPARSE_STATUS_MAPPING_ERROR = 5,
  CUSPARSE_STATUS_EXECUTION_FAILED = 6,
  CUSPARSE_STATUS_INTERNAL_ERROR = 7,
  CUSPARSE_STATUS_MATRIX_TYPE_NOT_SUPPORTED = 8,
  CUSPARSE_STATUS_ZERO_PIVOT = 9,
  CUSPARSE_STATUS_NOT_SUPPORTED = 10,
  CUSPARSE_STATUS_INSUFFICIENT_RESOURCES = 11
} cusparseStatus_t;

typedef enum {
  CUSPARSE_OPERATION_NON_TRANSPOSE = 0,
  CUSPARSE_OPERATION_TRANSPOSE = 1,
  CUSPARSE_OPERATION_CONJUGATE_TRANSPOSE = 2
} cusparseOperation_t;

typedef enum { CUSPARSE_ORDER_COL = 1, CUSPARSE_ORDER_ROW = 2 } cusparseOrder_t;
#endif

#if defined(__cplusplus)
#define SP24_CSLT_ALIGN16 alignas(16)
extern "C" {
#else
#define SP24_CSLT_ALIGN16 _Alignas(16)
#endif

/* ---- opaque objects: 512 bytes, 16-byte aligned, as in cuSPARSELt 0.8 ------------------------------ */
typedef struct { SP24_CSLT_ALIGN16 uint8_t data[512]; } cusparseLtHandle_t;
typedef struct { SP24_CSLT_ALIGN16 uint8_t data[512]; } cusparseLtMatDescriptor_t;
typedef struct { SP24_CSLT_ALIGN16 uint8_t data[512]; } cusparseLtMatmulDescriptor_t;
typedef struct { SP24_CSLT_ALIGN16 uint8_t data[512]; } cusparseLtMatmulAlgSelection_t;
typedef struct { SP24_CSLT_ALIGN16 uint8_t data[512]; } cusparseLtMatmulPlan_t;

/* ---- enumerators ------------------------------------------------------------------------------------ */
typedef enum { CUSPARSELT_SPARSITY_50_PERCENT = 0 } cusparseLtSparsity_t;

typedef enum { CUSPARSELT_MAT_NUM_BATCHES = 0, CUSPARSELT_MAT_BATCH_STRIDE = 1 } cusparseLtMatDescAttribute_t;

typedef enum { CUSPARSE_COMPUTE_32I = 0, CUSPARSE_COMPUTE_16F = 1, CUSPARSE_COMPUTE_32F = 2 } cusparseComputeType;

typedef enum {
  CUSPARSELT_MATMUL_ACTIVATION_RELU = 0,
  CUSPARSELT_MATMUL_ACTIVATION_RELU_UPPERBOUND = 1,
  CUSPARSELT_MATMUL_ACTIVATION_RELU_THRESHOLD = 2,
  CUSPARSELT_MATMUL_ACTIVATION_GELU = 3,
  CUSPARSELT_MATMUL_ACTIVATION_GELU_SCALING = 4,
  CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING = 5,
  CUSPARSELT_MATMUL_BETA_VECTOR_SCALING = 6,
  CUSPARSELT_MATMUL_BIAS_STRIDE = 7,
  CUSPARSELT_MATMUL_BIAS_POINTER = 8,
  CUSPARSELT_MATMUL_SPARSE_MAT_POINTER = 9,
  CUSPARSELT_MATMUL_A_SCALE_MODE = 10,
  CUSPARSELT_MATMUL_B_SCALE_MODE = 11,
  CUSPARSELT_MATMUL_C_SCALE_MODE = 12,
  CUSPARSELT_MATMUL_D_SCALE_MODE = 13,
  CUSPARSELT_MATMUL_D_OUT_SCALE_MODE = 14,
  CUSPARSELT_MATMUL_A_SCALE_POINTER = 15,
  CUSPARSELT_MATMUL_B_SCALE_POINTER = 16,
  CUSPARSELT_MATMUL_C_SCALE_POINTER = 17,
  CUSPARSELT_MATMUL_D_SCALE_POINTER = 18,
  CUSPARSELT_MATMUL_D_OUT_SCALE_POINTER = 19
} cusparseLtMatmulDescAttribute_t;

typedef enum {
  CUSPARSELT_MATMUL_SCALE_NONE = 0,
  CUSPARSELT_MATMUL_MATRIX_SCALE_SCALAR_32F = 1,
  CUSPARSELT_MATMUL_MATRIX_SCALE_VEC32_UE4M3 = 2,
  CUSPARSELT_MATMUL_MATRIX_SCALE_VEC64_UE8M0 = 3
} cusparseLtMatmulMatrixScale_t;

typedef enum { CUSPARSELT_MATMUL_ALG_DEFAULT = 0 } cusparseLtMatmulAlg_t;

typedef enum {
  CUSPARSELT_MATMUL_ALG_CONFIG_ID = 0,     /* read/write */
  CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID = 1, /* read-only */
  CUSPARSELT_MATMUL_SEARCH_ITERATIONS = 2, /* read/write */
  CUSPARSELT_MATMUL_SPLIT_K = 3,           /* read/write */
  CUSPARSELT_MATMUL_SPLIT_K_MODE = 4,      /* read/write */
  CUSPARSELT_MATMUL_SPLIT_K_BUFFERS = 5    /* read/write */
} cusparseLtMatmulAlgAttribute_t;

typedef enum {
  CUSPARSELT_INVALID_MODE = 0,
  CUSPARSELT_SPLIT_K_MODE_ONE_KERNEL = 1,
  CUSPARSELT_SPLIT_K_MODE_TWO_KERNELS = 2,
  CUSPARSELT_HEURISTIC = 3,
  CUSPARSELT_DATAPARALLEL = 4,
  CUSPARSELT_SPLITK = 5,
  CUSPARSELT_STREAMK = 6
} cusparseLtSplitKMode_t;

typedef enum { CUSPARSELT_PRUNE_SPMMA_TILE = 0, CUSPARSELT_PRUNE_SPMMA_STRIP = 1 } cusparseLtPruneAlg_t;

/* ---- library management ------------------------------------------------------------------------------ */
cusparseStatus_t CUSPARSELT_API cusparseLtInit(cusparseLtHandle_t* handle);
cusparseStatus_t CUSPARSELT_API cusparseLtDestroy(const cusparseLtHandle_t* handle);
cusparseStatus_t CUSPARSELT_API cusparseLtGetVersion(const cusparseLtHandle_t* handle, int* version);
cusparseStatus_t CUSPARSELT_API cusparseLtGetProperty(libraryPropertyType propertyType, int* value);
const char* CUSPARSELT_API cusparseLtGetErrorName(cusparseStatus_t status);
const char* CUSPARSELT_API cusparseLtGetErrorString(cusparseStatus_t status);

/* ---- matrix descriptors -------------------------------------------------------------------------------- */
cusparseStatus_t CUSPARSELT_API cusparseLtDenseDescriptorInit(const cusparseLtHandle_t* handle,
                                                              cusparseLtMatDescriptor_t* matDescr, int64_t rows,
                                                              int64_t cols, int64_t ld, uint32_t alignment,
                                                              cudaDataType valueType, cusparseOrder_t order);
cusparseStatus_t CUSPARSELT_API cusparseLtStructuredDescriptorInit(const cusparseLtHandle_t* handle,
                                                                   cusparseLtMatDescriptor_t* matDescr, int64_t rows,
                                                                   int64_t cols, int64_t ld, uint32_t alignment,
                                                                   cudaDataType valueType, cusparseOrder_t order,
                                                                   cusparseLtSparsity_t sparsity);
cusparseStatus_t CUSPARSELT_API cusparseLtMatDescriptorDestroy(const cusparseLtMatDescriptor_t* matDescr);

/* ---- matmul descriptor ----------------------------------------------------------------------------------- */
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulDescriptorInit(const cusparseLtHandle_t* handle,
                                                               cusparseLtMatmulDescriptor_t* matmulDescr,
                                                               cusparseOperation_t opA, cusparseOperation_t opB,
                                                               const cusparseLtMatDescriptor_t* matA,
                                                               const cusparseLtMatDescriptor_t* matB,
                                                               const cusparseLtMatDescriptor_t* matC,
                                                               const cusparseLtMatDescriptor_t* matD,
                                                               cusparseComputeType computeType);
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulDescSetAttribute(const cusparseLtHandle_t* handle,
                                                                 cusparseLtMatmulDescriptor_t* matmulDescr,
                                                                 cusparseLtMatmulDescAttribute_t matmulAttribute,
                                                                 const void* data, size_t dataSize);
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulDescGetAttribute(const cusparseLtHandle_t* handle,
                                                                 const cusparseLtMatmulDescriptor_t* matmulDescr,
                                                                 cusparseLtMatmulDescAttribute_t matmulAttribute,
                                                                 void* data, size_t dataSize);

/* ---- algorithm selection ------------------------------------------------------------------------------------ */
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulAlgSelectionInit(const cusparseLtHandle_t* handle,
                                                                 cusparseLtMatmulAlgSelection_t* algSelection,
                                                                 const cusparseLtMatmulDescriptor_t* matmulDescr,
                                                                 cusparseLtMatmulAlg_t alg);
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulAlgSelectionDestroy(const cusparseLtMatmulAlgSelection_t* algSelection);
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulAlgSetAttribute(const cusparseLtHandle_t* handle,
                                                                cusparseLtMatmulAlgSelection_t* algSelection,
                                                                cusparseLtMatmulAlgAttribute_t attribute,
                                                                const void* data, size_t dataSize);
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulAlgGetAttribute(const cusparseLtHandle_t* handle,
                                                                const cusparseLtMatmulAlgSelection_t* algSelection,
                                                                cusparseLtMatmulAlgAttribute_t attribute, void* data,
                                                                size_t dataSize);

/* ---- plan ------------------------------------------------------------------------------------------------------- */
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulGetWorkspace(const cusparseLtHandle_t* handle,
                                                             const cusparseLtMatmulPlan_t* plan, size_t* workspaceSize);
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulPlanInit(const cusparseLtHandle_t* handle, cusparseLtMatmulPlan_t* plan,
                                                         const cusparseLtMatmulDescriptor_t* matmulDescr,
                                                         const cusparseLtMatmulAlgSelection_t* algSelection);
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulPlanDestroy(const cusparseLtMatmulPlan_t* plan);

/* ---- execution ------------------------------------------------------------------------------------------------------ */
cusparseStatus_t CUSPARSELT_API cusparseLtMatmul(const cusparseLtHandle_t* handle, const cusparseLtMatmulPlan_t* plan,
                                                 const void* alpha, const void* d_A, const void* d_B, const void* beta,
                                                 const void* d_C, void* d_D, void* workspace, cudaStream_t* streams,
                                                 int32_t numStreams);
cusparseStatus_t CUSPARSELT_API cusparseLtMatmulSearch(const cusparseLtHandle_t* handle, cusparseLtMatmulPlan_t* plan,
                                                       const void* alpha, const void* d_A, const void* d_B,
                                                       const void* beta, const void* d_C, void* d_D, void* workspace,
                                                       cudaStream_t* streams, int32_t numStreams);

/* ---- helpers: prune check and compression ----------------------------------------------------------------------------- */
cusparseStatus_t CUSPARSELT_API cusparseLtSpMMAPruneCheck2(const cusparseLtHandle_t* handle,
                                                           const cusparseLtMatDescriptor_t* sparseMatDescr,
                                                           int isSparseA, cusparseOperation_t op, const void* d_in,
                                                           int* d_valid, cudaStream_t stream);
cusparseStatus_t CUSPARSELT_API cusparseLtSpMMACompressedSize(const cusparseLtHandle_t* handle,
                                                              const cusparseLtMatmulPlan_t* plan,
                                                              size_t* compressedSize, size_t* compressedBufferSize);
cusparseStatus_t CUSPARSELT_API cusparseLtSpMMACompress(const cusparseLtHandle_t* handle,
                                                        const cusparseLtMatmulPlan_t* plan, const void* d_dense,
                                                        void* d_compressed, void* d_compressed_buffer,
                                                        cudaStream_t stream);
cusparseStatus_t CUSPARSELT_API cusparseLtSpMMACompressedSize2(const cusparseLtHandle_t* handle,
                                                               const cusparseLtMatDescriptor_t* sparseMatDescr,
                                                               size_t* compressedSize, size_t* compressedBufferSize);
cusparseStatus_t CUSPARSELT_API cusparseLtSpMMACompress2(const cusparseLtHandle_t* handle,
                                                         const cusparseLtMatDescriptor_t* sparseMatDescr, int isSparseA,
                                                         cusparseOperation_t op, const void* d_dense,
                                                         void* d_compressed, void* d_compressed_buffer,
                                                         cudaStream_t stream);

#if defined(__cplusplus)
} /* extern "C" */
#endif

#endif /* SP24_EMU_CUSPARSELT_H_ */
