// Executor: the step planner step by step, then greedy generation through the engine thread
// equal to a hand-run loop on a lone session, stop ids, cancellation, bad requests, shutdown.
#include "adaptd/engine/executor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <thread>
#include <vector>

#include "engine/fixtures.h"

namespace adaptd::engine {
namespace {

TEST(PlanStepTest, DecodeTokensFirstThenPromptPiecesInOrder) {
  const StepPlan p = PlanStep({{100, false}, {0, true}, {5, false}, {0, true}}, 10);
  ASSERT_EQ(p.pieces.size(), 3u);  // request 2 waits: the budget is spent
  EXPECT_EQ(p.pieces[0].request, 1u);
  EXPECT_EQ(p.pieces[1].request, 3u);
  EXPECT_EQ(p.pieces[2].request, 0u);
  EXPECT_EQ(p.pieces[2].tokens, 8);  // the rest of the budget
  const StepPlan next = PlanStep({{92, false}, {0, true}, {5, false}, {0, true}}, 100);
  ASSERT_EQ(next.pieces.size(), 4u);
  EXPECT_EQ(next.pieces[2].tokens, 92);
  EXPECT_EQ(next.pieces[3].tokens, 5);
}

TEST(PlanStepTest, BudgetIsNeverExceeded) {
  const StepPlan p = PlanStep({{0, true}, {0, true}, {0, true}, {7, false}}, 2);
  int64_t total = 0;
  for (const auto& piece : p.pieces) {
    EXPECT_GT(piece.tokens, 0);
    total += piece.tokens;
  }
  EXPECT_EQ(total, 2);
  EXPECT_TRUE(PlanStep({{0, false}}, 8).pieces.empty());
}

struct Collected {
  std::vector<int32_t> tokens;
  absl::Status status;
  std::promise<void> done;
};

std::function<void(const GenerateResult&)> Collect(Collected& c) {
  return [&c](const GenerateResult& r) {
    c.tokens.insert(c.tokens.end(), r.tokens.begin(), r.tokens.end());
    if (r.final) {
      c.status = r.status;
      c.done.set_value();
    }
  };
}

Executor::Options WithBudget(int64_t budget) {
  Executor::Options o;
  o.step_token_budget = budget;
  return o;
}

std::vector<int32_t> Prompt(int n, int seed) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (seed * 31 + i * 17) % 256;
  return ids;
}

// Greedy by hand: prompt, then feed each generated token.
std::vector<int32_t> GreedyAlone(const Model& model, const std::vector<int32_t>& prompt, int n) {
  auto s = model.NewSession().value();
  std::vector<int32_t> out;
  auto logits = model.Forward(*s, prompt);
  for (int i = 0; i < n; ++i) {
    const auto last = logits->end() - model.config().vocab_size;
    out.push_back(static_cast<int32_t>(std::max_element(last, logits->end()) - last));
    logits = model.Forward(*s, {out.back()});
  }
  return out;
}

TEST(ExecutorTest, ConcurrentRequestsGenerateAsIfAlone) {
  auto model = LoadModel("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_NE(model, nullptr);
  auto executor = Executor::Create(*model, WithBudget(16)).value();
  const int n = 6;
  std::vector<std::unique_ptr<SessionState>> sessions;
  std::vector<Collected> results(n);
  for (int i = 0; i < n; ++i) {
    sessions.push_back(model->NewSession().value());
    auto id = executor->Enqueue({sessions[i].get(), Prompt(5 + 7 * i, i), true, 12, {}, {}}, Collect(results[i]));
    ASSERT_TRUE(id.ok()) << id.status();
  }
  for (int i = 0; i < n; ++i) {
    results[i].done.get_future().wait();
    ASSERT_TRUE(results[i].status.ok()) << results[i].status;
    EXPECT_EQ(results[i].tokens, GreedyAlone(*model, Prompt(5 + 7 * i, i), 12)) << "request " << i;
    EXPECT_EQ(sessions[i]->n_learned(), 5 + 7 * i + 12);  // every generated token entered the session
  }
  const auto stats = executor->GetStats();
  EXPECT_GE(stats.max_batch, 2);
  EXPECT_EQ(stats.decode_tokens, n * 12);
  EXPECT_EQ(stats.active, 0);
  EXPECT_GT(stats.forward_seconds, 0);
}

TEST(ExecutorTest, PromptLearnFlagsSkipLearningTokenByToken) {
  auto model = LoadModel("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_NE(model, nullptr);
  // Runs of learned and unlearned tokens (as system and user messages would be), fed through
  // steps of 4 tokens so that runs and steps straddle; the reference feeds the runs by hand.
  const std::vector<int32_t> prompt = Prompt(40, 3);
  std::vector<uint8_t> flags(40, 1);
  for (int i = 0; i < 11; ++i) flags[i] = 0;
  for (int i = 23; i < 30; ++i) flags[i] = 0;
  auto alone = model->NewSession().value();
  for (auto [begin, end, learn] : {std::tuple(0, 11, false), std::tuple(11, 23, true), std::tuple(23, 30, false),
                                   std::tuple(30, 40, true)}) {
    ASSERT_TRUE(model->Forward(*alone, absl::MakeConstSpan(prompt).subspan(begin, end - begin), learn).ok());
  }
  auto executor = Executor::Create(*model, WithBudget(4)).value();
  auto s = model->NewSession().value();
  GenerateRequest req{s.get(), prompt, true, 0, {}, {}};
  req.prompt_learn = flags;
  Collected c;
  ASSERT_TRUE(executor->Enqueue(req, Collect(c)).ok());
  c.done.get_future().wait();
  ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(s->n_learned(), 22);
  EXPECT_EQ(s->position(), 40);
  EXPECT_GT(s->updates_applied(), 0);  // a chunk completed from learned tokens only
  EXPECT_EQ(s->updates_applied(), alone->updates_applied());
  // The pieces differ, so products sum in other orders: within 1e-5 of the layer's largest |dW|
  // (seen: 6e-7). An int4 base rounds each product's input to two int8 digits, which such a
  // change can flip, moving an element by 2^-15 of its group's largest: 4e-5 there (seen: 7e-6).
  const double tol = model->weight_format().kind == WeightFormat::Kind::kInt4 ? 4e-5 : 1e-5;
  for (int layer : model->config().ttt.layers) {
    const auto got = model->FastWeight(*s, layer).value();
    const auto want = model->FastWeight(*alone, layer).value();
    ASSERT_EQ(got.size(), want.size());
    float scale = 0;
    for (float w : want) scale = std::max(scale, std::abs(w));
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol * scale) << "layer " << layer << " at " << i;
  }
  req.prompt_learn.pop_back();  // one flag short
  req.session = model->NewSession().value().release();
  std::unique_ptr<SessionState> owned(req.session);
  EXPECT_EQ(executor->Enqueue(req, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ExecutorTest, StopIdEndsGenerationAfterEmittingIt) {
  auto model = LoadModel("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_NE(model, nullptr);
  // A prompt whose greedy continuation has a token at j >= 1 not generated before: stopping on
  // it must end generation right after it, not earlier.
  int seed = 0;
  std::vector<int32_t> greedy;
  size_t j = 0;
  while (j == 0 && ++seed < 50) {
    greedy = GreedyAlone(*model, Prompt(9, seed), 8);
    for (j = 1; j < greedy.size() && std::count(greedy.begin(), greedy.begin() + j, greedy[j]); ++j) {
    }
    if (j == greedy.size()) j = 0;
  }
  ASSERT_GT(j, 0u) << "no prompt with a varied continuation";
  auto executor = Executor::Create(*model, {}).value();
  auto s = model->NewSession().value();
  Collected c;
  ASSERT_TRUE(executor->Enqueue({s.get(), Prompt(9, seed), true, 50, {greedy[j]}, {}}, Collect(c)).ok());
  c.done.get_future().wait();
  EXPECT_TRUE(c.status.ok());
  EXPECT_EQ(c.tokens, std::vector<int32_t>(greedy.begin(), greedy.begin() + j + 1));
  EXPECT_EQ(s->position(), static_cast<int64_t>(9 + j + 1));
}

TEST(ExecutorTest, CancelEndsAtAStepBoundary) {
  auto model = LoadModel("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_NE(model, nullptr);
  auto executor = Executor::Create(*model, {}).value();
  auto s = model->NewSession().value();
  Collected c;
  auto id = executor->Enqueue({s.get(), Prompt(4, 2), true, 60000, {}, {}}, Collect(c));
  ASSERT_TRUE(id.ok());
  executor->Cancel(*id);
  c.done.get_future().wait();
  EXPECT_EQ(c.status.code(), absl::StatusCode::kCancelled);
  EXPECT_LT(c.tokens.size(), 60000u);
  // Every emitted token entered the session (cancelled before the first step: nothing did).
  EXPECT_EQ(s->n_learned(), c.tokens.empty() ? 0 : 4 + static_cast<int64_t>(c.tokens.size()));
  Collected again;  // the session is free again
  ASSERT_TRUE(executor->Enqueue({s.get(), Prompt(3, 3), true, 1, {}, {}}, Collect(again)).ok());
  again.done.get_future().wait();
  EXPECT_TRUE(again.status.ok());
}

TEST(ExecutorTest, SampledGenerationFollowsTheSeed) {
  auto model = LoadModel("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_NE(model, nullptr);
  auto executor = Executor::Create(*model, {}).value();
  std::vector<std::unique_ptr<SessionState>> sessions;
  std::vector<Collected> results(3);
  for (int i = 0; i < 3; ++i) {
    sessions.push_back(model->NewSession().value());
    GenerateRequest r{sessions[i].get(), Prompt(6, 1), true, 24, {}, {}};
    r.sampling.temperature = 1.0;
    r.sampling.seed = i < 2 ? 11 : 12;  // requests 0 and 1 share a seed
    ASSERT_TRUE(executor->Enqueue(r, Collect(results[i])).ok());
  }
  for (auto& r : results) r.done.get_future().wait();
  EXPECT_EQ(results[0].tokens.size(), 24u);
  EXPECT_EQ(results[0].tokens, results[1].tokens);
  EXPECT_NE(results[0].tokens, results[2].tokens);
  auto s = model->NewSession().value();
  GenerateRequest bad{s.get(), {1}, true, 4, {}, {}};
  bad.sampling.top_p = 0;
  EXPECT_EQ(executor->Enqueue(bad, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ExecutorTest, RejectsBadOptions) {
  auto model = LoadModel("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(Executor::Create(*model, WithBudget(0)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ExecutorTest, RejectsBadRequestsAndWorkAfterShutdown) {
  auto model = LoadModel("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_NE(model, nullptr);
  Executor::Options o;
  o.max_new_tokens = 64;
  auto executor = Executor::Create(*model, o).value();
  auto s = model->NewSession().value();
  EXPECT_EQ(executor->Enqueue({nullptr, {1}, true, 1, {}, {}}, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(executor->Enqueue({s.get(), {}, true, 1, {}, {}}, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(executor->Enqueue({s.get(), {1, 256}, true, 1, {}, {}}, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(executor->Enqueue({s.get(), {1}, true, 65, {}, {}}, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s->position(), 0);

  Collected long_running;
  ASSERT_TRUE(executor->Enqueue({s.get(), {1, 2}, true, 64, {}, {}}, Collect(long_running)).ok());
  EXPECT_EQ(executor->Enqueue({s.get(), {1}, true, 1, {}, {}}, nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);
  std::thread other_shutdown([&] { executor->Shutdown(); });
  executor->Shutdown();
  other_shutdown.join();
  long_running.done.get_future().wait();
  EXPECT_TRUE(long_running.status.ok() || long_running.status.code() == absl::StatusCode::kUnavailable);
  auto other = model->NewSession().value();
  EXPECT_EQ(executor->Enqueue({other.get(), {1}, true, 1, {}, {}}, nullptr).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace adaptd::engine
