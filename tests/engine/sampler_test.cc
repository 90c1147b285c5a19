// Sampler: each option on fixed logits, properties of top-k / top-p / min-p on random logits,
// the empirical distribution at a temperature, seeds, log-probabilities, and validation.
#include "adaptd/engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>

namespace adaptd::engine {
namespace {

const std::vector<float> kLogits{2.0f, 1.0f, 0.5f, -1.0f, 3.0f, 0.0f};  // argmax 4, then 0, 1

Sampler Make(SamplingParams p) { return Sampler::Create(p).value(); }

std::vector<double> Softmax(const std::vector<float>& l, double t = 1) {
  double m = *std::max_element(l.begin(), l.end()), z = 0;
  std::vector<double> p;
  for (float v : l) z += std::exp((v - m) / t);
  for (float v : l) p.push_back(std::exp((v - m) / t) / z);
  return p;
}

TEST(SamplerTest, GreedyIsArgmaxAndPenaltiesMoveIt) {
  EXPECT_EQ(Make({}).Sample(kLogits, {}, {})->token, 4);
  SamplingParams p;
  p.repetition_penalty = 2.0;  // 3.0 -> 1.5 < 2.0, whether 4 is in the context or the output
  EXPECT_EQ(Make(p).Sample(kLogits, {4}, {})->token, 0);
  EXPECT_EQ(Make(p).Sample(kLogits, {}, {4})->token, 0);
  p = {};
  p.presence_penalty = 1.5;  // 3.0 -> 1.5, for generated tokens only
  EXPECT_EQ(Make(p).Sample(kLogits, {}, {4})->token, 0);
  EXPECT_EQ(Make(p).Sample(kLogits, {4}, {})->token, 4);
  p = {};
  p.frequency_penalty = 0.4;  // three times: 3.0 -> 1.8 < 2.0
  EXPECT_EQ(Make(p).Sample(kLogits, {}, {4, 4, 4})->token, 0);
  EXPECT_EQ(Make(p).Sample(kLogits, {}, {4, 4})->token, 4);  // twice: 2.2 still wins
  p = {};
  p.temperature = 1e-30;  // below kGreedyBelow: greedy, not an overflow
  EXPECT_EQ(Make(p).Sample(kLogits, {}, {})->token, 4);
}

TEST(SamplerTest, TemperatureMatchesSoftmaxEmpirically) {
  SamplingParams p;
  p.temperature = 0.7;
  p.seed = 42;
  Sampler s = Make(p);
  const auto expected = Softmax(kLogits, 0.7);
  std::vector<int> counts(kLogits.size());
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++counts[s.Sample(kLogits, {}, {})->token];
  for (size_t i = 0; i < counts.size(); ++i) {
    const double sd = std::sqrt(expected[i] * (1 - expected[i]) / n);
    EXPECT_NEAR(counts[i] / double(n), expected[i], 5 * sd + 1e-4) << "token " << i;
  }
}

TEST(SamplerTest, FilterPropertiesOnRandomLogits) {
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0, 3);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> l(50);
    for (float& v : l) v = normal(gen);
    const auto probs = Softmax(l);
    SamplingParams p;
    p.temperature = 1.0;
    p.top_k = 1 + trial % 20;
    auto d = Make(p).Distribution(l, {}, {});
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->size(), static_cast<size_t>(p.top_k));  // top-k count
    p = {};
    p.temperature = 1.0;
    p.top_p = 0.05 + 0.9 * (trial % 10) / 10.0;
    d = Make(p).Distribution(l, {}, {});
    ASSERT_TRUE(d.ok());
    double kept = 0, min_kept = 1;
    std::set<int32_t> ids;
    for (const auto& [id, prob] : *d) kept += probs[id], min_kept = std::min(min_kept, probs[id]), ids.insert(id);
    EXPECT_GE(kept, p.top_p - 1e-9);                      // enough mass ...
    EXPECT_LT(kept - min_kept, p.top_p);                  // ... and minimal
    for (size_t id = 0; id < l.size(); ++id) {            // the kept set is a top set
      if (!ids.count(id)) {
        EXPECT_LE(probs[id], min_kept);
      }
    }
    p = {};
    p.temperature = 1.0;
    p.min_p = 0.1;
    const double top = *std::max_element(probs.begin(), probs.end());
    const auto min_p_dist = Make(p).Distribution(l, {}, {});
    ASSERT_TRUE(min_p_dist.ok());
    for (const auto& [id, prob] : *min_p_dist) EXPECT_GE(probs[id], 0.1 * top - 1e-12);
  }
}

