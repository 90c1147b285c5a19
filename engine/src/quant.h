// Private to engine/: a frozen projection of the base model, dense in the compute dtype or
// weight-only quantized (int8 per output channel, int4 in groups with a scale and a zero), the
// product that reads it (differentiable in its input, for ntp_gradient's backward), and its
// codes before packing, so GGUF blocks map onto them without requantizing where they can.
#ifndef ADAPTD_ENGINE_SRC_QUANT_H_
#define ADAPTD_ENGINE_SRC_QUANT_H_

#include <ATen/ATen.h>

#include <vector>

#include "adaptd/engine/model.h"

namespace adaptd::engine {

// One or more stacked weights' codes, on the CPU, before packing. Element (n, k) is
//   int8: q[n, k] * scale[n]                       q int8 in [-127, 127], scale f32 [N]
//   int4: (q[n, k] - 8) * scale[n, g] + zero[n, g]  q uint8 in [0, 15], scale and zero f32
//         [N, K / group], g = k / group
struct QuantCodes {
  at::Tensor q, scale, zero;
};

// Round-to-nearest codes of a float weight [N, K]: int8 symmetric per row (scale max|w| / 127),
// int4 asymmetric per group (scale (max - min) / 15). The scales are rounded to bf16 first, as
// the kernels read them, so the codes are the nearest to the weight under the scales served:
// |w - w'| <= scale / 2 (int4: plus the bf16 rounding of the zero, <= |zero| 2^-8).
QuantCodes QuantizeInt8(const at::Tensor& w);
QuantCodes QuantizeInt4(const at::Tensor& w, int64_t group);

// The codes of several weights stacked along their rows (the fused q/k/v and gate/up).
QuantCodes CatCodes(const std::vector<QuantCodes>& parts);

struct FrozenWeight {
  WeightFormat::Kind kind = WeightFormat::Kind::kDense;
  int64_t group = 0;
  // With `tiled`, w is laid out for cpu_gemv.h's products, in tiles of 4 rows (on a CPU with
  // AVX512: int8 with rows a multiple of 4 (TileRows); int4 with AVX512-VNNI (w [N, K / 2],
  // scales [N, K / group, 2], PackInt4Codes and PackInt4Pairs)). Otherwise int8 is row-major and
  // int4 LibTorch's packing (scales [K / group, N, 2], nibbles [N, K / 2] uint8 beside it, element
  // 2j in the high nibble, to dequantize). Scales and zeros are bf16 in all.
  at::Tensor w;        // dense: [N, K] compute dtype; int8: [N, K] int8; int4: the kernel's packing
  at::Tensor scales;   // int8: [N] bf16; int4: (scale, zero) pairs
  at::Tensor nibbles;
  bool tiled = false;
  int64_t rows() const;  // N
  int64_t cols() const;  // K
  int64_t nbytes() const;  // read by one product: codes and scales
};

inline FrozenWeight DenseWeight(at::Tensor w) {
  FrozenWeight f;
  f.w = std::move(w);
  return f;
}

// The codes packed for `format` on `device`. INVALID_ARGUMENT when the shape does not fit the
// kernels: int4 needs K a multiple of the group (32 or 64) and N a multiple of 16.
absl::StatusOr<FrozenWeight> PackWeight(const QuantCodes& codes, const WeightFormat& format, at::Device device);

// The weight as the products compute with it, [N, K] (or rows `ids` [n, K], or rows
// [start, start + count), both multiples of 4 when tiled) in `dtype`.
at::Tensor DequantizeWeight(const FrozenWeight& w, at::ScalarType dtype);
at::Tensor DequantizeSlice(const FrozenWeight& w, int64_t start, int64_t count, at::ScalarType dtype);
at::Tensor DequantizeRows(const FrozenWeight& w, const at::Tensor& ids, at::ScalarType dtype);

// x W^T for x [M, K] in its own dtype, w quantized, the result in x's dtype: through
// cpu_gemv.h's products where the CPU has them (int8 x in f32; int4 x rounded to two int8 digits
// per group of 32, 2^-16 of the group's largest), else LibTorch's weight-only kernels (x rounded
// to bf16, and the result). With grad mode on and x requiring grad, the
// backward computes dx = dy W with W dequantized to f32 in blocks of rows (8 MB at a time, on
// top of what the pass holds), never kept.
at::Tensor QuantLinear(const at::Tensor& x, const FrozenWeight& w);

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_SRC_QUANT_H_
