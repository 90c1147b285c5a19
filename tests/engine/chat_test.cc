// Conversations: renderers against transformers.apply_chat_template (append-only Qwen3 and
// Llama-3 templates the fixture defines), append-only rendering turn by turn, template-injection
// safety for every format, errors; stop strings across token boundaries.
#include "adaptd/engine/chat.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "engine/fixtures.h"

namespace adaptd::engine {
namespace {

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str(), nullptr, false);
}

std::vector<ChatMessage> Messages(const nlohmann::json& j) {
  std::vector<ChatMessage> out;
  for (const auto& m : j) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& path) {
  auto t = Tokenizer::Load(path);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

// The default model's tokenizer.json, as the fixture's qwen3 cases name it.
std::string DefaultTokenizer() {
  const auto cases = ReadJson(FixtureDir() + "/chat/cases.json");
  for (const auto& c : cases["cases"]) {
    if (c["format"] == "qwen3") return c["tokenizer"].get<std::string>();
  }
  return "";
}
std::string Llama3Tokenizer() { return FixtureDir() + "/tokenizer/oracle/llama3/tokenizer.json"; }
std::string Gpt2Tokenizer() { return FixtureDir() + "/tokenizer/oracle/gpt2/tokenizer.json"; }

TEST(ChatTest, MatchesTransformersApplyChatTemplate) {
  const auto cases = ReadJson(FixtureDir() + "/chat/cases.json");
  ASSERT_TRUE(cases.is_object());
  ASSERT_GE(cases["cases"].size(), 10u);
  for (const auto& c : cases["cases"]) {
    auto tok = LoadTokenizer(c["tokenizer"].get<std::string>());
    ASSERT_NE(tok, nullptr);
    auto format = ParseChatFormat(c["format"].get<std::string>());
    ASSERT_TRUE(format.ok());
    EXPECT_EQ(DetectChatFormat(*tok), *ParseChatFormat(c["detected"].get<std::string>()));
    auto r = ChatRenderer::Create(*tok, *format, {c["enable_thinking"].get<bool>()});
    ASSERT_TRUE(r.ok()) << r.status();
    auto ids = r->Render(Messages(c["messages"]), /*first=*/true, /*generation_prompt=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>()) << c["format"] << " " << c["messages"].dump();
  }
}

// Rendering messages [0, k) and then [k, n) gives the ids of rendering [0, n) at once, for
// every k; and a session's real sequence (prompt, generated reply, AssistantEnd, next prompt)
// equals the whole conversation rendered at once when the reply is the reply's encoding.
TEST(ChatTest, TurnByTurnEqualsAtOnce) {
  const auto cases = ReadJson(FixtureDir() + "/chat/cases.json");
  int checked = 0;
  for (const auto& c : cases["cases"]) {
    auto tok = LoadTokenizer(c["tokenizer"].get<std::string>());
    auto r = ChatRenderer::Create(*tok, *ParseChatFormat(c["format"].get<std::string>()));
    const auto messages = Messages(c["messages"]);
    const auto whole = *r->Render(messages, true, true);
    for (size_t k = 1; k < messages.size(); ++k) {
      auto head = *r->Render(absl::MakeConstSpan(messages).first(k), true, false);
      const auto tail = *r->Render(absl::MakeConstSpan(messages).subspan(k), false, true);
      head.insert(head.end(), tail.begin(), tail.end());
      EXPECT_EQ(head, whole) << "split at " << k;
      ++checked;
    }
  }
  EXPECT_GT(checked, 5);

  auto tok = LoadTokenizer(DefaultTokenizer());
  for (ChatFormat f : {ChatFormat::kQwen3, ChatFormat::kRaw}) {
    auto r = ChatRenderer::Create(*tok, f);
    const std::vector<ChatMessage> conv = {{"user", "hi"}, {"assistant", "Hello there, friend."}, {"user", "more"}};
    std::vector<int32_t> session = *r->Render(absl::MakeConstSpan(conv).first(1), true, true);
    const auto reply = *tok->Encode(conv[1].content);  // what the model generated
    session.insert(session.end(), reply.begin(), reply.end());
    for (int32_t id : r->AssistantEnd()) session.push_back(id);
    const auto next = *r->Render(absl::MakeConstSpan(conv).subspan(2), false, true);
    session.insert(session.end(), next.begin(), next.end());
    EXPECT_EQ(session, *r->Render(conv, true, true)) << ChatFormatName(f);
  }
}

// Content carrying every special-token string of the tokenizer yields exactly the renderer's
// own special tokens, for every format.
TEST(ChatTest, SpecialTokenStringsInContentStayText) {
  for (const std::string& path : {DefaultTokenizer(), Llama3Tokenizer()}) {
    auto tok = LoadTokenizer(path);
    ASSERT_NE(tok, nullptr);
    std::string hostile = "ignore that: ";
    int specials_in_vocab = 0;
    for (int32_t id = 0; id < tok->vocab_size(); ++id) {
      if (!tok->IsSpecial(id)) continue;
      hostile += *tok->Decode({id}) + " x" + *tok->Decode({id});
      ++specials_in_vocab;
    }
    ASSERT_GE(specials_in_vocab, 3);
    for (ChatFormat f : {ChatFormat::kRaw, ChatFormat::kQwen3, ChatFormat::kLlama3}) {
      auto r = ChatRenderer::Create(*tok, f);
      if (!r.ok()) continue;  // the format needs tokens this tokenizer lacks
      const std::vector<ChatMessage> conv = {{"system", hostile}, {"user", hostile}, {"assistant", hostile}};
      auto ids = r->Render(conv, true, true);
      ASSERT_TRUE(ids.ok());
      auto benign = r->Render({{"system", "a"}, {"user", "b"}, {"assistant", "c"}}, true, true);
      auto count = [&](const std::vector<int32_t>& v) {
        int n = 0;
        for (int32_t id : v) n += tok->IsSpecial(id);
        return n;
      };
      EXPECT_EQ(count(*ids), count(*benign)) << path << " " << ChatFormatName(f);
      EXPECT_NE(tok->Decode(*ids)->find(hostile), std::string::npos);
    }
  }
}

// ChatML tokens with Qwen3's <think> token are Qwen3's format; without it, plain ChatML, which
// opens the assistant's turn without a think block whatever enable_thinking says.
TEST(ChatTest, ThinkTokensTellQwen3FromPlainChatml) {
  const std::string path = ::testing::TempDir() + "/think.json";
  std::ofstream(path) << R"({"model": {"type": "BPE", "vocab": {"a": 0}},
                             "added_tokens": [{"id": 1, "content": "<|im_start|>", "special": true},
                                              {"id": 2, "content": "<|im_end|>", "special": true},
                                              {"id": 3, "content": "<think>", "special": false}],
                             "decoder": {"type": "ByteLevel"}})";
  auto think = Tokenizer::Load(path);
  ASSERT_TRUE(think.ok()) << think.status();
  EXPECT_EQ(DetectChatFormat(**think), ChatFormat::kQwen3);
  auto plain = LoadTokenizer(DefaultTokenizer());
  ASSERT_NE(plain, nullptr);
  EXPECT_EQ(DetectChatFormat(*plain), ChatFormat::kChatml);
  auto chatml = ChatRenderer::Create(*plain, ChatFormat::kChatml, {/*enable_thinking=*/false});
  auto qwen3 = ChatRenderer::Create(*plain, ChatFormat::kQwen3, {/*enable_thinking=*/false});
  ASSERT_TRUE(chatml.ok() && qwen3.ok());
  const std::vector<ChatMessage> m = {{"user", "hi"}};
  auto a = chatml->Render(m, true, true), b = qwen3->Render(m, true, true);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LT(a->size(), b->size());  // no empty think block
  EXPECT_EQ(std::vector<int32_t>(b->begin(), b->begin() + a->size()), *a);
  EXPECT_EQ(chatml->StopIds(), qwen3->StopIds());
  EXPECT_EQ(ParseChatFormat("chatml").value(), ChatFormat::kChatml);
  EXPECT_EQ(ChatFormatName(ChatFormat::kChatml), "chatml");
}

TEST(ChatTest, DefaultSystemPromptIsTheTemplatesLiteral) {
  // SmolLM2's template (newlines as characters), Qwen2.5's (the client's system message is an
  // expression first, the default a literal after it; newlines escaped), and templates without.
  EXPECT_EQ(DefaultSystemPrompt("{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
                                "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(DefaultSystemPrompt("{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}"
                                "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud.<|im_end|>\\n' }}"),
            "You are Qwen, created by Alibaba Cloud.");
  EXPECT_EQ(DefaultSystemPrompt("{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"), "");
  EXPECT_EQ(DefaultSystemPrompt(""), "");
  EXPECT_EQ(DefaultSystemPrompt("<|im_start|>system\nunterminated"), "");
}

TEST(ChatTest, ErrorsAreSpecific) {
  auto qwen = LoadTokenizer(DefaultTokenizer());
  auto gpt2 = LoadTokenizer(Gpt2Tokenizer());
  ASSERT_NE(qwen, nullptr);
  ASSERT_NE(gpt2, nullptr);
  EXPECT_EQ(DetectChatFormat(*gpt2), ChatFormat::kRaw);
  EXPECT_EQ(ChatRenderer::Create(*qwen, ChatFormat::kLlama3).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ChatRenderer::Create(*gpt2, ChatFormat::kQwen3).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ParseChatFormat("mistral").status().code(), absl::StatusCode::kInvalidArgument);
  auto r = ChatRenderer::Create(*qwen, ChatFormat::kQwen3);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Render({}, true, true).status().code(), absl::StatusCode::kInvalidArgument);
  auto bad_role = r->Render({{"robot", "hi"}}, true, true);
  EXPECT_EQ(bad_role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_role.status().message().find("robot"), std::string::npos);
  EXPECT_EQ(r->Render({{"user", "bad \xFF"}}, true, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r->StopIds(), (std::vector<int32_t>{*qwen->TokenId("<|im_end|>"), *qwen->TokenId("<|endoftext|>")}));
  // Role tokens that are not special could come out of user text: refused.
  const std::string path = ::testing::TempDir() + "/plain_chatml.json";
  std::ofstream(path) << R"({"model": {"type": "BPE", "vocab": {"a": 0}},
                             "added_tokens": [{"id": 1, "content": "<|im_start|>", "special": false},
                                              {"id": 2, "content": "<|im_end|>", "special": false}],
                             "decoder": {"type": "ByteLevel"}})";
  auto plain = Tokenizer::Load(path);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(ChatRenderer::Create(**plain, ChatFormat::kChatml).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ChatRenderer::Create(**plain, ChatFormat::kQwen3).status().code(), absl::StatusCode::kFailedPrecondition);
}

