// The frozen base quantized (engine/src/quant.h, LoadOptions::weights): codes within half a
// step, LibTorch's packed products and their backward against the weights dequantized, GGUF
// Q4_0/Q4_1 blocks mapped without requantizing, and whole models against their
// dequantized-float oracle (LoadOptions::dequantize_weights): logits, In-Place and
// ntp_gradient updates, the identity of the format and snapshots under it.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "adaptd/engine/gguf.h"
#include "adaptd/engine/model.h"
#include "engine/fixtures.h"
#include "cpu_gemv.h"
#include "quant.h"

namespace adaptd::engine {
namespace {

using Kind = WeightFormat::Kind;

const WeightFormat kInt8{Kind::kInt8, 0}, kInt4G32{Kind::kInt4, 32}, kInt4G64{Kind::kInt4, 64};

// bf16 keeps 8 significant bits: a value rounded to it moves by at most 2^-8 of itself.
constexpr double kBf16Rel = 1.0 / 256;

double MaxAbs(const at::Tensor& t) { return t.abs().max().item<double>(); }

at::Tensor RandomWeight(int64_t n, int64_t k, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor w = at::randn({n, k}) * 0.05;
  w.view(-1).slice(0, 0, w.numel(), 97).mul_(6);  // outliers, as trained weights have
  return w;
}

FrozenWeight Pack(const at::Tensor& w, const WeightFormat& f) {
  auto packed = PackWeight(f.kind == Kind::kInt8 ? QuantizeInt8(w) : QuantizeInt4(w, f.group), f, at::kCPU);
  EXPECT_TRUE(packed.ok()) << packed.status();
  return packed.ok() ? *packed : FrozenWeight{};
}

// The rows an embedding lookup reads are those of the whole weight dequantized, whatever the
// packing (int8 in tiles of 4 rows on an AVX512 CPU): rows from every place in a tile, repeated.
TEST(QuantCodesTest, RowLookupsEqualTheDequantizedWeight) {
  const at::Tensor w = RandomWeight(64, 200, 6);
  for (const WeightFormat& f : {kInt8, kInt4G32}) {
    const FrozenWeight q = Pack(f.kind == Kind::kInt8 ? w : w.narrow(1, 0, 192), f);
    const at::Tensor ids = at::tensor({0, 5, 6, 7, 63, 5, 33}, at::kLong);
    EXPECT_TRUE(at::equal(DequantizeRows(q, ids, at::kFloat), DequantizeWeight(q, at::kFloat).index_select(0, ids)))
        << f.Name();
    EXPECT_TRUE(at::equal(DequantizeSlice(q, 8, 16, at::kFloat), DequantizeWeight(q, at::kFloat).narrow(0, 8, 16)))
        << f.Name();
  }
  const QuantCodes c = QuantizeInt8(w);
  EXPECT_TRUE(at::equal(DequantizeWeight(Pack(w, kInt8), at::kFloat),
                        c.q.to(at::kFloat) * c.scale.to(at::kBFloat16).to(at::kFloat).unsqueeze(1)));
}

// Round to nearest: |w - w'| <= scale / 2 per element; int4 adds the bf16 rounding of its zero.
TEST(QuantCodesTest, EveryWeightWithinHalfAStep) {
  const at::Tensor w = RandomWeight(64, 256, 1);
  const QuantCodes c8 = QuantizeInt8(w);
  const at::Tensor e8 = (DequantizeWeight(Pack(w, kInt8), at::kFloat) - w).abs();
  EXPECT_TRUE((e8 <= c8.scale.unsqueeze(1) * 0.5 * (1 + 1e-6)).all().item<bool>()) << MaxAbs(e8);
  for (int group : {32, 64}) {
    const QuantCodes c4 = QuantizeInt4(w, group);
    const at::Tensor step = c4.scale.repeat_interleave(group, 1), zero = c4.zero.repeat_interleave(group, 1);
    const at::Tensor e4 = (DequantizeWeight(Pack(w, {Kind::kInt4, group}), at::kFloat) - w).abs();
    EXPECT_TRUE((e4 <= step * 0.5 + zero.abs() * kBf16Rel + 1e-7).all().item<bool>()) << group;
    // The bound is tight: some weight lands near half a step from its code.
    EXPECT_GT((e4 / step).max().item<double>(), 0.4) << group;
  }
}

TEST(QuantCodesTest, ShapesTheKernelsCannotTakeAreRefused) {
  auto refused = [](int64_t n, int64_t k, const WeightFormat& f) {
    auto p = PackWeight(QuantizeInt4(at::randn({n, k}), 32), f, at::kCPU);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << n << "x" << k;
  };
  refused(24, 64, kInt4G32);  // rows not a multiple of 16
  refused(32, 96, kInt4G64);  // columns not a multiple of the group
  EXPECT_EQ(ParseWeightFormat("int3").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseWeightFormat("int4")->Name(), "int4-g32");
  EXPECT_EQ(ParseWeightFormat("int4-g64")->group, 64);
  EXPECT_FALSE(ParseWeightFormat("")->quantized());
  LoadOptions odd;
  odd.weights = {Kind::kInt4, 16};
  EXPECT_EQ(Model::Load(FixtureDir() + "/hf/llama_tied/model", odd).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A group whose weights are all equal keeps its value (codes 8, the zero the value in bf16).
TEST(QuantCodesTest, ConstantGroupsKeepTheirValue) {
  at::Tensor w = RandomWeight(16, 64, 8);
  w.narrow(1, 0, 32).fill_(0.01);
  const at::Tensor back = DequantizeWeight(Pack(w, kInt4G32), at::kFloat).narrow(1, 0, 32);
  EXPECT_LE(MaxAbs(back - 0.01), 0.01 * kBf16Rel);
}

// The packed products compute x W'^T with W' the dequantized weight: the only differences are
// the bf16 rounding of x (applied to the reference too) and of the result (2^-8 of it), and the
// f32 sums. A scale off by 2^-5 or codes grouped by 64 instead of 32 must exceed that.
TEST(QuantKernelTest, ProductsReadTheWeightsAsDequantized) {
  const at::Tensor w = RandomWeight(96, 192, 2);
  at::manual_seed(3);
  for (int64_t rows : {1, 5, 40}) {
    const at::Tensor x = at::randn({rows, 192});
    const at::Tensor xb = x.to(at::kBFloat16).to(at::kFloat);
    for (const WeightFormat& f : {kInt8, kInt4G32, kInt4G64}) {
      const FrozenWeight q = Pack(w, f);
      const at::Tensor ref = at::mm(xb, DequantizeWeight(q, at::kFloat).t());
      const double tol = 2 * kBf16Rel * MaxAbs(ref) + 1e-4;
      const at::Tensor y = QuantLinear(x, q);
      ASSERT_EQ(y.scalar_type(), at::kFloat);
      EXPECT_LE(MaxAbs(y - ref), tol) << f.Name() << ", " << rows << " rows";

      FrozenWeight wrong = q;
      wrong.scales = q.scales.clone();
      (f.kind == Kind::kInt8 ? wrong.scales : wrong.scales.select(2, 0)).mul_(1 + 1.0 / 32);
      EXPECT_GT(MaxAbs(QuantLinear(x, wrong) - ref), tol) << f.Name() << ": a wrong scale";
    }
    const at::Tensor ref64 = at::mm(xb, DequantizeWeight(Pack(w, kInt4G64), at::kFloat).t());
    EXPECT_GT(MaxAbs(QuantLinear(x, Pack(w, kInt4G32)) - ref64), 2 * kBf16Rel * MaxAbs(ref64) + 1e-4)
        << "groups of 32 read as 64";
  }
}

// The packed kernels have no derivative: the backward's dx = dy W' with W' dequantized equals
// autograd through the dense product of the dequantized weight.
TEST(QuantKernelTest, BackwardIsTheDequantizedWeightsTranspose) {
  const at::Tensor w = RandomWeight(40000, 64, 4);  // 2.56M elements: three blocks of the backward's rows
  at::manual_seed(5);
  const at::Tensor x0 = at::randn({6, 64}), dy = at::randn({6, 40000});
  for (const WeightFormat& f : {kInt8, kInt4G32}) {
    const FrozenWeight q = Pack(w, f);
    at::Tensor x = x0.clone().requires_grad_(true);
    {
      at::AutoGradMode grad(true);
      (QuantLinear(x, q) * dy).sum().backward();
    }
    const at::Tensor expected = at::mm(dy, DequantizeWeight(q, at::kFloat));
    ASSERT_TRUE(x.grad().defined()) << f.Name();
    EXPECT_LE(MaxAbs(x.grad() - expected), 1e-5 * MaxAbs(expected)) << f.Name();
  }
}

// The AVX512 product (cpu_gemv.h) against a float64 reference, within the f32 rounding of a
// K-term sum: |y - y*| <= K 2^-24 sum_k |x_k w_k| (+ the scale's product, one more rounding).
// Tails of K and N, tiles of 1-4 rows of x and more, `add`; a row's result is the same bits
// whatever rows are batched with it.
TEST(CpuGemvTest, EqualsTheFloat64ProductForEveryShape) {
  if (!CpuGemvAvailable()) GTEST_SKIP() << "this CPU has no AVX512 (LibTorch's products serve it)";
  at::manual_seed(11);
  for (const int64_t k : {16, 200, 576}) {
    for (const int64_t n : {1, 3, 6, 97, 300}) {  // tiles of 1-4 rows of W; 300: split across threads
      const at::Tensor wf = RandomWeight(n, k, 12);
      const QuantCodes c = QuantizeInt8(wf);
      for (const bool int8 : {true, false}) {
        const at::Tensor w = int8 ? c.q : wf, scales = int8 ? c.scale.to(at::kBFloat16) : at::Tensor();
        const at::Tensor wd = int8 ? c.q.to(at::kDouble) * scales.to(at::kDouble).unsqueeze(1) : wf.to(at::kDouble);
        for (const int64_t m : {1, 2, 3, 4, 9}) {
          const at::Tensor x = at::randn({m, k});
          const at::Tensor add = m % 2 == 1 ? at::randn({m, n}) : at::zeros({m, n});  // even m: none passed
          const at::Tensor ref = at::mm(x.to(at::kDouble), wd.t()) + add.to(at::kDouble);
          const at::Tensor bound = at::mm(x.abs().to(at::kDouble), wd.abs().t()) * (k + 2) * std::ldexp(1.0, -24) + 1e-30;
          const at::Tensor y = m % 2 == 1 ? CpuGemv(x, w, scales, add) : CpuGemv(x, w, scales);
          const std::string what = (int8 ? "int8 " : "f32 ") + std::to_string(m) + "x" + std::to_string(n) + "x" +
                                   std::to_string(k);
          EXPECT_TRUE(((y.to(at::kDouble) - ref).abs() <= bound + add.abs().to(at::kDouble) * 1e-7).all().item<bool>())
              << what;
          EXPECT_TRUE(at::equal(CpuGemv(x.narrow(0, m - 1, 1), w, scales, add.narrow(0, m - 1, 1)), y.narrow(0, m - 1, 1)))
              << what << ": its last row alone";
          if (int8 && n % 4 == 0) {  // the served layout: the same sums, read from tiles of 4 rows
            const at::Tensor tiled = TileRows(w);
            EXPECT_TRUE(at::equal(m % 2 == 1 ? CpuGemv(x, tiled, scales, add, true) : CpuGemv(x, tiled, scales, {}, true), y))
                << what << ": tiled";
            EXPECT_TRUE(at::equal(UntileRows(tiled), w)) << what;
          }
          if (int8) {
            const at::Tensor wrong = CpuGemv(x, w, scales * (1 + 1.0 / 64), add);
            EXPECT_FALSE(((wrong.to(at::kDouble) - ref).abs() <= bound + add.abs().to(at::kDouble) * 1e-7).all().item<bool>())
                << what << ": a wrong scale";
          }
          if (k % 16 != 0) {  // the tail's lanes must count
            const at::Tensor head = CpuGemv(x.narrow(1, 0, k / 16 * 16), w.narrow(1, 0, k / 16 * 16), scales, add);
            EXPECT_GT((head - y).abs().max().item<double>(), 1e-4) << what << ": without the tail";
          }
        }
      }
    }
  }
}

// The int4 product (cpu_gemv.h) against a float64 product of x and the dequantized weights.
// x is rounded to digits: an element of a group (the weight's) whose largest is a moves by at
// most a / (127 256), so |y - y*| <= sum_k |w'_k| a_g(k) / 32512 plus f32 rounding (K 2^-24 sum_k
// |x_k w'_k|; the digits' products are summed in integers). Chunks of 64 bytes and every tail
// (16, 32, 48 bytes), groups of 32 and 64, tiles of 1-4 rows of x and passes of 64 rows; a row's result is the
// same bits whatever rows are batched with it; a scale off by 2^-6 or a tail left out exceeds.
TEST(CpuGemvTest, Int4EqualsTheFloat64ProductOfItsDequantizedWeights) {
  if (!CpuGemvInt4Available()) GTEST_SKIP() << "this CPU has no AVX512-VNNI (LibTorch's int4 product serves it)";
  at::manual_seed(13);
  for (const int64_t k : {32, 96, 192, 576, 640}) {
    for (const int64_t group : {32, 64}) {
      if (k % group != 0) continue;
      for (const int64_t n : {16, 52, 304}) {
        const at::Tensor wf = RandomWeight(n, k, 14);
        const QuantCodes c = QuantizeInt4(wf, group);
        const at::Tensor pairs = at::stack({c.scale, c.zero}, 2).to(at::kBFloat16);
        const at::Tensor packed = PackInt4Codes(c.q, group), sz = PackInt4Pairs(pairs);
        const at::Tensor s = pairs.select(2, 0).to(at::kDouble).repeat_interleave(group, 1);
        const at::Tensor z = pairs.select(2, 1).to(at::kDouble).repeat_interleave(group, 1);
        const at::Tensor wd = (c.q.to(at::kDouble) - 8) * s + z;  // [n, k]
        ASSERT_TRUE(at::equal(DequantizeInt4(packed, sz, group), wd.to(at::kFloat))) << n << "x" << k;
        ASSERT_TRUE(at::equal(DequantizeInt4(packed.narrow(0, 4, 8), sz.narrow(0, 4, 8), group), wd.narrow(0, 4, 8).to(at::kFloat)))
            << n << "x" << k << ": two tiles";
        for (const int64_t m : {1, 3, 4, 9, 70}) {
          at::Tensor x = at::randn({m, k});
          x.view(-1).slice(0, 0, x.numel(), 41).mul_(20);  // outliers, as activations have
          const at::Tensor xd = x.to(at::kDouble), ref = at::mm(xd, wd.t());
          const at::Tensor a = xd.abs().reshape({m, k / group, group}).amax(2).repeat_interleave(group, 1);  // [m, k]
          const at::Tensor bound = at::mm(a / 32512, wd.abs().t()) + at::mm(xd.abs(), wd.abs().t()) * (k + 8) * std::ldexp(1.0, -24);
          const at::Tensor y = CpuGemvInt4(x, packed, sz, group);
          const std::string what = std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) + " g" +
                                   std::to_string(group);
          EXPECT_TRUE(((y.to(at::kDouble) - ref).abs() <= bound).all().item<bool>())
              << what << ": " << ((y.to(at::kDouble) - ref).abs() / bound).max().item<double>() << " of the bound";
          EXPECT_TRUE(at::equal(CpuGemvInt4(x.narrow(0, m - 1, 1), packed, sz, group), y.narrow(0, m - 1, 1)))
              << what << ": its last row alone";
          at::Tensor wrong = sz.clone();
          wrong.select(2, 0).mul_(1 + 1.0 / 64);
          EXPECT_FALSE(((CpuGemvInt4(x, packed, wrong, group).to(at::kDouble) - ref).abs() <= bound).all().item<bool>())
              << what << ": a wrong scale";
          if ((k - 32) % group == 0 && k > 32) {  // the last 32 codes must count
            const int64_t h = k - 32;
            const at::Tensor head = CpuGemvInt4(x.narrow(1, 0, h), PackInt4Codes(c.q.narrow(1, 0, h), group),
                                                PackInt4Pairs(pairs.narrow(1, 0, h / group)), group);
            EXPECT_FALSE(((head.to(at::kDouble) - ref).abs() <= bound).all().item<bool>()) << what << ": without the tail";
          }
        }
      }
    }
  }
  const at::Tensor q = at::randint(0, 16, {16, 64}, at::kByte), sz = at::ones({16, 2, 2}, at::kBFloat16);
  at::Tensor x = at::randn({2, 64});
  x[0][5] = NAN;
  x[1][7] = INFINITY;
  const at::Tensor y = CpuGemvInt4(x, PackInt4Codes(q, 32), PackInt4Pairs(sz), 32);
  EXPECT_TRUE(y[0].isnan().all().item<bool>()) << "a NaN in x reaches the result";
  EXPECT_FALSE(y[1].isfinite().any().item<bool>()) << "an infinity in x reaches the result";
}

std::string GgufFixture(const std::string& name) { return std::string(ADAPTD_GGUF_FIXTURE_DIR) + "/" + name; }

at::Tensor Dequantized(const GgufTensor& t) {
  at::Tensor x = at::empty(t.Shape(), at::kFloat);
  EXPECT_TRUE(Dequantize(t, x.data_ptr<float>()).ok());
  return x;
}

// Q4_0 and Q4_1 are int4 in groups of 32 already: their codes are taken as they are. The
// values equal the file's bit for bit with f32 scales; packed for the kernels, scale and zero
// round to bf16, which moves an element by at most (8 |d| + |m + 8 d|) 2^-8.
TEST(QuantGgufTest, Q4BlocksMapOntoInt4WithoutRequantizing) {
  auto file = GgufFile::Open(GgufFixture("quant/types.gguf"));
  ASSERT_TRUE(file.ok()) << file.status();
  for (const char* name : {"t.Q4_0", "t.Q4_1"}) {
    const GgufTensor* t = (*file)->FindTensor(name);
    ASSERT_NE(t, nullptr) << name;
    const std::vector<int64_t> shape = t->Shape();  // [N, K]
    at::Tensor q = at::empty(shape, at::kByte), d = at::empty({shape[0], shape[1] / 32}), m = at::empty_like(d);
    ASSERT_TRUE(UnpackQ4(*t, q.data_ptr<uint8_t>(), d.data_ptr<float>(), m.data_ptr<float>()).ok());
    const at::Tensor values = Dequantized(*t);
    const at::Tensor ds = d.repeat_interleave(32, 1), ms = m.repeat_interleave(32, 1);
    EXPECT_TRUE(at::equal(ds * q.to(at::kFloat) + ms, values)) << name;

    // Rows padded to the kernels' multiple of 16 with copies.
    const int64_t rows = 16;
    const at::Tensor pick = at::arange(rows, at::kLong) % shape[0];
    const QuantCodes codes{q.index_select(0, pick), d.index_select(0, pick), (m + 8 * d).index_select(0, pick)};
    auto packed = PackWeight(codes, kInt4G32, at::kCPU);
    ASSERT_TRUE(packed.ok()) << packed.status();
    const at::Tensor served = DequantizeWeight(*packed, at::kFloat), want = values.index_select(0, pick);
    const at::Tensor bound = ((8 * ds.abs() + (ms + 8 * ds).abs()) * kBf16Rel + 1e-7).index_select(0, pick);
    EXPECT_TRUE(((served - want).abs() <= bound).all().item<bool>()) << name << ": " << MaxAbs(served - want);
    std::printf("%s as int4-g32: max error %.3g of its own step d (bf16 scale and zero)\n", name,
                ((served - want).abs() / ds.index_select(0, pick).abs().clamp_min(1e-12)).max().item<double>());
  }
}

// Q8_0 has a scale per 32 weights; int8 per output channel has one per row, so its blocks are
// requantized: within half the row's step of the file's values (reported against Q8_0's step).
TEST(QuantGgufTest, Q8_0IsRequantizedPerChannel) {
  auto file = GgufFile::Open(GgufFixture("quant/types.gguf"));
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufTensor* t = (*file)->FindTensor("t.Q8_0");
  ASSERT_NE(t, nullptr);
  const at::Tensor values = Dequantized(*t);
  const int64_t n = values.size(0), k = values.size(1);
  const at::Tensor pick = at::arange(16, at::kLong) % n;
  const at::Tensor w = values.index_select(0, pick);
  const QuantCodes c = QuantizeInt8(w);
  auto packed = PackWeight(c, kInt8, at::kCPU);
  ASSERT_TRUE(packed.ok());
  const at::Tensor err = (DequantizeWeight(*packed, at::kFloat) - w).abs();
  EXPECT_TRUE((err <= c.scale.unsqueeze(1) * 0.5 * (1 + 1e-6)).all().item<bool>());
  const at::Tensor q8_step = w.reshape({16, k / 32, 32}).abs().amax(2) / 127;  // Q8_0's d per block
  std::printf("Q8_0 as int8 per channel: max error %.3g of the row's step, %.3g of the block's Q8_0 step\n",
              (err / c.scale.unsqueeze(1)).max().item<double>(),
              (err / q8_step.repeat_interleave(32, 1).clamp_min(1e-12)).max().item<double>());
}

// ---------------------------------------------------------------------------------------------
// Whole models against their dequantized-float oracle (the same codes stored dense, f32).

std::unique_ptr<Model> LoadAs(const std::string& dir, const WeightFormat& f, bool oracle, LoadOptions o = {}) {
  o.weights = f;
  o.dequantize_weights = oracle;
  if (!o.dtype) o.dtype = DType::kF32;
  auto m = Model::Load(dir, o);
  EXPECT_TRUE(m.ok()) << dir << " " << f.Name() << ": " << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

std::vector<int32_t> TestIds(int n, int64_t vocab) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13) % vocab);
  return ids;
}

std::vector<float> Logits(const Model& m, const std::vector<int32_t>& ids, SessionOptions o = {}) {
  auto s = m.NewSession(o);
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return {};
  return FeedPieces(m, **s, ids, {static_cast<int>(ids.size()) - 3, 1, 1, 1});
}

double MaxAbs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::abs(static_cast<double>(x)));
  return m;
}

