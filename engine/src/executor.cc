// Executor: the engine thread, its queues, and the step loop over Model::ForwardBatch.
#include "adaptd/engine/executor.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"

namespace adaptd::engine {

StepPlan PlanStep(const std::vector<PlanInput>& requests, int64_t token_budget) {
  StepPlan plan;
  int64_t budget = token_budget;
  for (size_t i = 0; i < requests.size() && budget > 0; ++i) {
    if (requests[i].decoding) {
      plan.pieces.push_back({i, 1});
      --budget;
    }
  }
  for (size_t i = 0; i < requests.size() && budget > 0; ++i) {
    if (!requests[i].decoding && requests[i].prompt_left > 0) {
      const int64_t n = std::min(requests[i].prompt_left, budget);
      plan.pieces.push_back({i, n});
      budget -= n;
    }
  }
  return plan;
}

namespace {

struct Active {
  uint64_t id = 0;
  GenerateRequest req;
  std::function<void(const GenerateResult&)> on_result;
  size_t fed = 0;                  // prompt tokens fed
  std::optional<int32_t> pending;  // generated, to be fed next step
  int generated = 0;
  std::optional<Sampler> sampler;
  std::vector<int32_t> output;  // generated tokens, for the penalties
  bool last = false;  // pending is the final token: finish once it is fed
  bool cancelled = false;
  bool done = false;
};

}  // namespace

struct Executor::Impl {
  Impl(const Model& m, const Options& o) : model(m), options(o) {}

  void Loop();
  bool TakeWork();  // false when stopping
  void Step();
  void Emit(Active& a, int32_t token);
  void Finish(Active& a, absl::Status status);

  const Model& model;
  const Options options;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Active>> incoming;  // guarded by mu
  std::set<uint64_t> cancels;                    // guarded by mu
  std::set<const SessionState*> busy;            // guarded by mu
  bool stopping = false;                         // guarded by mu
  uint64_t next_id = 1;                          // guarded by mu
  Stats stats;                                   // guarded by mu

  std::vector<std::unique_ptr<Active>> active;  // engine thread only
  std::thread thread;
  std::once_flag joined;
};

absl::StatusOr<std::unique_ptr<Executor>> Executor::Create(const Model& model, const Options& options) {
  if (options.step_token_budget < 1 || options.max_prompt_tokens < 1 || options.max_new_tokens < 0) {
    return absl::InvalidArgumentError("executor options: step_token_budget and max_prompt_tokens must be >= 1");
  }
  auto impl = std::make_unique<Impl>(model, options);
  Impl* raw = impl.get();
  std::unique_ptr<Executor> e(new Executor(std::move(impl)));
  raw->thread = std::thread([raw] { raw->Loop(); });
  return e;
}

Executor::Executor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Executor::~Executor() { Shutdown(); }

absl::StatusOr<uint64_t> Executor::Enqueue(GenerateRequest request,
                                            std::function<void(const GenerateResult&)> on_result) {
  const Options& o = impl_->options;
  if (request.session == nullptr) return absl::InvalidArgumentError("request has no session");
  if (request.max_new_tokens < 0 || request.max_new_tokens > o.max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens must be in [0, ", o.max_new_tokens, "]"));
  }
  if (static_cast<int64_t>(request.prompt.size()) > o.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prompt longer than ", o.max_prompt_tokens, " tokens"));
  }
  if (absl::Status s = impl_->model.ValidateIds(request.prompt); !s.ok()) return s;
  if (!request.prompt_learn.empty() && request.prompt_learn.size() != request.prompt.size()) {
    return absl::InvalidArgumentError("prompt_learn must be empty or have one flag per prompt token");
  }
  auto sampler = Sampler::Create(request.sampling);
  if (!sampler.ok()) return sampler.status();
  for (int32_t id : request.stop_ids) {
    if (id < 0 || id >= impl_->model.config().vocab_size) return absl::InvalidArgumentError("stop id outside the vocabulary");
  }
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->stopping) return absl::UnavailableError("executor is shut down");
  if (!impl_->busy.insert(request.session).second) {
    return absl::FailedPreconditionError("the session already has an active request");
  }
  const uint64_t id = impl_->next_id++;
  auto a = std::make_unique<Active>();
  a->id = id;
  a->req = std::move(request);
  a->sampler.emplace(*std::move(sampler));
  a->on_result = std::move(on_result);
  impl_->incoming.push_back(std::move(a));
  ++impl_->stats.active;
  impl_->cv.notify_one();
  return id;
}

void Executor::Cancel(uint64_t request_id) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->cancels.insert(request_id);
  impl_->cv.notify_one();
}

void Executor::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
    impl_->cv.notify_one();
  }
  std::call_once(impl_->joined, [this] { impl_->thread.join(); });
}

Executor::Stats Executor::GetStats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

