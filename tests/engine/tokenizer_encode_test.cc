// Encoding against HF `tokenizers` on over a megabyte of varied text (tokenizer_oracle.py trains
// five tokenizer.json layouts and records HF's ids and decodes), template-injection safety,
// and decode(encode(x)) == x.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>

#include "adaptd/engine/tokenizer.h"
#include "engine/fixtures.h"
#include "unicode.h"  // engine/src: the engine's own UTF-8 writer

namespace adaptd::engine {
namespace {

const std::string& OracleDir() {
  static const std::string dir = FixtureDir() + "/tokenizer/oracle";
  return dir;
}

const nlohmann::json& Oracle() {
  static const nlohmann::json oracle = [] {
    std::ifstream in(OracleDir() + "/oracle.json");
    std::stringstream ss;
    ss << in.rdbuf();
    return nlohmann::json::parse(ss.str(), nullptr, false);
  }();
  return oracle;
}

// Id sequences of a .bin file: per sequence a uint32 count, then int32 ids (little-endian).
std::vector<std::vector<int32_t>> ReadIds(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<std::vector<int32_t>> out;
  uint32_t n;
  while (in.read(reinterpret_cast<char*>(&n), sizeof n)) {
    out.emplace_back(n);
    in.read(reinterpret_cast<char*>(out.back().data()), n * sizeof(int32_t));
  }
  return out;
}

// "doc 17 at id 5: got [...] want [...]" around the first difference.
std::string FirstDifference(size_t doc, const std::vector<int32_t>& got, const std::vector<int32_t>& want,
                            const Tokenizer& tok) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto window = [&](const std::vector<int32_t>& ids) {
    std::string s;
    for (size_t k = i; k < ids.size() && k < i + 4; ++k) s += "'" + tok.Decode({ids[k]}).value_or("?") + "' ";
    return s;
  };
  const std::string before = tok.Decode(absl::MakeConstSpan(want).subspan(i > 4 ? i - 4 : 0, i > 4 ? 4 : i)).value_or("");
  return "doc " + std::to_string(doc) + " at id " + std::to_string(i) + " after '" + before + "': got " +
         window(got) + "want " + window(want);
}

class OracleTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Oracle().is_object()) << "no " << OracleDir() << "/oracle.json";
    for (const auto& t : Oracle()["tokenizers"]) {
      if (t["name"] == GetParam()) entry_ = t;
    }
    ASSERT_TRUE(entry_.is_object()) << GetParam();
    auto tok = Tokenizer::Load(entry_["path"].get<std::string>());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *std::move(tok);
    docs_ = Oracle()["docs"].get<std::vector<std::string>>();
  }

  nlohmann::json entry_;
  std::unique_ptr<Tokenizer> tok_;
  std::vector<std::string> docs_;
};

TEST(OracleCorpusTest, IsOverAMegabyteOfVariedText) {
  ASSERT_TRUE(Oracle().is_object());
  size_t bytes = 0;
  std::string all;
  for (const auto& d : Oracle()["docs"]) all += d.get<std::string>();
  bytes = all.size();
  EXPECT_GT(bytes, 1u << 20);
  for (const char* s : {"def ", "\xE4\xB8", "\xF0\x9F\x91\xA9\xE2\x80\x8D", "e\xCC\x81", "\t\t", "\r\n", "<|im_start|>",
                        "<|eot_id|>", "1234"}) {
    EXPECT_NE(all.find(s), std::string::npos) << s;
  }
}

TEST_P(OracleTest, EncodeMatchesHuggingFace) {
  const auto want = ReadIds(OracleDir() + "/" + GetParam() + "/plain.bin");
  ASSERT_EQ(want.size(), docs_.size());
  int mismatches = 0;
  for (size_t i = 0; i < docs_.size(); ++i) {
    auto got = tok_->Encode(docs_[i]);
    ASSERT_TRUE(got.ok()) << got.status();
    if (*got != want[i] && ++mismatches <= 5) ADD_FAILURE() << FirstDifference(i, *got, want[i], *tok_);
  }
  EXPECT_EQ(mismatches, 0) << "of " << docs_.size() << " docs";
}

