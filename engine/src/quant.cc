// The frozen base's quantized projections: codes, packing for the kernels, the product and its
// backward (quant.h). On an AVX512 CPU int8 goes through cpu_gemv.h's product (f32 activations,
// near the read bandwidth at batch 1, where the wheel's _weight_int8pack_mm reaches 30-41%), and
// with AVX512-VNNI int4 too (activations as two int8 digits; LibTorch's
// _weight_int4pack_mm_for_cpu, with bf16 activations, reached 44-53%). Other CPUs use LibTorch's
// kernels with bf16 activations (with f32 ones they are slower than a dense f32 product: README,
// "The frozen base quantized"). On CUDA _weight_int8pack_mm and _weight_int4pack_mm serve the
// same codes (compiled, not yet run).
#include "quant.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "absl/strings/str_cat.h"
#include "cpu_gemv.h"

namespace adaptd::engine {
namespace {

using Kind = WeightFormat::Kind;

at::Tensor RoundToBf16(const at::Tensor& x) { return x.to(at::kBFloat16).to(at::kFloat); }

// Element (n, k) of int4 codes [n, K] under per-group scale and zero [n, K / group] (f32):
// broadcast over each group, never expanded to [n, K].
at::Tensor Int4Values(const at::Tensor& q, const at::Tensor& scale, const at::Tensor& zero, int64_t group) {
  const int64_t n = q.size(0), groups = q.size(1) / group;
  const at::Tensor codes = q.reshape({n, groups, group}).to(at::kFloat) - 8;
  return at::addcmul(zero.unsqueeze(2), codes, scale.unsqueeze(2)).reshape({n, groups * group});
}

// The int4 weight's rows `nib` [n, K / 2] (its nibbles) and `sz` [K / g, n, 2] as f32 values.
// On the CPU a loop over a 16-entry table per group: LibTorch has no int4 unpack, and composing
// shifts, a stack, a cast and a multiply-add took 6.5 ms for a [3072, 576] weight (an int8 one
// dequantizes in 0.8 ms), which every ntp_gradient chunk update pays per weight in its backward.
at::Tensor Int4Rows(const at::Tensor& nib, const at::Tensor& sz, int64_t group) {
  const int64_t n = nib.size(0), k = 2 * nib.size(1);
  if (!nib.is_cpu()) {
    const at::Tensor q = at::stack({nib.bitwise_right_shift(4), nib.bitwise_and(15)}, 2).reshape({n, k});
    const at::Tensor s = sz.to(at::kFloat);
    return Int4Values(q, s.select(2, 0).t(), s.select(2, 1).t(), group);
  }
  const at::Tensor codes = nib.contiguous(), sf = sz.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({n, k}, at::kFloat);
  const uint8_t* q = codes.data_ptr<uint8_t>();
  const float* szp = sf.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    float table[16];
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t g = 0; g < k / group; ++g) {
        const float scale = szp[(g * n + r) * 2], zero = szp[(g * n + r) * 2 + 1];
        for (int c = 0; c < 16; ++c) table[c] = static_cast<float>(c - 8) * scale + zero;
        const uint8_t* in = q + r * (k / 2) + g * (group / 2);
        float* row = o + r * k + g * group;
        for (int64_t b = 0; b < group / 2; ++b) {
          row[2 * b] = table[in[b] >> 4];
          row[2 * b + 1] = table[in[b] & 15];
        }
      }
    }
  });
  return out;
}

// The forward product; LibTorch's kernels take bf16 activations and scales of the same dtype.
at::Tensor Product(const at::Tensor& x, const FrozenWeight& w) {
  // Past 256 rows x's traffic (re-read per tile of W) outgrows W's: tiled int8 in passes of 256
  // rows, row-major int8 through LibTorch's kernel.
  if (w.kind == Kind::kInt8 && w.tiled) {
    std::vector<at::Tensor> parts;
    for (int64_t r = 0; r < x.size(0); r += 256) {
      parts.push_back(CpuGemv(x.narrow(0, r, std::min<int64_t>(256, x.size(0) - r)), w.w, w.scales, {}, true));
    }
    return (parts.size() == 1 ? parts[0] : at::cat(parts)).to(x.scalar_type());
  }
  if (w.kind == Kind::kInt8 && x.is_cpu() && x.size(0) <= 256 && CpuGemvAvailable()) {  // rows not a multiple of 4
    return CpuGemv(x, w.w, w.scales).to(x.scalar_type());
  }
  if (w.tiled) return CpuGemvInt4(x, w.w, w.scales, w.group).to(x.scalar_type());
  const at::Tensor xb = x.to(at::kBFloat16).contiguous();
  at::Tensor y;
  if (w.kind == Kind::kInt8) {
    y = at::_weight_int8pack_mm(xb, w.w, w.scales);
  } else if (xb.is_cpu()) {
    y = at::_weight_int4pack_mm_for_cpu(xb, w.w, w.group, w.scales);
  } else {
    y = at::_weight_int4pack_mm(xb, w.w, w.group, w.scales);
  }
  return y.to(x.scalar_type());
}