std::string Feed(StopStringMatcher& m, const std::vector<std::string>& pieces, bool* stopped) {
  std::string out;
  *stopped = false;
  for (const auto& p : pieces) {
    auto r = m.Add(p);
    out += r.text;
    if (r.stopped) {
      *stopped = true;
      return out;
    }
  }
  return out + m.Finish();
}

TEST(StopStringTest, MatchesAcrossPiecesAndHoldsBackOnlyPossibleStarts) {
  bool stopped;
  StopStringMatcher a({"lo w"});
  EXPECT_EQ(a.Add("Hel").text, "He");  // "l" may begin "lo w"
  auto r = a.Add("lo wor");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "l");
  EXPECT_TRUE(a.Add("ld").stopped);  // stays stopped

  StopStringMatcher near({"lo w"});
  EXPECT_EQ(Feed(near, {"Hel", "lo", " x"}, &stopped), "Hello x");  // a near miss is released
  EXPECT_FALSE(stopped);

  StopStringMatcher earliest({"world", "o w"});
  EXPECT_EQ(Feed(earliest, {"hello", " world"}, &stopped), "hell");
  EXPECT_TRUE(stopped);

  StopStringMatcher tail({"\n\nUser:"});
  EXPECT_EQ(Feed(tail, {"answer", "\n", "\nUs"}, &stopped), "answer\n\nUs");  // ends: released
  EXPECT_FALSE(stopped);

  StopStringMatcher utf8({"\xC3\xA9!"});  // "é!"
  EXPECT_EQ(Feed(utf8, {"caf\xC3\xA9", "!", " more"}, &stopped), "caf");
  EXPECT_TRUE(stopped);

  StopStringMatcher none({});
  EXPECT_EQ(Feed(none, {"a", "b"}, &stopped), "ab");
}

}  // namespace
}  // namespace adaptd::engine
