// Private to engine/: x W^T on the CPU for weights that stream from memory, with W int8 (a scale
// per output row), int4 (groups with a scale and a zero) or f32: decode's products. Written here
// because LibTorch's kernels stream such weights at 30-60% of this machine's read bandwidth at
// batch 1 (README, "The frozen base quantized"; build/bin/adaptd-bench-kernels measures them side
// by side); these reach 60-90% by reading each tile of W as one stream and prefetching ahead.
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
// With `tiled`, W is int8 as TileRows lays it out.
at::Tensor CpuGemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& add = {},
                   bool tiled = false);

// int8 W [N, K] (N a multiple of 4) with the 4 rows of each tile stored 64 bytes by 64 bytes one
// after another (same shape), so that the product reads one sequential stream per tile; and
// rows so stored (a multiple of 4 from a multiple of 4) back in order.
at::Tensor TileRows(const at::Tensor& w);
at::Tensor UntileRows(const at::Tensor& t);

// The int4 product also needs AVX512-VNNI (checked once).
bool CpuGemvInt4Available();

// The int4 product's packing of codes q [N, K] (uint8 in [0, 15], N a multiple of 4, K of the
// group, 32 or 64) and of their (scale, zero) pairs sz [N, K / group, 2] (bf16), same shapes and
// sizes out (codes [N, K / 2] uint8). Each group of codes is group / 2 bytes, byte j holding code
// j in its low nibble and code j + group / 2 in its high one; the 4 rows of a tile lie 64 bytes
// by 64 bytes (pairs 16 groups by 16) one after another, so that the product reads one
// sequential stream per tile.
at::Tensor PackInt4Codes(const at::Tensor& q, int64_t group);
at::Tensor PackInt4Pairs(const at::Tensor& sz);
// The values of packed rows (a multiple of 4 rows from a multiple of 4: their tiles), f32 [n, K]:
// (q - 8) scale + zero.
at::Tensor DequantizeInt4(const at::Tensor& codes, const at::Tensor& pairs, int64_t group);

// y [M, N] f32 = x [M, K] W^T, W int4 packed as above (codes, bf16 pairs; group 32 or 64). x is rounded per group to two int8 digits, x ~ s (h + l / 256) with
// s = max |x| / 127 over the group, so that the codes multiply it as bytes (vpdpbusd, 64
// products an instruction): each element moves by at most s / 256 (2^-15 of the group's largest,
// finer than bf16 for all but its smallest elements). The zeros take the exact f32 sums of x.
// Summed in the same order whatever M is. Preconditions (CHECKed): CpuGemvInt4Available(), CPU
// tensors, shapes as stated.
at::Tensor CpuGemvInt4(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& pairs, int64_t group);

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_SRC_CPU_GEMV_H_