// Rows dequantized at a time by the backward: 8 MB of f32.
constexpr int64_t kBackwardBlockElements = int64_t{2} << 20;

// The packed kernels have no derivative: dx = dy W with W dequantized to f32 a block of rows at
// a time (at most 8 MB beside the pass), never kept. The weight's tensors are saved with the
// graph, so a backward never outlives what it reads.
struct QuantLinearFunction : torch::autograd::Function<QuantLinearFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const FrozenWeight& w) {
    ctx->saved_data["kind"] = static_cast<int64_t>(w.kind);
    ctx->saved_data["group"] = w.group;
    ctx->saved_data["w"] = w.w;
    ctx->saved_data["scales"] = w.scales;
    ctx->saved_data["nibbles"] = w.nibbles;
    ctx->saved_data["tiled"] = w.tiled;
    return Product(x, w);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    FrozenWeight w;
    w.kind = static_cast<Kind>(ctx->saved_data["kind"].toInt());
    w.group = ctx->saved_data["group"].toInt();
    w.w = ctx->saved_data["w"].toTensor();
    w.scales = ctx->saved_data["scales"].toTensor();
    w.nibbles = ctx->saved_data["nibbles"].toTensor();
    w.tiled = ctx->saved_data["tiled"].toBool();
    const at::Tensor dy = grads[0].to(at::kFloat);  // [M, N]
    const int64_t rows = w.rows(), block = std::max<int64_t>(16, kBackwardBlockElements / w.cols()) / 16 * 16;
    at::Tensor dx = at::zeros({dy.size(0), w.cols()}, dy.options());  // [M, K]
    for (int64_t r = 0; r < rows; r += block) {
      const int64_t n = std::min(block, rows - r);
      dx.addmm_(dy.narrow(1, r, n), DequantizeSlice(w, r, n, at::kFloat));
    }
    return {dx.to(grads[0].scalar_type()), at::Tensor()};
  }
};

}  // namespace

QuantCodes QuantizeInt8(const at::Tensor& w) {
  const at::Tensor wf = w.to(at::kFloat);
  at::Tensor scale = RoundToBf16(wf.abs().amax(1) / 127);  // [N]
  scale = at::where(scale > 0, scale, at::ones_like(scale));  // an all-zero row
  const at::Tensor q = at::round(wf / scale.unsqueeze(1)).clamp(-127, 127).to(at::kChar);
  return {q, scale, {}};
}

QuantCodes QuantizeInt4(const at::Tensor& w, int64_t group) {
  const int64_t n = w.size(0), k = w.size(1);
  const at::Tensor g = w.to(at::kFloat).reshape({n, k / group, group});
  const at::Tensor lo = g.amin(2), hi = g.amax(2);  // [N, K / group]
  at::Tensor scale = RoundToBf16((hi - lo) / 15);
  const at::Tensor constant = scale <= 0;  // all its weights equal: codes 8, the zero their value
  scale = at::where(constant, at::ones_like(scale), scale);
  const at::Tensor zero = RoundToBf16(at::where(constant, lo, lo + 8 * scale));
  const at::Tensor q = at::round((g - zero.unsqueeze(2)) / scale.unsqueeze(2) + 8).clamp(0, 15);
  return {q.reshape({n, k}).to(at::kByte), scale, zero};
}

QuantCodes CatCodes(const std::vector<QuantCodes>& parts) {
  if (parts.size() == 1) return parts[0];
  std::vector<at::Tensor> q, scale, zero;
  for (const QuantCodes& p : parts) {
    q.push_back(p.q);
    scale.push_back(p.scale);
    if (p.zero.defined()) zero.push_back(p.zero);
  }
  return {at::cat(q), at::cat(scale), zero.empty() ? at::Tensor() : at::cat(zero)};
}

int64_t FrozenWeight::rows() const { return nibbles.defined() ? nibbles.size(0) : w.size(0); }
int64_t FrozenWeight::cols() const { return kind == Kind::kInt4 ? 2 * (nibbles.defined() ? nibbles : w).size(1) : w.size(1); }
int64_t FrozenWeight::nbytes() const { return w.nbytes() + (scales.defined() ? scales.nbytes() : 0); }