// Every product of a quantized base rounds its input and its output to bf16 (2^-8 each): the
// logits of these 3-layer models stay within 2^-4 max |logit| of the f32 model computing with
// the same dequantized weights (measured: about 2^-6). One quantization step is ~1/15 (int4) or
// ~1/127 (int8) of a group's range: an oracle of another format or group size must land outside.
TEST(QuantModelTest, LogitsEqualTheDequantizedFloatModel) {
  const std::vector<std::string> dirs = {FixtureDir() + "/hf/qwen3_gqa_tied/model", FixtureDir() + "/hf/llama_tied/model",
                                         FixtureDir() + "/ttt/ttt_qwen3_hidden_proj/model",
                                         GgufFixture("models/llama_tied_q8.gguf")};
  const std::vector<std::pair<WeightFormat, WeightFormat>> formats = {
      {kInt8, kInt4G32}, {kInt4G32, kInt4G64}, {kInt4G64, kInt4G32}};  // served, a wrong oracle
  for (const std::string& dir : dirs) {
    for (const auto& [f, wrong] : formats) {
      auto q = LoadAs(dir, f, false), o = LoadAs(dir, f, true), w = LoadAs(dir, wrong, true);
      ASSERT_TRUE(q && o && w);
      const auto ids = TestIds(40, q->config().vocab_size);
      const std::vector<float> lq = Logits(*q, ids), lo = Logits(*o, ids), lw = Logits(*w, ids);
      const double tol = kBf16Rel * 16 * MaxAbs(lo);
      EXPECT_LE(MaxAbsDiff(lq, lo), tol) << dir << " " << f.Name();
      EXPECT_GT(MaxAbsDiff(lq, lw), tol) << dir << " " << f.Name() << " against " << wrong.Name();
      std::printf("%s %s: max |logit diff| %.4f vs its oracle, %.4f vs %s (bound %.4f)\n", dir.c_str(),
                  f.Name().c_str(), MaxAbsDiff(lq, lo), MaxAbsDiff(lq, lw), wrong.Name().c_str(), tol);
    }
  }
}

