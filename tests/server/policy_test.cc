// The real adaptd binary on 127.0.0.1 (ctest label `integration`): a session's learning policy
// per chat role and its snapshot policy, across crashes, graceful restarts and evictions.
#include <cstdlib>
#include <string>
#include <thread>

#include "server/harness.h"

namespace adaptd::server {
namespace {

class PolicyTest : public ServerTest {
 protected:
  grpc::Status CreateWith(const std::string& id, const v1::SessionOptions& options) {
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    *req.mutable_options() = options;
    v1::Session resp;
    return server_->stub().CreateSession(As("key-acme").get(), req, &resp);
  }
  v1::SessionState State(const std::string& id) {
    v1::Session s;
    EXPECT_TRUE(Get("key-acme", id, &s).ok());
    EXPECT_TRUE(s.has_state()) << id << " is not in memory";
    return s.state();
  }
  uint64_t SnapshotVersion(const std::string& id) {
    v1::Session s;
    EXPECT_TRUE(Get("key-acme", id, &s).ok());
    return s.snapshot_version();
  }
  // Kills the server (-9), restarts it and loads the session by a dry-run Score (which leaves it
  // unchanged): its learning state as the log and snapshots rebuild it.
  v1::SessionState CrashAndReload(const std::string& id) {
    server_->Kill(SIGKILL);
    server_->Start();
    v1::ScoreRequest score;
    score.set_session_id(id);
    score.set_text("the page allocator");
    v1::ScoreResponse scored;
    EXPECT_TRUE(server_->stub().Score(As("key-acme").get(), score, &scored).ok());
    return State(id);
  }
  // The same tokens learned and the same ||dW|| per layer (replay matches within tolerance).
  static void ExpectSameLearning(const v1::SessionState& got, const v1::SessionState& want) {
    EXPECT_EQ(got.tokens_learned(), want.tokens_learned());
    ASSERT_EQ(got.delta_norms_size(), want.delta_norms_size());
    for (int i = 0; i < want.delta_norms_size(); ++i) {
      EXPECT_NEAR(got.delta_norms(i), want.delta_norms(i), 1e-4 * want.delta_norms(i)) << "layer " << i;
    }
  }
  // Waits for the snapshot written just after a turn's acknowledgement.
  void AwaitSnapshot(const std::string& id, uint64_t version) {
    for (int i = 0; i < 100 && SnapshotVersion(id) < version; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
};

v1::ChatRequest SystemAndUser(const std::string& session, const std::string& system, const std::string& user) {
  v1::ChatRequest req;
  req.set_session_id(session);
  auto* s = req.add_messages();
  s->set_role("system");
  s->set_content(system);
  auto* u = req.add_messages();
  u->set_role("user");
  u->set_content(user);
  req.set_max_new_tokens(1);
  return req;
}

const char kSystem[] =
    "You are a careful assistant for kernel developers. Answer briefly, cite the subsystem, and say so when you "
    "do not know. Prefer plain words to jargon, and give one example when it helps the reader.";
const char kUser[] =
    "What does the page allocator do when memory runs low, and which pages does it reclaim first? I am reading "
    "the reclaim code and the watermarks confuse me: when does kswapd wake, and when does a task reclaim itself?";

// A system prompt a session does not learn enters its context only: N counts exactly the tokens
// of a session that never saw it; a session that learns every role counts more. The policy is in
// the log, so a replay after kill -9 learns the same tokens again.
TEST_F(PolicyTest, RolesNotLearnedEnterTheContextOnly) {
  v1::SessionOptions chatml;  // roles are marked up in the template (not the harness's raw text)
  chatml.set_chat_format("qwen3");
  v1::SessionOptions skip_system = chatml;
  skip_system.add_roles_not_learned("system");
  skip_system.set_snapshot_policy(v1::SNAPSHOT_ON_EVICTION);  // reloads replay the log
  ASSERT_TRUE(CreateWith("skip", skip_system).ok());
  v1::SessionOptions learn_all = chatml;  // the pinned system prompt is learned only on request
  learn_all.set_learn_system_prompt(true);
  ASSERT_TRUE(CreateWith("all", learn_all).ok());
  ASSERT_TRUE(CreateWith("pinned", chatml).ok());
  ASSERT_TRUE(CreateWith("bare", chatml).ok());
  v1::SessionOptions skip_assistant = chatml;
  skip_assistant.add_roles_not_learned("assistant");
  ASSERT_TRUE(CreateWith("quiet", skip_assistant).ok());

  ASSERT_TRUE(Chat("key-acme", SystemAndUser("skip", kSystem, kUser)).status.ok());
  ASSERT_TRUE(Chat("key-acme", SystemAndUser("all", kSystem, kUser)).status.ok());
  ASSERT_TRUE(Chat("key-acme", SystemAndUser("pinned", kSystem, kUser)).status.ok());
  ASSERT_TRUE(Chat("key-acme", "bare", kUser, 1).status.ok());
  ASSERT_TRUE(Chat("key-acme", "quiet", kUser, 1).status.ok());
  const auto skip = State("skip"), all = State("all"), bare = State("bare"), quiet = State("quiet");
  EXPECT_EQ(skip.tokens_learned(), bare.tokens_learned());
  EXPECT_EQ(State("pinned").tokens_learned(), bare.tokens_learned());  // by default the system prompt is not learned
  EXPECT_GT(all.tokens_learned(), skip.tokens_learned() + 30);  // the system prompt is ~40 tokens
  EXPECT_EQ(all.context_tokens(), skip.context_tokens());       // both saw it
  EXPECT_GT(skip.updates_applied(), 0);
  // The assistant's template and reply are not learned: only the user message is.
  EXPECT_LT(quiet.tokens_learned(), bare.tokens_learned());
  EXPECT_EQ(quiet.context_tokens(), bare.context_tokens());

  // Next turn (closes the open reply, then more text), then a crash: the reload replays both.
  auto second = Request("skip", "And which does it keep?", 4);
  auto* sys = second.add_messages();
  sys->set_role("system");
  sys->set_content("Keep answers short.");
  ASSERT_TRUE(Chat("key-acme", second).status.ok());
  const auto before = State("skip");
  EXPECT_EQ(SnapshotVersion("skip"), 0u);  // deferred to eviction
  server_->Kill(SIGKILL);
  server_->Start();
  ASSERT_TRUE(Chat("key-acme", "skip", "Thanks.", 1).status.ok());  // loads: replays both turns
  EXPECT_EQ(Metric("adaptd_session_replayed_events_total"), 2);
  const auto after = State("skip");
  // One more user turn learned on top: its tokens (template and reply included) only.
  EXPECT_GT(after.tokens_learned(), before.tokens_learned());
  ExpectSameLearning(CrashAndReload("skip"), after);
}

// Every event (default), every third, or only when the session leaves memory: the log makes each
// recoverable; the policy decides how many snapshots are written and how much a load replays.
TEST_F(PolicyTest, SnapshotPoliciesDecideWhatIsWrittenWhen) {
  v1::SessionOptions third, on_eviction;
  third.set_snapshot_policy(v1::SNAPSHOT_EVERY_N_EVENTS);
  third.set_snapshot_every_events(3);
  on_eviction.set_snapshot_policy(v1::SNAPSHOT_ON_EVICTION);
  ASSERT_TRUE(CreateWith("every", {}).ok());
  ASSERT_TRUE(CreateWith("third", third).ok());
  ASSERT_TRUE(CreateWith("evict", on_eviction).ok());
  for (int turn = 1; turn <= 4; ++turn) {
    for (const char* id : {"every", "third", "evict"}) {
      ASSERT_TRUE(Chat("key-acme", id, "Tell me about pages, turn " + std::to_string(turn), 4).status.ok());
    }
  }
  AwaitSnapshot("every", 4);
  AwaitSnapshot("third", 3);
  EXPECT_EQ(SnapshotVersion("every"), 4u);
  EXPECT_EQ(SnapshotVersion("third"), 3u);
  EXPECT_EQ(SnapshotVersion("evict"), 0u);

  // A graceful stop writes what was deferred; the next process replays nothing.
  ASSERT_EQ(server_->Kill(SIGTERM), 0);
  EXPECT_NE(server_->ReadLog().find("\"msg\":\"flushed\",\"snapshots\":2"), std::string::npos) << server_->ReadLog();
  server_->Start();
  for (const char* id : {"every", "third", "evict"}) {
    EXPECT_EQ(SnapshotVersion(id), 4u) << id;
    ASSERT_TRUE(Chat("key-acme", id, "And now?", 4).status.ok());
  }
  EXPECT_EQ(Metric("adaptd_session_replayed_events_total"), 0);

  // Under a budget that fits no session, each turn evicts: the deferred snapshot is written first.
  ASSERT_EQ(server_->Kill(SIGTERM), 0);
  server_->Start({"--memory_budget_bytes=1"});
  ASSERT_TRUE(Chat("key-acme", "evict", "Once more.", 4).status.ok());
  for (int i = 0; i < 100 && Metric("adaptd_session_evictions_total") < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(Metric("adaptd_deferred_snapshots_total"), 1);
  EXPECT_EQ(SnapshotVersion("evict"), 6u);
  v1::Session s;
  ASSERT_TRUE(Get("key-acme", "evict", &s).ok());
  EXPECT_EQ(s.tier(), "store");
}

// The ntp_gradient rule through the server: turns learn by gradient steps, and a replay after
// kill -9 (the snapshot deferred) rebuilds the same fast weights.
TEST_F(PolicyTest, NtpGradientSessionsLearnAndReplay) {
  v1::SessionOptions ntp;
  ntp.set_update_rule("ntp_gradient");
  ntp.set_snapshot_policy(v1::SNAPSHOT_ON_EVICTION);
  ntp.set_max_context_tokens(96);  // the window rule re-reads the window, open chunks included
  ASSERT_TRUE(CreateWith("ntp", ntp).ok());
  for (int i = 0; i < 4; ++i) {
    auto turn = Chat("key-acme", "ntp", kUser, 8 + i);
    ASSERT_TRUE(turn.status.ok()) << turn.status.error_message();
    EXPECT_GT(turn.usage.updates_applied(), 0);
    EXPECT_GT(turn.usage.update_seconds(), 0);
  }
  const auto before = State("ntp");
  EXPECT_LT(before.context_tokens(), before.tokens_learned());  // turns left the window
  ASSERT_GT(before.delta_norms_size(), 0);
  EXPECT_GT(before.delta_norms(0), 0);
  ExpectSameLearning(CrashAndReload("ntp"), before);  // the snapshot deferred: a replay of the turns
}

// A rewrite that fails changes nothing: the session stays in memory with its unsnapshotted
// events (no reload, no replay).
TEST_F(PolicyTest, FailedRewritesKeepTheLoadedSession) {
  v1::SessionOptions on_eviction;
  on_eviction.set_snapshot_policy(v1::SNAPSHOT_ON_EVICTION);
  ASSERT_TRUE(CreateWith("kept", on_eviction).ok());
  for (const char* q : {"What is a page?", "And a slab?"}) ASSERT_TRUE(Chat("key-acme", "kept", q, 4).status.ok());
  v1::RollbackSessionRequest rollback;
  rollback.set_session_id("kept");
  rollback.set_version(7);  // past its version 2
  v1::Session out;
  EXPECT_FALSE(server_->stub().RollbackSession(As("key-acme").get(), rollback, &out).ok());
  v1::Session s;
  ASSERT_TRUE(Get("key-acme", "kept", &s).ok());
  EXPECT_EQ(s.tier(), "memory");
  ASSERT_TRUE(Chat("key-acme", "kept", "Still here?", 4).status.ok());
  EXPECT_EQ(Metric("adaptd_session_loads_total"), 1);  // the first turn's, none since
  EXPECT_EQ(Metric("adaptd_session_replayed_events_total"), 0);
  v1::DeleteSessionRequest del;  // the same for a delete of an unknown session: nothing is left held
  del.set_session_id("absent");
  v1::DeleteSessionResponse gone;
  EXPECT_EQ(server_->stub().DeleteSession(As("key-acme").get(), del, &gone).error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(Get("key-acme", "absent").error_code(), StatusCode::NOT_FOUND);
}

TEST_F(PolicyTest, BadPoliciesAreInvalidArguments) {
  v1::SessionOptions role, zero_n, big_n, stray_n, policy;
  role.add_roles_not_learned("tool");
  zero_n.set_snapshot_policy(v1::SNAPSHOT_EVERY_N_EVENTS);
  big_n.set_snapshot_policy(v1::SNAPSHOT_EVERY_N_EVENTS);
  big_n.set_snapshot_every_events(10001);
  stray_n.set_snapshot_every_events(3);  // without EVERY_N
  policy.set_snapshot_policy(static_cast<v1::SnapshotPolicy>(9));
  for (const auto* o : {&role, &zero_n, &big_n, &stray_n, &policy}) {
    const auto s = CreateWith("bad", *o);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << o->ShortDebugString();
    EXPECT_NE(s.error_message().find("options."), std::string::npos) << s.error_message();
  }
}

}  // namespace
}  // namespace adaptd::server
