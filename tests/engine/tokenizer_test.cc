// Tokenizer decoding against HF `tokenizers` (fixture cases from make_fixtures.py on the default
// model's tokenizer.json), streaming decode, and lossy UTF-8 by the maximal-subpart rule.
#include "adaptd/engine/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "engine/fixtures.h"

namespace adaptd::engine {
namespace {

const nlohmann::json& Cases() {
  static const nlohmann::json cases = [] {
    std::ifstream in(FixtureDir() + "/tokenizer/cases.json");
    std::stringstream ss;
    ss << in.rdbuf();
    return nlohmann::json::parse(ss.str(), nullptr, false);
  }();
  return cases;
}

std::unique_ptr<Tokenizer> Load() {
  auto t = Tokenizer::Load(Cases().value("tokenizer", ""));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

TEST(TokenizerTest, DecodeMatchesHuggingFace) {
  auto tok = Load();
  ASSERT_NE(tok, nullptr);
  ASSERT_GT(Cases()["cases"].size(), 40u);
  for (const auto& c : Cases()["cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(*tok->Decode(ids), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(*tok->Decode(ids, /*skip_special=*/true), c["text_skip"].get<std::string>()) << c["ids"].dump();
  }
}

TEST(TokenizerTest, StreamingEmitsWholeCharactersThatConcatenateToDecode) {
  auto tok = Load();
  ASSERT_NE(tok, nullptr);
  int withheld = 0;  // steps where a partial character was held back
  for (const auto& c : Cases()["cases"]) {
    StreamDecoder stream(*tok);
    std::string all;
    for (int32_t id : c["ids"].get<std::vector<int32_t>>()) {
      auto piece = stream.Add(id);
      ASSERT_TRUE(piece.ok());
      std::string tail;
      EXPECT_EQ(Utf8Lossy(*piece, &tail), *piece);  // valid UTF-8 ...
      EXPECT_TRUE(tail.empty());                    // ... of whole characters
      auto bytes = tok->TokenBytes(id);
      if (piece->size() < bytes->size()) ++withheld;
      all += *piece;
    }
    all += stream.Finish();
    EXPECT_EQ(all, c["text"].get<std::string>());
  }
  EXPECT_GT(withheld, 0);  // the cases do split characters across tokens
}

TEST(TokenizerTest, LossyUtf8ReplacesMaximalInvalidSubparts) {
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(Utf8Lossy("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98" "A"), r + "A");     // truncated 4-byte sequence: one
  EXPECT_EQ(Utf8Lossy("\xE0\x80\x80"), r + r + r);       // overlong: each byte
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), r + r + r);       // surrogate: each byte
  EXPECT_EQ(Utf8Lossy("\xF4\x90\x80\x80"), r + r + r + r);  // past U+10FFFF
  EXPECT_EQ(Utf8Lossy("\xFF\xC3"), r + r);
  std::string tail;
  EXPECT_EQ(Utf8Lossy("a\xF0\x9F", &tail), "a");
  EXPECT_EQ(tail, "\xF0\x9F");
  EXPECT_EQ(Utf8Lossy("a\xFF", &tail), "a" + r);  // never the start of a character: at once
  EXPECT_TRUE(tail.empty());
}

TEST(TokenizerTest, ErrorsAreSpecific) {
  auto tok = Load();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Decode({1, 99999}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tok->TokenBytes(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Tokenizer::Load("/no/such/tokenizer.json").status().code(), absl::StatusCode::kNotFound);
  const std::string path = ::testing::TempDir() + "/unsupported_tokenizer.json";
  const std::pair<const char*, const char*> unsupported[] = {
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "decoder": {"type": "WordPiece"}})", "WordPiece"},
      {R"({"model": {"type": "Unigram", "vocab": []}, "decoder": {"type": "ByteLevel"}})", "Unigram"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "dropout": 0.1}, "decoder": {"type": "ByteLevel"}})", "dropout"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "normalizer": {"type": "Lowercase"}, "decoder": null})", "Lowercase"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "decoder": {"type": "ByteLevel"},
           "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated"}})", "\\w+"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}}, "decoder": {"type": "ByteLevel"},
           "pre_tokenizer": {"type": "Whitespace"}})", "Whitespace"},
  };
  for (const auto& [json, name] : unsupported) {
    std::ofstream(path) << json;
    auto t = Tokenizer::Load(path);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented) << json << " " << t.status();
    EXPECT_NE(t.status().message().find(name), std::string::npos) << t.status();
  }
  for (const char* hostile : {R"({"model": 5})", R"({"model": {"type": 1}})", R"([1, 2])",
                              R"({"model": {"type": "BPE", "vocab": {"a": 0.5}}, "decoder": {"type": "ByteLevel"}})",
                              R"({"model": {"type": "BPE", "vocab": {"a": 7}}, "decoder": {"type": "ByteLevel"}})",
                              R"({"model": {"type": "BPE"}, "decoder": {"type": null}})",
                              R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a"]}, "decoder": {"type": "ByteLevel"}})",
                              R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}, "decoder": {"type": "ByteLevel"}})"}) {
    std::ofstream(path) << hostile;
    EXPECT_FALSE(Tokenizer::Load(path).ok()) << hostile;
  }
}

}  // namespace
}  // namespace adaptd::engine