// In a bf16 compute dtype the rest of the pass rounds too, and the oracle's dense copy rounds
// the dequantized weights themselves to bf16 (2^-8 each): the bound doubles to 2^-3 max |logit|,
// and an oracle of another group size must still land outside.
TEST(QuantModelTest, Bf16ComputeFollowsItsOracle) {
  const std::string dir = FixtureDir() + "/ttt/ttt_qwen3_hidden_proj/model";
  LoadOptions bf16;
  bf16.dtype = DType::kBF16;
  const std::vector<std::pair<WeightFormat, WeightFormat>> formats = {{kInt8, kInt4G32}, {kInt4G32, kInt4G64}};
  for (const auto& [f, wrong] : formats) {
    auto q = LoadAs(dir, f, false, bf16), o = LoadAs(dir, f, true, bf16), w = LoadAs(dir, wrong, true, bf16);
    ASSERT_TRUE(q && o && w);
    const auto ids = TestIds(40, q->config().vocab_size);
    const std::vector<float> lq = Logits(*q, ids), lo = Logits(*o, ids), lw = Logits(*w, ids);
    const double tol = kBf16Rel * 32 * MaxAbs(lo);
    EXPECT_LE(MaxAbsDiff(lq, lo), tol) << f.Name();
    EXPECT_GT(MaxAbsDiff(lq, lw), tol) << f.Name() << " against " << wrong.Name();
    std::printf("bf16 %s: max |logit diff| %.4f vs its oracle, %.4f vs %s (bound %.4f)\n", f.Name().c_str(),
                MaxAbsDiff(lq, lo), MaxAbsDiff(lq, lw), wrong.Name().c_str(), tol);
  }
}

