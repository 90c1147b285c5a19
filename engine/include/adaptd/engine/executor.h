// The engine's request interface: one engine thread owns the device and runs batched steps
// over every active request (architecture.md "Batching across sessions"). Each step mixes
// prefill pieces, bounded by a per-step token budget so a long prompt cannot stall everyone's
// decode, with one decode token per generating request.
//
// Threading: Enqueue, Cancel, GetStats and Shutdown may be called from any thread. Result
// callbacks run on the engine thread, in order per request; they must be quick and must not
// call back into the Executor. While a request is active its SessionState belongs to the engine
// thread; the caller may touch it again after the final result.
#ifndef ADAPTD_ENGINE_EXECUTOR_H_
#define ADAPTD_ENGINE_EXECUTOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "adaptd/engine/model.h"
#include "adaptd/engine/sampler.h"

namespace adaptd::engine {

struct GenerateRequest {
  SessionState* session = nullptr;  // not owned; one active request per session
  std::vector<int32_t> prompt;      // fed first, in pieces of at most the step budget
  bool learn = true;                // the prompt and the generated tokens are learned
  int max_new_tokens = 0;           // greedy tokens generated after the prompt
  std::vector<int32_t> stop_ids;    // generation ends after emitting one of these
  SamplingParams sampling;          // default: greedy; penalties see the prompt and the output
  bool learn_generated = true;      // with learn: the generated tokens are learned too
  // With learn: empty (every prompt token is learned) or one flag per prompt token; a 0 feeds
  // that token without learning it (it enters the KV window; N and the fast weights stay), as
  // for a system prompt a session's policy does not learn.
  std::vector<uint8_t> prompt_learn = {};
};

// A streamed result: the tokens generated since the previous result of the request. The final
// result has final = true and the request's status (OK, CANCELLED, INTERNAL, UNAVAILABLE).
// Every emitted token has also entered the session (N and the KV window include it) by the
// final result, except after UNAVAILABLE (shutdown) or INTERNAL (the session is poisoned).
struct GenerateResult {
  uint64_t request_id = 0;
  std::vector<int32_t> tokens;
  bool final = false;
  absl::Status status;
};

// Splits one step's token budget among requests: every decoding request gets its one token,
// then prompts get pieces in arrival order. Pure, so it is tested step by step without a model.
struct StepPlan {
  struct Piece {
    size_t request;  // index into the input
    int64_t tokens;
  };
  std::vector<Piece> pieces;
};
struct PlanInput {
  int64_t prompt_left;  // prompt tokens not yet fed
  bool decoding;        // has a generated token to feed
};
StepPlan PlanStep(const std::vector<PlanInput>& requests, int64_t token_budget);

class Executor {
 public:
  struct Options {
    int64_t step_token_budget = 256;   // tokens per batched step (decode tokens included)
    int64_t max_prompt_tokens = 1 << 20;
    int max_new_tokens = 1 << 16;
  };
  struct Stats {
    int64_t steps = 0, prefill_tokens = 0, decode_tokens = 0;
    int64_t active = 0;        // requests queued or running
    int64_t max_batch = 0;     // most requests in one step
    int64_t step_requests = 0; // requests served by steps, summed over steps (/ steps: mean batch)
    double forward_seconds = 0;  // wall time in batched forward passes (TTT updates included)
  };

  // `model` must outlive the Executor. INVALID_ARGUMENT for options out of range.
  static absl::StatusOr<std::unique_ptr<Executor>> Create(const Model& model, const Options& options);
  ~Executor();  // Shutdown()

  // Queues a request; its results go to on_result. INVALID_ARGUMENT for a null session, an id
  // outside the vocabulary, an empty prompt, bad sampling parameters, or sizes past the limits;
  // FAILED_PRECONDITION if the session already has an active request; UNAVAILABLE after Shutdown.
  absl::StatusOr<uint64_t> Enqueue(GenerateRequest request, std::function<void(const GenerateResult&)> on_result);

  // Ends the request at the next step boundary, after feeding an already emitted token (final
  // result CANCELLED); unknown ids are ignored.
  void Cancel(uint64_t request_id);

  // Stops the engine thread; active requests end with UNAVAILABLE. Idempotent.
  void Shutdown();

  Stats GetStats() const;

  struct Impl;

 private:
  explicit Executor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_EXECUTOR_H_