bool Executor::Impl::TakeWork() {
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return stopping || !incoming.empty() || !active.empty() || !cancels.empty(); });
  while (!incoming.empty()) {
    active.push_back(std::move(incoming.front()));
    incoming.pop_front();
  }
  std::set<uint64_t> cancelled;
  cancelled.swap(cancels);
  const bool stop = stopping;
  lock.unlock();
  for (auto& a : active) {
    if (stop) {
      Finish(*a, absl::UnavailableError("executor shut down"));
    } else if (cancelled.count(a->id) && a->pending) {
      a->last = a->cancelled = true;  // the emitted token still enters the session first
    } else if (cancelled.count(a->id)) {
      Finish(*a, absl::CancelledError("request cancelled"));
    }
  }
  active.erase(std::remove_if(active.begin(), active.end(), [](const auto& a) { return a->done; }), active.end());
  return !stop;
}

void Executor::Impl::Loop() {
  while (TakeWork()) {
    if (!active.empty()) Step();
  }
}

void Executor::Impl::Step() {
  std::vector<PlanInput> in;
  for (const auto& a : active) {
    in.push_back({static_cast<int64_t>(a->req.prompt.size() - a->fed), a->pending.has_value()});
  }
  StepPlan plan = PlanStep(in, options.step_token_budget);
  std::vector<Model::BatchInput> batch;
  std::vector<int32_t> decode_ids(plan.pieces.size());
  for (size_t k = 0; k < plan.pieces.size(); ++k) {
    Active& a = *active[plan.pieces[k].request];
    if (a.pending) {
      decode_ids[k] = *a.pending;
      batch.push_back({a.req.session, absl::MakeConstSpan(&decode_ids[k], 1), a.req.learn && a.req.learn_generated});
    } else {  // a piece ends where the prompt's learn flag changes (the rest goes next step)
      const std::vector<uint8_t>& mask = a.req.prompt_learn;
      int64_t n = plan.pieces[k].tokens;
      if (!mask.empty()) {
        const auto run_end = std::find_if(mask.begin() + a.fed, mask.end(), [&](uint8_t f) { return f != mask[a.fed]; });
        n = std::min<int64_t>(n, run_end - (mask.begin() + a.fed));
        plan.pieces[k].tokens = n;
      }
      batch.push_back({a.req.session, absl::MakeConstSpan(a.req.prompt).subspan(a.fed, n),
                       a.req.learn && (mask.empty() || mask[a.fed] != 0)});
    }
  }
  const auto forward_start = std::chrono::steady_clock::now();
  auto logits = model.ForwardBatch(batch, /*all_logits=*/false);
  const double forward_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - forward_start).count();
  int64_t prefill = 0, decode = 0;
  for (size_t k = 0; k < plan.pieces.size(); ++k) {
    Active& a = *active[plan.pieces[k].request];
    if (!logits.ok()) {
      Finish(a, logits.status());
      continue;
    }
    if (a.pending) {
      ++decode;
      a.pending.reset();
      if (a.last) {
        Finish(a, a.cancelled ? absl::CancelledError("request cancelled") : absl::OkStatus());
        continue;
      }
    } else {
      prefill += plan.pieces[k].tokens;
      a.fed += plan.pieces[k].tokens;
      if (a.fed < a.req.prompt.size()) continue;
      if (a.req.max_new_tokens == 0) {
        Finish(a, absl::OkStatus());
        continue;
      }
    }
    auto choice = a.sampler->Sample((*logits)[k], a.req.prompt, a.output);
    if (!choice.ok()) {
      Finish(a, choice.status());
      continue;
    }
    Emit(a, choice->token);
  }
  active.erase(std::remove_if(active.begin(), active.end(), [](const auto& a) { return a->done; }), active.end());
  std::lock_guard<std::mutex> lock(mu);
  ++stats.steps;
  stats.prefill_tokens += prefill;
  stats.decode_tokens += decode;
  stats.max_batch = std::max<int64_t>(stats.max_batch, plan.pieces.size());
  stats.step_requests += static_cast<int64_t>(plan.pieces.size());
  stats.forward_seconds += forward_seconds;
}

void Executor::Impl::Emit(Active& a, int32_t token) {
  a.pending = token;
  a.output.push_back(token);
  ++a.generated;
  const auto& stops = a.req.stop_ids;
  a.last = a.generated >= a.req.max_new_tokens || std::find(stops.begin(), stops.end(), token) != stops.end();
  if (a.on_result) a.on_result({a.id, {token}, false, absl::OkStatus()});
}

void Executor::Impl::Finish(Active& a, absl::Status status) {
  a.done = true;
  {
    std::lock_guard<std::mutex> lock(mu);  // the session is free before its owner hears so
    busy.erase(a.req.session);
    --stats.active;
  }
  if (a.on_result) a.on_result({a.id, {}, true, std::move(status)});
}

}  // namespace adaptd::engine