// ||dW_quantized - dW_oracle|| / ||dW_oracle|| per layer after `ids`: FastWeight is W0' + dW
// with the same W0' in both, so the difference is the updates'.
double RelativeDeltaError(const Model& q, const Model& o, const SessionOptions& opt, const std::vector<int32_t>& ids,
                          int64_t* applied) {
  auto sq = q.NewSession(opt), so = o.NewSession(opt), fresh = o.NewSession(opt);
  EXPECT_TRUE(sq.ok() && so.ok() && fresh.ok());
  FeedPieces(q, **sq, ids, {static_cast<int>(ids.size())});
  FeedPieces(o, **so, ids, {static_cast<int>(ids.size())});
  EXPECT_EQ((*sq)->updates_applied(), (*so)->updates_applied());
  *applied = (*sq)->updates_applied();
  double worst = 0;
  for (int l : opt.rule == UpdateRule::kNtpGradient ? q.config().ttt.fast_layers : q.config().ttt.layers) {
    const auto wq = q.FastWeight(**sq, l), wo = o.FastWeight(**so, l), w0 = o.FastWeight(**fresh, l);
    EXPECT_TRUE(wq.ok() && wo.ok() && w0.ok());
    double diff = 0, norm = 0;
    for (size_t i = 0; i < wq->size(); ++i) {
      diff += std::pow(double((*wq)[i]) - (*wo)[i], 2);
      norm += std::pow(double((*wo)[i]) - (*w0)[i], 2);
    }
    EXPECT_GT(norm, 0) << "layer " << l << " learned nothing";
    worst = std::max(worst, std::sqrt(diff / norm));
  }
  return worst;
}