absl::StatusOr<FrozenWeight> PackWeight(const QuantCodes& c, const WeightFormat& format, at::Device device) {
  FrozenWeight f;
  f.kind = format.kind;
  if (format.kind == Kind::kInt8) {
    f.tiled = device.is_cpu() && CpuGemvAvailable() && c.q.size(0) % 4 == 0 && c.q.size(0) > 0;
    f.w = f.tiled ? TileRows(c.q) : c.q.to(device);
    f.scales = c.scale.to(at::kBFloat16).to(device);
    return f;
  }
  const int64_t n = c.q.size(0), k = c.q.size(1);
  if (k % format.group != 0 || n % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("weights ", format.Name(), ": a [", n, ", ", k,
                                                   "] projection needs rows a multiple of 16 and columns of ",
                                                   format.group));
  }
  f.group = format.group;
  if (device.is_cpu() && CpuGemvInt4Available()) {
    f.tiled = true;
    f.w = PackInt4Codes(c.q, format.group);
    f.scales = PackInt4Pairs(at::stack({c.scale, c.zero}, 2));
    return f;
  }
  const at::Tensor q = c.q.to(at::kInt);
  f.nibbles = (q.slice(1, 0, k, 2).bitwise_left_shift(4).bitwise_or(q.slice(1, 1, k, 2))).to(at::kByte).to(device);
  if (device.is_cpu()) {
    f.w = at::_convert_weight_to_int4pack_for_cpu(q, /*innerKTiles=*/2);
  } else {  // the CUDA layout tiles K by 16 innerKTiles
    const int64_t tiles = k % 128 == 0 ? 8 : k % 64 == 0 ? 4 : 2;
    f.w = at::_convert_weight_to_int4pack(f.nibbles, tiles);
  }
  f.scales = at::stack({c.scale.t(), c.zero.t()}, 2).to(at::kBFloat16).contiguous().to(device);  // [K/g, N, 2]
  return f;
}

namespace {
// Rows `ids` of an int8 weight's codes: in tiles, each id's tile untiled and its row picked (an
// embedding lookup reads a few rows).
at::Tensor Int8Rows(const FrozenWeight& w, const at::Tensor& ids) {
  if (!w.tiled) return w.w.index_select(0, ids);
  const int64_t k = w.w.size(1), n = ids.numel();
  const at::Tensor tiles = at::floor_divide(ids, 4);
  const at::Tensor rows = UntileRows(w.w.view({-1, 4 * k}).index_select(0, tiles).view({4 * n, k}));
  return rows.index_select(0, at::arange(n, ids.options()) * 4 + ids.remainder(4));
}
}  // namespace

at::Tensor DequantizeRows(const FrozenWeight& w, const at::Tensor& ids, at::ScalarType dtype) {
  switch (w.kind) {
    case Kind::kDense: return w.w.index_select(0, ids).to(dtype);
    case Kind::kInt8:
      return (Int8Rows(w, ids).to(at::kFloat) * w.scales.index_select(0, ids).to(at::kFloat).unsqueeze(1)).to(dtype);
    case Kind::kInt4:
      if (w.tiled) {  // rows lie in tiles of 4: the whole weight (int4 serves no lookups)
        return DequantizeInt4(w.w, w.scales, w.group).index_select(0, ids).to(dtype);
      }
      return Int4Rows(w.nibbles.index_select(0, ids), w.scales.index_select(1, ids), w.group).to(dtype);
  }
  return {};
}

at::Tensor DequantizeSlice(const FrozenWeight& w, int64_t start, int64_t count, at::ScalarType dtype) {
  TORCH_CHECK(!w.tiled || (start % 4 == 0 && count % 4 == 0), "DequantizeSlice: tiled rows come 4 at a time");
  switch (w.kind) {
    case Kind::kDense: return w.w.narrow(0, start, count).to(dtype);
    case Kind::kInt8: {
      const at::Tensor q = w.tiled ? UntileRows(w.w.narrow(0, start, count)) : w.w.narrow(0, start, count);
      return (q.to(at::kFloat) * w.scales.narrow(0, start, count).to(at::kFloat).unsqueeze(1)).to(dtype);
    }
    case Kind::kInt4:
      if (w.tiled) {
        return DequantizeInt4(w.w.narrow(0, start, count), w.scales.narrow(0, start, count), w.group).to(dtype);
      }
      return Int4Rows(w.nibbles.narrow(0, start, count), w.scales.narrow(1, start, count), w.group).to(dtype);
  }
  return {};
}

at::Tensor DequantizeWeight(const FrozenWeight& w, at::ScalarType dtype) { return DequantizeSlice(w, 0, w.rows(), dtype); }

at::Tensor QuantLinear(const at::Tensor& x, const FrozenWeight& w) {
  if (at::GradMode::is_enabled() && x.requires_grad()) {
    return QuantLinearFunction::apply(x, w);
  }
  return Product(x, w);
}

std::string WeightFormat::Name() const {
  switch (kind) {
    case Kind::kDense: return "dense";
    case Kind::kInt8: return "int8";
    case Kind::kInt4: return absl::StrCat("int4-g", group);
  }
  return "";
}

absl::StatusOr<WeightFormat> ParseWeightFormat(const std::string& name) {
  if (name.empty() || name == "dense") return WeightFormat{};
  if (name == "int8") return WeightFormat{Kind::kInt8, 0};
  if (name == "int4" || name == "int4-g32") return WeightFormat{Kind::kInt4, 32};
  if (name == "int4-g64") return WeightFormat{Kind::kInt4, 64};
  return absl::InvalidArgumentError(
      absl::StrCat("weight format '", name, "' must be dense, int8, int4 (int4-g32) or int4-g64"));
}

}  // namespace adaptd::engine