TEST_P(OracleTest, ParsedSpecialTokensMatchHuggingFace) {
  const auto want = ReadIds(OracleDir() + "/" + GetParam() + "/parsed.bin");
  const auto synthetic = Oracle()["synthetic"].get<std::vector<size_t>>();
  ASSERT_EQ(want.size(), synthetic.size());
  int mismatches = 0, specials = 0;
  for (size_t k = 0; k < synthetic.size(); ++k) {
    auto got = tok_->Encode(docs_[synthetic[k]], /*parse_special=*/true);
    ASSERT_TRUE(got.ok()) << got.status();
    if (*got != want[k] && ++mismatches <= 5) ADD_FAILURE() << FirstDifference(synthetic[k], *got, want[k], *tok_);
    for (int32_t id : *got) specials += tok_->IsSpecial(id);
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(specials, 0);  // the look-alikes include real special-token strings
}

// (The unknown token, a special token in SentencePiece vocabularies, stands for characters the
// vocabulary lacks; it is the one special id text can produce.)
TEST_P(OracleTest, UserTextNeverBecomesASpecialToken) {
  const int32_t unk = tok_->TokenId("<unk>").value_or(-1);
  for (const auto& doc : docs_) {
    auto ids = tok_->Encode(doc);
    ASSERT_TRUE(ids.ok());
    for (int32_t id : *ids) ASSERT_TRUE(id == unk || !tok_->IsSpecial(id)) << doc.substr(0, 80);
  }
}

TEST_P(OracleTest, DecodeMatchesHuggingFace) {
  const auto ids = ReadIds(OracleDir() + "/" + GetParam() + "/plain.bin");
  const auto& decoded = entry_["decoded"];
  int mismatches = 0;
  for (size_t i = 0; i < docs_.size(); ++i) {
    const std::string key = std::to_string(i);
    const std::string want = decoded.contains(key) ? decoded[key].get<std::string>() : docs_[i];
    const std::string got = *tok_->Decode(ids[i]);
    if (got != want && ++mismatches <= 5) {
      size_t k = 0;
      while (k < got.size() && k < want.size() && got[k] == want[k]) ++k;
      const size_t from = k > 20 ? k - 20 : 0;
      ADD_FAILURE() << "doc " << i << " at byte " << k << ": got '" << got.substr(from, 40) << "' want '"
                    << want.substr(from, 40) << "'";
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// Streamed pieces are whole characters and concatenate to Decode, on emoji/CJK-heavy text (the
// synthetic docs), byte-fallback runs and Metaspace's first-token rule included.
TEST_P(OracleTest, StreamingConcatenatesToDecode) {
  const auto ids = ReadIds(OracleDir() + "/" + GetParam() + "/plain.bin");
  for (size_t i : Oracle()["synthetic"].get<std::vector<size_t>>()) {
    StreamDecoder stream(*tok_);
    std::string all;
    for (int32_t id : ids[i]) {
      std::string piece = *stream.Add(id);
      std::string tail;
      ASSERT_EQ(Utf8Lossy(piece, &tail), piece);
      ASSERT_TRUE(tail.empty());
      all += piece;
    }
    all += stream.Finish();
    ASSERT_EQ(all, *tok_->Decode(ids[i])) << "doc " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, OracleTest, ::testing::Values("qwen", "llama3", "gpt2", "spm", "llama2", "digits_grouped",
                                                                   "digits_individual"));

// decode(encode(x)) == x where the layout loses nothing: byte-level without a normalizer (the
// docs without the whitespace-eating <tool> token), and SentencePiece with byte fallback (docs
// not starting with whitespace, which Metaspace's prepended ▁ absorbs, and without a literal
// "<0xE2>" or "▁", which the decoder reads as a byte and a space).
TEST(RoundTripTest, DecodeOfEncodeIsTheText) {
  auto llama3 = Tokenizer::Load(OracleDir() + "/llama3/tokenizer.json");
  auto spm = Tokenizer::Load(OracleDir() + "/spm/tokenizer.json");
  ASSERT_TRUE(llama3.ok() && spm.ok());
  int checked = 0;
  for (const auto& d : Oracle()["docs"]) {
    const std::string doc = d.get<std::string>();
    if (doc.find("<tool>") == std::string::npos) {
      EXPECT_TRUE(*(*llama3)->Decode(*(*llama3)->Encode(doc)) == doc) << doc.substr(0, 60);
      ++checked;
    }
    if (!doc.empty() && doc[0] != ' ' && doc[0] != '\t' && doc[0] != '\n' && doc.find("<0x") == std::string::npos &&
        doc.find("\u2581") == std::string::npos) {
      EXPECT_TRUE(*(*spm)->Decode(*(*spm)->Encode(doc)) == doc) << doc.substr(0, 60);
    }
  }
  EXPECT_GT(checked, 3000);
}

// A tokenizer whose merges spell a special token: HF would encode the text "<s>" as the special
// id; Adaptd keeps it plain text.
TEST(EncodeTest, MergesNeverMakeASpecialToken) {
  const std::string path = ::testing::TempDir() + "/merges_to_special.json";
  std::ofstream(path) << R"({"model": {"type": "BPE", "vocab": {"<unk>": 0, "<s>": 1, "<": 2, "s": 3, ">": 4, "<s": 5},
                               "merges": ["< s", "<s >"], "ignore_merges": true},
                             "added_tokens": [{"id": 1, "content": "<s>", "special": true}],
                             "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never"},
                             "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never"}})";
  auto tok = Tokenizer::Load(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->Encode("<s>"), (std::vector<int32_t>{5, 4}));
  EXPECT_EQ(*(*tok)->Encode("<s>", /*parse_special=*/true), (std::vector<int32_t>{1}));
  EXPECT_EQ(*(*tok)->Decode({5, 4}), "<s>");
}

