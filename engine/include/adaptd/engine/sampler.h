// Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, repetition /
// presence / frequency penalties, a seed, and top-n log-probabilities. Pure C++ on fp32 logits
// (no device), one Sampler per request.
//
// Order (as vLLM and HF apply them): penalties on the logits, then greedy (temperature 0) or
// temperature, top-k, top-p, min-p, and a draw. Log-probabilities are those of the model's own
// distribution (log-softmax of the raw logits), not of the filtered one.
#ifndef ADAPTD_ENGINE_SAMPLER_H_
#define ADAPTD_ENGINE_SAMPLER_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace adaptd::engine {

struct SamplingParams {
  double temperature = 0.0;         // below kGreedyBelow (0 included): greedy
  int top_k = 0;                    // 0: off; else keep the k most likely tokens
  double top_p = 1.0;               // in (0, 1]: keep the smallest set with at least this mass
  double min_p = 0.0;               // in [0, 1]: drop tokens below min_p * the top probability
  double repetition_penalty = 1.0;  // [0.01, 100]; a logit l of a token in the context or the
                                    // output becomes l / r (l > 0) or l * r (HF)
  double presence_penalty = 0.0;    // [-2, 2]; subtracted once per token in the output
  double frequency_penalty = 0.0;   // [-2, 2]; subtracted per occurrence in the output
  uint64_t seed = 0;                // same seed, logits and history -> same tokens
  int top_logprobs = 0;             // 0..20 alternatives reported per token
};

inline constexpr int kMaxTopLogprobs = 20;
inline constexpr double kGreedyBelow = 1e-5;  // smaller temperatures decode greedily (as vLLM)

// INVALID_ARGUMENT naming the field: NaN/Inf or negative temperature, top_p outside (0, 1],
// min_p outside [0, 1], top_k < 0, penalties outside their ranges, top_logprobs outside [0, 20].
absl::Status ValidateSamplingParams(const SamplingParams& params);

class Sampler {
 public:
  struct Choice {
    int32_t token = 0;
    float logprob = 0;                              // of `token` under the model
    std::vector<std::pair<int32_t, float>> top;     // top_logprobs most likely, descending
  };

  // Errors as ValidateSamplingParams.
  static absl::StatusOr<Sampler> Create(const SamplingParams& params);

  // The next token given the logits [V], the context (prompt and earlier turns: repetition
  // penalty) and this request's output so far (repetition, presence and frequency penalties).
  // FAILED_PRECONDITION for NaN or +Inf logits (-Inf masks a token); INVALID_ARGUMENT for an id
  // outside [0, V).
  absl::StatusOr<Choice> Sample(absl::Span<const float> logits, absl::Span<const int32_t> context,
                                absl::Span<const int32_t> output);

  // The distribution Sample draws from: (token, probability > 0) after penalties and filters,
  // descending, summing to 1. Greedy yields the single argmax with probability 1. Top-p applies
  // to the renormalised top-k set (HF, vLLM).
  absl::StatusOr<std::vector<std::pair<int32_t, double>>> Distribution(absl::Span<const float> logits,
                                                                     absl::Span<const int32_t> context,
                                                                     absl::Span<const int32_t> output) const;

 private:
  explicit Sampler(const SamplingParams& params) : params_(params), state_(params.seed ^ 0x9E3779B97F4A7C15ull) {}
  double Uniform();  // [0, 1), from a seeded splitmix64: the same on every platform

  SamplingParams params_;
  uint64_t state_;
};

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_SAMPLER_H_
