// The direct writers of cuSPARSELt's compressed layout (cslt.h, DirectWriters): torch glue that
// checks sp24's pack and fused-sparsify writers against cuSPARSELt's own compression, once per
// shape, and serves a shape with them only where they were equal.
#include "cusparselt/cslt.h"
#include "sp24/cslt_layout.h"
#include "sp24/params.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

namespace sp24 {
namespace cslt {

namespace {
// One check per (device, dtype, M, K): both writers against cusparseLtSpMMACompress, on a synthetic
// operand (never the caller's data: an all-zero first operand would make any byte order look right).
struct ShapeKey {
  int device, dtype;
  int64_t M, K;
  bool operator<(const ShapeKey& o) const {
    return std::tie(device, dtype, M, K) < std::tie(o.device, o.dtype, o.M, o.K);
  }
};
std::mutex direct_mutex;
std::map<ShapeKey, DirectWriters>& direct_checked() {
  static std::map<ShapeKey, DirectWriters> m;
  return m;
}

// A buffer of `bytes` whose part past the values and metadata of an (M, K) 16-bit operand is zero
// (the rest is left to the writer; `poison` pre-fills it with 0xA5 so an unwritten byte shows).
at::Tensor new_buffer(const at::TensorOptions& opts, int64_t M, int64_t K, int64_t bytes, bool poison = false) {
  const int64_t used = M * K + M * K / 8;  // values (M*K/2 16-bit elements) + metadata
  at::Tensor out = poison ? at::full({bytes}, 0xA5, opts.dtype(at::kByte)) : at::empty({bytes}, opts.dtype(at::kByte));
  if (bytes > used) out.narrow(0, used, bytes - used).zero_();
  return out;
}

// pack writer: values copied, metadata written by the layout kernel, zeros after it, `bytes` in all.
at::Tensor write_direct(const at::Tensor& values, const at::Tensor& indices, int64_t bytes) {
  const int64_t M = values.size(0), K = values.size(1) * 2, nv = values.numel() * values.element_size();
  at::Tensor out = new_buffer(values.options(), M, K, bytes);
  out.narrow(0, 0, nv).copy_(values.view(at::kByte).reshape({-1}));
  cslt_meta24_cuda(indices.data_ptr<uint8_t>(), out.data_ptr<uint8_t>() + nv, M, K,
                   at::cuda::getCurrentCUDAStream().stream());
  return out;
}

}  // namespace

at::Tensor write_fused(Sparsify24Params p, const at::TensorOptions& opts, int64_t bytes, bool poison) {
  at::Tensor buf = new_buffer(opts, p.M, p.K, bytes, poison);
  p.values = buf.data_ptr();
  p.cslt_meta = buf.data_ptr<uint8_t>() + p.M * p.K;  // after the M*K/2 16-bit values
  sparsify24_cuda(p, at::cuda::getCurrentCUDAStream().stream());
  return buf;
}

namespace {
DType kernel_dtype(at::ScalarType t) { return t == at::kHalf ? DType::kFloat16 : DType::kBFloat16; }

DirectWriters run_check(const char* op, const at::Tensor& like, int64_t M, int64_t K) {
  void* stream = at::cuda::getCurrentCUDAStream().stream();
  auto gen = at::cuda::detail::createCUDAGenerator(like.get_device());  // private: the user's RNG is untouched
  gen.set_current_seed(0x5eed24);
  const auto opts = like.options();
  // randn has no exact zeros, so every kept value is non-zero: cuSPARSELt has no choice of which
  // zero positions to encode, and equal bytes mean the same layout.
  at::Tensor x = at::randn({M, K}, gen, opts);
  at::Tensor values = at::empty({M, K / 2}, opts), indices = at::empty({M, K / 2}, opts.dtype(at::kByte));
  Sparsify24Params p;
  p.x = x.data_ptr();
  p.x_row_stride = K;
  p.values = values.data_ptr();
  p.indices = indices.data_ptr<uint8_t>();
  p.M = M;
  p.K = K;
  p.dtype = kernel_dtype(like.scalar_type());
  sparsify24_cuda(p, stream);
  std::optional<at::Tensor> ref;
  {
    at::Tensor dense = at::empty({M, K}, opts);
    ToDense24Params d;
    d.values = values.data_ptr();
    d.indices = indices.data_ptr<uint8_t>();
    d.out = dense.data_ptr();
    d.M = M;
    d.K = K;
    d.dtype = p.dtype;
    to_dense24_cuda(d, stream);
    std::string why;
    ref = try_compress(op, dense, false, &why);
  }  // dense freed before the writers run (peak memory of the check)
  DirectWriters r;
  if (!ref.has_value()) return r;  // cuSPARSELt takes no such operand: nothing to match
  r.bytes = ref->numel();
  const int64_t nv = values.numel() * values.element_size(), nm = M * K / 8;
  if (r.bytes < nv + nm) return r;
  {
    // fused writer, into a poisoned buffer (a byte the kernel does not write cannot pass as a zero)
    at::Tensor idx2 = at::empty_like(indices);
    Sparsify24Params q = p;
    q.indices = idx2.data_ptr<uint8_t>();
    at::Tensor buf = write_fused(q, opts, r.bytes, /*poison=*/true);
    r.fused = at::equal(buf, *ref) && at::equal(idx2, indices);
  }
  x.reset();
  r.pack = at::equal(write_direct(values, indices, r.bytes), *ref);
  return r;
}
}  // namespace

bool direct_allowed(const at::Tensor& like, int64_t M, int64_t K) {
  const char* e = std::getenv("SP24_CSLT_DIRECT");
  if (e != nullptr && std::string(e) == "0") return false;
  const auto dt = like.scalar_type();
  // The candidate layout is the sm_90 one (Ampere's differs): other GPUs always use cuSPARSELt's compression.
  return (dt == at::kHalf || dt == at::kBFloat16) && cslt_layout_domain(M, K) &&
         at::cuda::getDeviceProperties(like.get_device())->major == 9;
}

std::optional<DirectWriters> direct_writers(const char* op, const at::Tensor& like, int64_t M, int64_t K) {
  const ShapeKey key{like.get_device(), static_cast<int>(like.scalar_type()), M, K};
  {
    std::lock_guard<std::mutex> lock(direct_mutex);
    auto it = direct_checked().find(key);
    if (it != direct_checked().end()) return it->second;
  }
  // The check synchronises (at::equal): never inside a CUDA graph capture; cuSPARSELt serves meanwhile.
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return std::nullopt;
  DirectWriters r;
  try {
    r = run_check(op, like, M, K);
  } catch (const std::exception& e) {  // e.g. out of memory: keep cuSPARSELt's compression for this shape
    TORCH_WARN(op, ": the check of sp24's direct cuSPARSELt layout writers failed for (", M, ", ", K, ") ",
               c10::toString(like.scalar_type()), " (", e.what(), "); cuSPARSELt compresses this shape");
    r = DirectWriters{};
  }
  {
    std::lock_guard<std::mutex> lock(direct_mutex);
    auto [it, fresh] = direct_checked().emplace(key, r);
    if (!fresh) return it->second;  // another thread checked this key meanwhile: keep its verdict
  }
  if (r.bytes > 0 && !(r.pack && r.fused)) {
    TORCH_WARN(op, ": sp24's direct writers of cuSPARSELt's compressed layout (sp24/cslt_layout.h) do not reproduce ",
               "cusparseLtSpMMACompress (cuSPARSELt ", version(), ") for (", M, ", ", K, ") ",
               c10::toString(like.scalar_type()), " operands (pack writer ", r.pack ? "matches" : "differs",
               ", fused sparsify writer ", r.fused ? "matches" : "differs",
               "); cuSPARSELt compresses where they differ (results are unaffected, only slower)");
  }
  return r;
}

std::optional<at::Tensor> try_compress_sp24(const char* op, const at::Tensor& values, const at::Tensor& indices,
                                            const std::function<at::Tensor()>& dense, bool sp24_size,
                                            std::string* why) {
  c10::cuda::CUDAGuard guard(values.device());
  const int64_t M = values.size(0), K = values.size(1) * 2;
  if (direct_allowed(values, M, K) && values.is_contiguous() && indices.is_contiguous()) {
    const int64_t want = compressed_bytes(M, K, values.scalar_type());
    auto w = direct_writers(op, values, M, K);
    if (w.has_value() && w->pack && w->bytes <= want) return write_direct(values, indices, sp24_size ? want : w->bytes);
  }
  return try_compress(op, dense(), sp24_size, why);
}

std::vector<DirectLayoutCheck> direct_layout_checks() {
  std::lock_guard<std::mutex> lock(direct_mutex);
  std::vector<DirectLayoutCheck> out;
  for (const auto& [k, w] : direct_checked()) {
    const std::string dt = c10::toString(static_cast<at::ScalarType>(k.dtype));
    out.push_back({"pack", k.device, dt, k.M, k.K, w.bytes, w.pack});
    out.push_back({"fused_sparsify", k.device, dt, k.M, k.K, w.bytes, w.fused});
  }
  return out;
}

}  // namespace cslt
}  // namespace sp24
