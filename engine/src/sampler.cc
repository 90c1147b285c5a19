// Sampler: penalties, filters and a portable seeded draw over fp32 logits.
#include "adaptd/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"

namespace adaptd::engine {
namespace {

absl::Status Bad(const char* field, const char* rule) {
  return absl::InvalidArgumentError(absl::StrCat("sampling: ", field, " must be ", rule));
}

// log-softmax of `x` (entries may be -inf; at least one is finite).
template <typename T>
std::vector<double> LogSoftmax(absl::Span<const T> x) {
  const double m = *std::max_element(x.begin(), x.end());
  double sum = 0;
  for (T v : x) sum += std::exp(v - m);
  const double log_z = m + std::log(sum);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] - log_z;
  return out;
}

absl::Status CheckLogits(absl::Span<const float> logits) {
  if (logits.empty()) return absl::InvalidArgumentError("sampling: no logits");
  bool any_finite = false;
  for (float v : logits) {
    if (std::isnan(v) || v == INFINITY) return absl::FailedPreconditionError("sampling: NaN or +Inf logits");
    any_finite |= std::isfinite(v);
  }
  if (!any_finite) return absl::FailedPreconditionError("sampling: every token is masked");
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0) return Bad("temperature", "finite and >= 0");
  if (p.top_k < 0) return Bad("top_k", ">= 0");
  if (!(p.top_p > 0 && p.top_p <= 1)) return Bad("top_p", "in (0, 1]");
  if (!(p.min_p >= 0 && p.min_p <= 1)) return Bad("min_p", "in [0, 1]");
  if (!(p.repetition_penalty >= 0.01 && p.repetition_penalty <= 100)) return Bad("repetition_penalty", "in [0.01, 100]");
  if (!(p.presence_penalty >= -2 && p.presence_penalty <= 2)) return Bad("presence_penalty", "in [-2, 2]");
  if (!(p.frequency_penalty >= -2 && p.frequency_penalty <= 2)) return Bad("frequency_penalty", "in [-2, 2]");
  if (p.top_logprobs < 0 || p.top_logprobs > kMaxTopLogprobs) return Bad("top_logprobs", "in [0, 20]");
  return absl::OkStatus();
}

absl::StatusOr<Sampler> Sampler::Create(const SamplingParams& params) {
  if (absl::Status s = ValidateSamplingParams(params); !s.ok()) return s;
  return Sampler(params);
}

double Sampler::Uniform() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

absl::StatusOr<std::vector<std::pair<int32_t, double>>> Sampler::Distribution(
    absl::Span<const float> logits, absl::Span<const int32_t> context, absl::Span<const int32_t> output) const {
  if (absl::Status s = CheckLogits(logits); !s.ok()) return s;
  const int64_t V = static_cast<int64_t>(logits.size());
  for (auto span : {context, output}) {
    for (int32_t id : span) {
      if (id < 0 || id >= V) return absl::InvalidArgumentError(absl::StrCat("sampling: history id ", id, " outside [0, ", V, ")"));
    }
  }
  const SamplingParams& p = params_;
  std::vector<double> l(logits.begin(), logits.end());  // double: penalties and 1/T cannot overflow
  std::set<int32_t> seen(context.begin(), context.end());
  seen.insert(output.begin(), output.end());
  if (p.repetition_penalty != 1.0) {  // HF: every token of the context and the output
    for (int32_t id : seen) l[id] = l[id] > 0 ? l[id] / p.repetition_penalty : l[id] * p.repetition_penalty;
  }
  std::map<int32_t, int> counts;  // OpenAI / vLLM: generated tokens only
  for (int32_t id : output) ++counts[id];
  for (const auto& [id, n] : counts) l[id] -= p.presence_penalty + p.frequency_penalty * n;
  if (p.temperature < kGreedyBelow) {
    const auto best = std::max_element(l.begin(), l.end()) - l.begin();
    return std::vector<std::pair<int32_t, double>>{{static_cast<int32_t>(best), 1.0}};
  }
  for (double& v : l) v /= p.temperature;
  const std::vector<double> lp = LogSoftmax(absl::MakeConstSpan(l));
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return lp[a] > lp[b]; });
  size_t keep = p.top_k > 0 ? std::min<size_t>(p.top_k, V) : V;
  double kept_mass = 0;
  for (size_t i = 0; i < keep; ++i) kept_mass += std::exp(lp[order[i]]);
  double mass = 0;
  for (size_t i = 0; i < keep; ++i) {  // top-p over what top-k kept (renormalised), never dropping the first
    mass += std::exp(lp[order[i]]);
    if (mass >= p.top_p * kept_mass) {
      keep = i + 1;
      break;
    }
  }
  const double floor = p.min_p * std::exp(lp[order[0]]);
  while (keep > 1 && std::exp(lp[order[keep - 1]]) < floor) --keep;
  while (keep > 1 && std::exp(lp[order[keep - 1]]) == 0) --keep;  // masked or underflowed: never drawn
  std::vector<std::pair<int32_t, double>> dist;
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += std::exp(lp[order[i]]);
  for (size_t i = 0; i < keep; ++i) dist.emplace_back(order[i], std::exp(lp[order[i]]) / total);
  return dist;
}

absl::StatusOr<Sampler::Choice> Sampler::Sample(absl::Span<const float> logits, absl::Span<const int32_t> context,
                                                absl::Span<const int32_t> output) {
  auto dist = Distribution(logits, context, output);
  if (!dist.ok()) return dist.status();
  Choice c;
  c.token = dist->back().first;  // if rounding leaves the draw past the cumulative sum
  if (dist->size() > 1) {
    double u = Uniform(), acc = 0;
    for (const auto& [id, prob] : *dist) {
      acc += prob;
      if (u < acc) {
        c.token = id;
        break;
      }
    }
  } else {
    c.token = dist->front().first;
  }
  const std::vector<double> lp = LogSoftmax(logits);  // the model's own distribution
  c.logprob = static_cast<float>(lp[c.token]);
  if (params_.top_logprobs > 0) {
    std::vector<int32_t> ids(lp.size());
    std::iota(ids.begin(), ids.end(), 0);
    const size_t n = std::min<size_t>(params_.top_logprobs, ids.size());
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) { return lp[a] > lp[b]; });
    for (size_t i = 0; i < n; ++i) c.top.emplace_back(ids[i], static_cast<float>(lp[ids[i]]));
  }
  return c;
}

}  // namespace adaptd::engine