// In-Place and ntp_gradient updates on a quantized base equal those of the float model whose W0
// is the dequantized weights: Z and the gradients pass through bf16-rounded products, so dW
// agrees to 2^-4 relative (measured: under 2^-6); the split mode keeps dW and the update in fp32.
TEST(QuantModelTest, UpdatesEqualTheDequantizedModel) {
  const std::string dir = FixtureDir() + "/ttt/ttt_qwen3_hidden_proj/model";
  for (const WeightFormat& f : {kInt8, kInt4G32}) {
    auto q = LoadAs(dir, f, false), o = LoadAs(dir, f, true);
    ASSERT_TRUE(q && o);
    const auto ids = TestIds(3 * static_cast<int>(q->config().ttt.chunk) + 2, q->config().vocab_size);
    for (UpdateRule rule : {UpdateRule::kInplace, UpdateRule::kNtpGradient}) {
      SessionOptions opt;
      opt.rule = rule;
      int64_t applied = 0;
      const double err = RelativeDeltaError(*q, *o, opt, ids, &applied);
      EXPECT_GT(applied, 0);
      EXPECT_LE(err, 1.0 / 16) << f.Name() << (rule == UpdateRule::kInplace ? " inplace" : " ntp_gradient");
      std::printf("%s %s: dW relative error %.2e vs the dequantized model (%lld updates)\n", f.Name().c_str(),
                  rule == UpdateRule::kInplace ? "inplace" : "ntp_gradient", err, static_cast<long long>(applied));
    }
  }
}

