// The engine against oracles: HF transformers logits for stock Qwen3/Llama checkpoints, and the
// project's PyTorch In-Place TTT reference (tools/ttt_reference) for logits and every TTT
// layer's W. Fixtures come from tests/engine/make_fixtures.py (a ctest fixture that runs first).
// The device is ADAPTD_TEST_DEVICE (default cpu), so the same tests run on CUDA.
//
// Tolerances (max abs difference):
//   f32 logits vs HF: 1e-4 (the bound). f32 TTT logits and W vs the reference: 1e-4,
//   and between feeding at once, in pieces and token by token (the sums run in another order;
//   the differences seen are ~3e-5 on W of magnitude ~1).
//   bf16: 0.1 on logits of magnitude ~5-10 and on W; bf16 has 8 mantissa bits, so results
//   legitimately differ by a few ulps per op between two correct implementations. On CUDA the
//   TTT dumps' bound grows with the tensor's scale (Bf16Tol: 0.1 + max|ref| / 32): cuBLAS rounds
//   in another order than the CPU reference, and the hidden-target fixtures' W reach ~100,
//   where one bf16 ulp is 0.5 (seen on an H200: W off by up to 1.0, logits by 0.145). The
//   negative controls below show that real mistakes exceed the bounds by far.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "adaptd/engine/model.h"
#include "engine/fixtures.h"

namespace adaptd::engine {
namespace {

std::vector<int> PrefillThenDecode(int total, int prefill) {
  std::vector<int> pieces{prefill};
  pieces.resize(1 + total - prefill, 1);
  return pieces;
}

// ---- stock checkpoints vs HF transformers ----

class HfParityTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const auto& c = Case("hf", GetParam());
    ASSERT_FALSE(c.is_null()) << "fixture case " << GetParam() << " missing from " << FixtureDir();
    model_dir_ = c["model"];
    expected_ = c["expected"];
    ids_ = ReadIds(expected_);
    ASSERT_FALSE(ids_.empty());
  }

  // Max abs diff of prefill(48) + one-token decodes against `expected_name`.
  double Diff(const LoadOptions& options, const std::string& expected_name, std::vector<int> pieces = {}) {
    auto model = LoadModel(model_dir_, options);
    if (model == nullptr) return INFINITY;
    auto session = model->NewSession().value();
    if (pieces.empty()) pieces = PrefillThenDecode(static_cast<int>(ids_.size()), 48);
    return MaxAbsDiff(FeedPieces(*model, *session, ids_, pieces), ReadFloats(expected_, expected_name));
  }

  std::string model_dir_, expected_;
  std::vector<int32_t> ids_;
};

TEST_P(HfParityTest, PrefillF32MatchesTransformers) {
  EXPECT_LE(Diff({}, "logits_f32", {static_cast<int>(ids_.size())}), kF32Tol);
}

TEST_P(HfParityTest, IncrementalDecodeF32MatchesTransformers) {
  for (bool gemm : {false, true}) {  // a decoded row as x W^T and as W X^T
    LoadOptions o;
    o.few_rows_as_gemm = gemm;
    EXPECT_LE(Diff(o, "logits_f32"), kF32Tol) << "few_rows_as_gemm " << gemm;
  }
}

TEST_P(HfParityTest, Bf16MatchesTransformersBf16) {
  LoadOptions o;
  o.dtype = DType::kBF16;
  const double diff = Diff(o, "logits_bf16");
  EXPECT_LE(diff, kBf16Tol);
  RecordProperty("bf16_max_abs_diff", std::to_string(diff));
}

TEST_P(HfParityTest, WrongRopeThetaExceedsTolerance) {
  LoadOptions o;
  o.edit_config = [](ModelConfig& c) { c.rope.theta *= 2; };
  EXPECT_GT(Diff(o, "logits_f32"), 100 * kF32Tol);
}

TEST_P(HfParityTest, ArchitectureSpecificPartsMatter) {
  LoadOptions o;
  if (GetParam().rfind("qwen3", 0) == 0) {
    o.edit_config = [](ModelConfig& c) { c.qk_norm = false; };  // q/k norms skipped
  } else if (GetParam() == "llama_gqa_llama3") {
    o.edit_config = [](ModelConfig& c) { c.rope.type = RopeConfig::Type::kDefault; };  // no scaling
  } else {
    o.edit_config = [](ModelConfig& c) { c.rms_norm_eps = 1e-1; };
  }
  EXPECT_GT(Diff(o, "logits_f32"), 100 * kF32Tol);
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, HfParityTest,
                         testing::Values("qwen3_gqa_tied", "qwen3_mha_untied", "llama_gqa_llama3", "llama_tied"));

// ---- In-Place TTT vs tools/ttt_reference ----

class TttParityTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    case_ = Case("ttt", GetParam());
    ASSERT_FALSE(case_.is_null()) << "fixture case " << GetParam() << " missing from " << FixtureDir();
  }

  struct Result {
    std::vector<float> logits;
    std::vector<std::vector<float>> weights;  // per TTT layer, [d, f]
    std::vector<std::vector<float>> initial;  // the same before any update (W0)
    int64_t n_learned = 0, updates = 0;
  };

  Result RunDump(const nlohmann::json& dump, bool few_rows_as_gemm = false) {
    LoadOptions o;
    o.dtype = dump["dtype"] == "bf16" ? DType::kBF16 : DType::kF32;
    o.few_rows_as_gemm = few_rows_as_gemm;
    auto model = LoadModel(case_["model"], o);
    if (model == nullptr) return {};
    SessionOptions so;
    so.numeric = dump["numeric"] == "parity" ? NumericMode::kParity : NumericMode::kSplit;
    if (!dump["clip_tau"].is_null()) so.clip_tau = dump["clip_tau"].get<double>();
    auto session = model->NewSession(so).value();
    Result r;
    for (int layer : case_["ttt_layers"]) r.initial.push_back(model->FastWeight(*session, layer).value());
    r.logits = FeedPieces(*model, *session, dump["ids"].get<std::vector<int32_t>>(), dump["pieces"].get<std::vector<int>>());
    for (int layer : case_["ttt_layers"]) {
      auto w = model->FastWeight(*session, layer);
      EXPECT_TRUE(w.ok()) << w.status();
      r.weights.push_back(w.ok() ? *w : std::vector<float>{});
    }
    r.n_learned = session->n_learned();
    r.updates = session->updates_applied();
    return r;
  }

  nlohmann::json case_;
};

TEST_P(TttParityTest, LogitsAndFastWeightsMatchReference) {
  for (const auto& dump : case_["dumps"]) {
    for (bool gemm : {false, true}) {  // few rows as x W^T and as W X^T
      const std::string file = dump["file"];
      SCOPED_TRACE(file + (gemm ? ", few rows as W X^T" : ""));
      auto tol = [&](const std::vector<float>& ref) { return dump["dtype"] == "bf16" ? Bf16Tol(ref) : kF32Tol; };
      Result r = RunDump(dump, gemm);
      const std::vector<float> logits = ReadFloats(file, "logits");
      EXPECT_LE(MaxAbsDiff(r.logits, logits), tol(logits));
      std::vector<int> layers = case_["ttt_layers"];
      for (size_t i = 0; i < layers.size(); ++i) {
        const std::string name = "layers." + std::to_string(layers[i]) + ".weight";
        const std::vector<float> w = ReadFloats(file, name);
        EXPECT_LE(MaxAbsDiff(r.weights[i], w), tol(w)) << name;
        // The bound is far tighter than what the updates do to W.
        if (r.updates > 0) {
          EXPECT_GT(MaxAbsDiff(r.initial[i], w), 4 * tol(w)) << name;
        }
      }
      const int64_t n = static_cast<int64_t>(dump["ids"].size());
      EXPECT_EQ(r.n_learned, n);
      const int64_t chunk = case_["chunk"];
      EXPECT_EQ(r.updates, (n / chunk) * static_cast<int64_t>(layers.size()));
    }
  }
}

// At once, in straddling pieces and token by token: the same W (split invariance).
TEST_P(TttParityTest, SplitInvariance) {
  std::vector<Result> results;
  for (const auto& dump : case_["dumps"]) {
    const std::string file = dump["file"];
    if (file.find("split_f32_") != std::string::npos && file.find("clipped") == std::string::npos &&
        dump["ids"].size() == case_["dumps"][0]["ids"].size()) {
      results.push_back(RunDump(dump));
    }
  }
  ASSERT_EQ(results.size(), 3u);  // whole, pieces, tokens
  for (size_t k = 1; k < results.size(); ++k) {
    EXPECT_LE(MaxAbsDiff(results[k].logits, results[0].logits), kF32Tol);
    for (size_t i = 0; i < results[0].weights.size(); ++i) {
      EXPECT_LE(MaxAbsDiff(results[k].weights[i], results[0].weights[i]), kF32Tol);
    }
  }
}

// The updates are real: after 4 chunks W is far from W0, and learn=false changes nothing.
TEST_P(TttParityTest, UpdatesMoveWeightsAndLearnFalseKeepsThem) {
  auto model = LoadModel(case_["model"]);
  ASSERT_NE(model, nullptr);
  const int layer = case_["ttt_layers"][0];
  auto session = model->NewSession().value();
  auto w0 = model->FastWeight(*session, layer);
  ASSERT_TRUE(w0.ok());
  const auto ids = case_["dumps"][0]["ids"].get<std::vector<int32_t>>();
  FeedPieces(*model, *session, ids, {static_cast<int>(ids.size())});
  auto w = model->FastWeight(*session, layer);
  ASSERT_TRUE(w.ok());
  EXPECT_GT(MaxAbsDiff(*w, *w0), 1e-2);

  const int64_t n = session->n_learned(), pos = session->position();
  ASSERT_TRUE(model->Forward(*session, absl::MakeConstSpan(ids).subspan(0, 12), /*learn=*/false).ok());
  EXPECT_EQ(session->n_learned(), n);
  EXPECT_EQ(session->position(), pos + 12);
  auto after = model->FastWeight(*session, layer);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, *w);
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, TttParityTest,
                         testing::Values("ttt_qwen3_hidden_proj", "ttt_qwen3_embed_proj", "ttt_llama_hidden_noproj"));

TEST(ForwardTest, RejectsBadInput) {
  auto model = LoadModel("hf/llama_tied/model");
  ASSERT_NE(model, nullptr);
  auto session = model->NewSession().value();
  std::vector<int32_t> bad{1, 256};
  auto out = model->Forward(*session, bad);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session->position(), 0);
  EXPECT_EQ(model->Forward(*session, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->FastWeight(*session, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adaptd::engine
