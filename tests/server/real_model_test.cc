// The default model, SmolLM2-135M-Instruct (GGUF, installed by scripts/setup.sh), served by the
// real adaptd binary: a ChatML conversation over gRPC that learns with ntp_gradient, whose
// window drops old turns but keeps the system prompt, and which continues after kill -9 exactly
// as an uninterrupted server does. The other integration tests use the tiny models (speed).
#include <gtest/gtest.h>

#include "adaptd/engine/chat.h"
#include "adaptd/engine/tokenizer.h"
#include "server/harness.h"

namespace adaptd::server {
namespace {

constexpr char kSmolSystem[] = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

class RealModelTest : public ServerTest {
 protected:
  void SetUp() override {
    ServerTest::SetUp();
    // A 40-token f32 turn with ntp_gradient updates takes ~5 s on 2 idle cores: room for a busy machine.
    rpc_deadline_ = std::chrono::seconds(60);
    server_->Kill(SIGTERM);
    server_->Start(Args());
  }
  static std::vector<std::string> Args() {
    // The defaults scripts/run.sh gives sessions, in f32 (the greedy texts compare exactly).
    return {"--replica_id=r0", "--dtype=f32", "--session_defaults=update_rule: \"ntp_gradient\""};
  }
};

TEST_F(RealModelTest, ServesTheGgufModelWithItsChatFormatAndSystemPrompt) {
  v1::ServerInfo info;
  ASSERT_TRUE(server_->stub().GetServerInfo(As("key-acme").get(), {}, &info).ok());
  EXPECT_EQ(info.chat_format(), "chatml");
  EXPECT_EQ(info.system_prompt(), kSmolSystem);
  EXPECT_EQ(std::vector<int>(info.fast_layers().begin(), info.fast_layers().end()),
            (std::vector<int>{0, 3, 6, 9, 12, 15, 18, 21, 24, 27}));
  EXPECT_EQ(info.vocab_size(), 49152);
  ASSERT_TRUE(Create("key-acme", "q").ok());
  auto t = Chat("key-acme", "q", "What is the capital of France? Answer in one sentence.", 24);
  ASSERT_TRUE(t.status.ok()) << t.status.error_message();
  EXPECT_NE(t.text.find("Paris"), std::string::npos) << t.text;
  EXPECT_EQ(t.finish_reason, "stop");
}

TEST_F(RealModelTest, ConversationContinuesIdenticallyAfterKillNine) {
  const std::vector<std::string> turns = {
      "Hi! My name is Ada and I keep bees in Lisbon.", "What do bees need in winter?",
      "Can you suggest a name for my honey brand?", "What is my name, and where do I live?"};
  // A 192-token window: the later turns push the first ones out, the system prompt stays.
  ASSERT_TRUE(Create("key-acme", "a", nullptr, "", 192).ok());
  ASSERT_TRUE(Create("key-acme", "b", nullptr, "", 192).ok());
  std::vector<Turn> uninterrupted;
  int64_t updates = 0, fed = 0;
  for (const auto& t : turns) {
    uninterrupted.push_back(Chat("key-acme", "a", t, 40));
    ASSERT_TRUE(uninterrupted.back().status.ok()) << uninterrupted.back().status.error_message();
    EXPECT_FALSE(uninterrupted.back().text.empty());
    updates += uninterrupted.back().usage.updates_applied();
    fed += uninterrupted.back().usage.prompt_tokens() + uninterrupted.back().usage.completion_tokens();
  }
  EXPECT_GT(updates, 0);  // ntp_gradient learned chunks of the conversation
  // Whole turns left the window; the model's system prompt (not learned) stayed at its head.
  auto tok = engine::Tokenizer::LoadForModel(ADAPTD_MODEL);
  ASSERT_TRUE(tok.ok());
  auto renderer = engine::ChatRenderer::Create(**tok, engine::ChatFormat::kChatml);
  const std::vector<engine::ChatMessage> sys = {{"system", kSmolSystem}};
  const auto pinned = static_cast<int64_t>(renderer->Render(sys, true, false)->size());
  v1::Session a;
  ASSERT_TRUE(Get("key-acme", "a", &a).ok());
  const int64_t first = uninterrupted[0].usage.prompt_tokens() + uninterrupted[0].usage.completion_tokens();
  EXPECT_LE(a.state().context_tokens(), fed - first + pinned);  // the first turn left, but for the system prompt
  EXPECT_GT(a.state().context_tokens(), pinned);
  EXPECT_EQ(a.state().tokens_learned(), fed - pinned);
  for (size_t i = 0; i + 1 < turns.size(); ++i) ASSERT_TRUE(Chat("key-acme", "b", turns[i], 40).status.ok());
  v1::Session b;
  for (int i = 0; i < 200 && (Get("key-acme", "b", &b).ok() && b.snapshot_version() < turns.size() - 1); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(b.snapshot_version(), turns.size() - 1);
  server_->Kill(SIGKILL);
  server_->Start(Args());
  auto resumed = Chat("key-acme", "b", turns.back(), 40);
  ASSERT_TRUE(resumed.status.ok()) << resumed.status.error_message();
  EXPECT_EQ(resumed.ids, uninterrupted.back().ids);
  EXPECT_EQ(resumed.text, uninterrupted.back().text);
  EXPECT_EQ(resumed.usage.version(), turns.size());
}

}  // namespace
}  // namespace adaptd::server