TEST(QuantModelTest, ParitySessionsNeedADenseTttDown) {
  const std::string dir = FixtureDir() + "/ttt/ttt_qwen3_hidden_proj/model";
  SessionOptions parity;
  parity.numeric = NumericMode::kParity;
  auto q = LoadAs(dir, kInt8, false);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->NewSession(parity).status().code(), absl::StatusCode::kFailedPrecondition);
  LoadOptions dense;
  dense.dense_ttt_down = true;
  auto d = LoadAs(dir, kInt8, false, dense);
  ASSERT_TRUE(d);
  auto s = d->NewSession(parity);
  ASSERT_TRUE(s.ok()) << s.status();
  const auto ids = TestIds(2 * static_cast<int>(d->config().ttt.chunk), d->config().vocab_size);
  EXPECT_FALSE(FeedPieces(*d, **s, ids, {static_cast<int>(ids.size())}).empty());
  EXPECT_GT((*s)->updates_applied(), 0);
  EXPECT_LT(d->weight_bytes(), LoadAs(dir, WeightFormat{}, false)->weight_bytes());
  EXPECT_GT(d->weight_bytes(), q->weight_bytes());
}

// Sessions bind to the served weights: a snapshot of one format is refused under another; the
// base fingerprint is the same under all. Under one format a snapshot continues exactly.
TEST(QuantModelTest, TheFormatIsPartOfTheIdentity) {
  const std::string dir = FixtureDir() + "/ttt/ttt_qwen3_hidden_proj/model";
  auto dense = LoadAs(dir, WeightFormat{}, false), i8 = LoadAs(dir, kInt8, false), i4 = LoadAs(dir, kInt4G32, false);
  auto i8_again = LoadAs(dir, kInt8, false), oracle = LoadAs(dir, kInt8, true);
  ASSERT_TRUE(dense && i8 && i4 && i8_again && oracle);
  EXPECT_EQ(i8->fingerprint(), dense->fingerprint() + "-int8");
  EXPECT_EQ(i4->fingerprint(), dense->fingerprint() + "-int4-g32");
  EXPECT_NE(oracle->fingerprint(), i8->fingerprint());
  EXPECT_EQ(i8->base_fingerprint(), dense->fingerprint());
  EXPECT_EQ(i4->base_fingerprint(), dense->base_fingerprint());
  EXPECT_EQ(i8->fingerprint(), i8_again->fingerprint());

  const auto ids = TestIds(30, i8->config().vocab_size);
  auto s = i8->NewSession();
  ASSERT_TRUE(s.ok());
  FeedPieces(*i8, **s, ids, {20});
  auto bytes = i8->EncodeSession(**s, {StateEncoding::kExact, /*include_kv=*/true});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(i4->DecodeSession(*bytes).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(dense->DecodeSession(*bytes).status().code(), absl::StatusCode::kFailedPrecondition);
  auto back = i8_again->DecodeSession(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  const std::vector<int32_t> rest(ids.begin() + 20, ids.end());
  EXPECT_EQ(FeedPieces(*i8, **s, rest, {10}), FeedPieces(*i8_again, **back, rest, {10}));
}

}  // namespace
}  // namespace adaptd::engine
