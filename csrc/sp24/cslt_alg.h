// The algorithm attributes sp24 sets on a cuSPARSELt plan after a search (torch-free, so the rule
// runs and is tested on a host without a GPU: sp24._C.cslt_normalize_alg).
//
// cusparseLtMatmulSearch may report split-K = 1 together with a mode and a buffer count that are
// only meaningful for split-K > 1 (cuSPARSELt 0.8 docs: SPLIT_K_BUFFERS lies in [1, SplitK - 1];
// the mode is ONE_KERNEL = 1 or TWO_KERNELS = 2, 0 being CUSPARSELT_INVALID_MODE). Writing such a
// value back is refused with INVALID_VALUE, which would make every search fail. So: the id is
// always kept; split-K only when > 1; the mode and the buffers only when valid for that split-K;
// everything else -1 ("leave cuSPARSELt's default"), which also gives equal choices one cache key.
#pragma once

namespace sp24 {

struct CsltAlg {
  int id = -1, split_k = -1, split_k_mode = -1, split_k_buffers = -1;
};

inline CsltAlg normalize_cslt_alg(CsltAlg a) {
  CsltAlg n;
  n.id = a.id;
  if (a.split_k <= 1) return n;
  n.split_k = a.split_k;
  if (a.split_k_mode == 1 || a.split_k_mode == 2) n.split_k_mode = a.split_k_mode;
  if (a.split_k_buffers >= 1 && a.split_k_buffers <= a.split_k - 1) n.split_k_buffers = a.split_k_buffers;
  return n;
}

}  // namespace sp24