TEST(SamplerTest, TopPAppliesToTheRenormalisedTopK) {
  const std::vector<float> l{std::log(0.4f), std::log(0.2f), std::log(0.2f), std::log(0.2f)};
  SamplingParams p;
  p.temperature = 1.0;
  p.top_k = 2;
  p.top_p = 0.6;  // 0.4 / (0.4 + 0.2) = 0.67 >= 0.6: one token
  auto d = Make(p).Distribution(l, {}, {});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->size(), 1u);
}

TEST(SamplerTest, SeedsAreReproducible) {
  SamplingParams p;
  p.temperature = 1.5;
  p.seed = 3;
  Sampler a = Make(p), b = Make(p);
  p.seed = 4;
  Sampler c = Make(p);
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 64; ++i) {
    ta.push_back(a.Sample(kLogits, {}, {})->token);
    tb.push_back(b.Sample(kLogits, {}, {})->token);
    tc.push_back(c.Sample(kLogits, {}, {})->token);
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(SamplerTest, LogprobsAreTheModelsOwn) {
  SamplingParams p;
  p.top_logprobs = 3;
  p.presence_penalty = 2;  // changes the choice (3 - 2 < 2), not the reported log-probabilities
  auto c = Make(p).Sample(kLogits, {}, {4});
  ASSERT_TRUE(c.ok());
  const auto probs = Softmax(kLogits);
  EXPECT_EQ(c->token, 0);
  EXPECT_NEAR(c->logprob, std::log(probs[0]), 1e-5);
  ASSERT_EQ(c->top.size(), 3u);
  EXPECT_EQ(c->top[0].first, 4);
  EXPECT_EQ(c->top[1].first, 0);
  EXPECT_EQ(c->top[2].first, 1);
  EXPECT_NEAR(c->top[0].second, std::log(probs[4]), 1e-5);
}

TEST(SamplerTest, MaskedTokensAreNeverDrawn) {
  std::vector<float> l{-INFINITY, 0.0f, -INFINITY, 0.0f};
  SamplingParams p;
  p.temperature = 1.0;
  Sampler s = Make(p);
  for (int i = 0; i < 200; ++i) {
    const int32_t t = s.Sample(l, {}, {})->token;
    EXPECT_TRUE(t == 1 || t == 3);
  }
}

TEST(SamplerTest, RejectsBadParametersAndInputs) {
  for (auto edit : std::vector<void (*)(SamplingParams&)>{
           [](SamplingParams& p) { p.temperature = NAN; }, [](SamplingParams& p) { p.temperature = -1; },
           [](SamplingParams& p) { p.temperature = INFINITY; }, [](SamplingParams& p) { p.top_p = 0; },
           [](SamplingParams& p) { p.top_p = 1.5; }, [](SamplingParams& p) { p.top_k = -1; },
           [](SamplingParams& p) { p.min_p = 2; }, [](SamplingParams& p) { p.repetition_penalty = 0; },
           [](SamplingParams& p) { p.presence_penalty = NAN; }, [](SamplingParams& p) { p.frequency_penalty = 3; },
           [](SamplingParams& p) { p.repetition_penalty = 1e300; }, [](SamplingParams& p) { p.top_logprobs = 21; }}) {
    SamplingParams p;
    edit(p);
    EXPECT_EQ(Sampler::Create(p).status().code(), absl::StatusCode::kInvalidArgument);
  }
  Sampler s = Make({});
  EXPECT_EQ(s.Sample(std::vector<float>{1, NAN}, {}, {}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.Sample(std::vector<float>{-INFINITY}, {}, {}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.Sample(kLogits, {99}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Sample(kLogits, {}, {-1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Sample({}, {}, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adaptd::engine
