// Private to engine/: x W^T on the CPU for weights that stream from memory, with W int8 (a scale
// per output row) or f32, and f32 activations: decode's product. Written here because LibTorch's
// kernels stream such weights at 30-50% of this machine's read bandwidth at batch 1 (README, "The
// frozen base quantized"; bench/quant_kernels.py measures them side by side); these reach
// 75-90% by prefetching the next block of rows while computing on the current one.
#ifndef ADAPTD_ENGINE_SRC_CPU_GEMV_H_
#define ADAPTD_ENGINE_SRC_CPU_GEMV_H_

#include <ATen/ATen.h>

namespace adaptd::engine {

// Whether this CPU runs the kernels (AVX512F and AVX512BW, checked once at run time). Without
// them callers keep LibTorch's products.
bool CpuGemvAvailable();

// y [M, N] f32 = x [M, K] W^T (+ add [M, N] when defined), x f32 (made contiguous), W [N, K]
// contiguous int8 with `scales` [N] (any float dtype: y[m, n] = scales[n] * sum_k x[m, k] q[n, k])
// or f32 with `scales` undefined. Each y[m, n] is summed in the same order whatever M is, so a
// row's result does not depend on the rows batched with it. Runs on LibTorch's intra-op threads.
// Preconditions (CHECKed, programmer errors): CpuGemvAvailable(), CPU tensors, shapes as stated.
at::Tensor CpuGemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& add = {});

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_SRC_CPU_GEMV_H_