// Random strings: valid UTF-8 from every plane round-trips through the byte-level layout
// without a normalizer; arbitrary bytes are encoded or refused as INVALID_ARGUMENT, never crash.
TEST(EncodeTest, RandomInputsRoundTripOrFailCleanly) {
  auto llama3 = Tokenizer::Load(OracleDir() + "/llama3/tokenizer.json");
  auto spm = Tokenizer::Load(OracleDir() + "/spm/tokenizer.json");
  ASSERT_TRUE(llama3.ok() && spm.ok());
  std::mt19937 rng(11);
  const uint32_t ranges[][2] = {{0x20, 0x7E}, {0x00, 0x1F}, {0xA0, 0x24F}, {0x300, 0x36F}, {0x4E00, 0x9FFF},
                                {0x1F300, 0x1FAFF}, {0xE000, 0xF8FF}, {0x10000, 0x10FFFF}};
  for (int i = 0; i < 3000; ++i) {
    std::string s;
    const int n = static_cast<int>(rng() % 40);
    for (int k = 0; k < n; ++k) {
      const auto& r = ranges[rng() % 8];
      uint32_t cp = r[0] + rng() % (r[1] - r[0] + 1);
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
      if (rng() % 8 == 0) s += std::vector<std::string>{"<|eot_id|>", "<tool>", " ", "\n", "'s", "kernel"}[rng() % 6];
      unicode::AppendUtf8(cp, &s);
    }
    auto ids = (*llama3)->Encode(s);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (s.find("<tool>") == std::string::npos) {
      ASSERT_EQ(*(*llama3)->Decode(*ids), s);
    }
    ASSERT_TRUE((*spm)->Encode(s).ok());
    std::string bytes(rng() % 16, '\0');
    for (char& b : bytes) b = static_cast<char>(rng());
    for (const auto& t : {&*llama3, &*spm}) {
      auto r = (*t)->Encode(bytes);
      ASSERT_TRUE(r.ok() || r.status().code() == absl::StatusCode::kInvalidArgument) << r.status();
    }
  }
}

// A pair merged twice in merges.txt takes its later rank, as HF's merge map does.
TEST(EncodeTest, RepeatedMergeTakesItsLaterRank) {
  const std::string path = ::testing::TempDir() + "/repeated_merge.json";
  std::ofstream(path) << R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4},
                               "merges": ["b c", "a b", "b c"]},
                             "decoder": {"type": "ByteLevel"}})";
  auto tok = Tokenizer::Load(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(*(*tok)->Encode("abc"), (std::vector<int32_t>{3, 2}));  // HF: ['ab', 'c']
}

TEST(EncodeTest, RejectsInvalidUtf8) {
  auto tok = Tokenizer::Load(OracleDir() + "/qwen/tokenizer.json");
  ASSERT_TRUE(tok.ok());
  for (const char* bad : {"\xFF", "ok \xC3", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xC0\xAF"}) {
    EXPECT_EQ((*tok)->Encode(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE((*tok)->Encode("").ok());
  EXPECT_TRUE((*tok)->Encode("").value().empty());
}

}  // namespace
}  // namespace adaptd::engine
