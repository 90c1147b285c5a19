// The GGUF reader: hand-made files (every error it names, hostile mutations that must never
// crash), the `gguf` package's files and dequantized values (make_gguf_fixtures.py), model
// loading against HF transformers' GGUF loader, and the real SmolLM2 file when it is installed.
#include "adaptd/engine/gguf.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <random>

#include "adaptd/engine/model.h"
#include "adaptd/engine/tokenizer.h"
#include "fixtures.h"
#include "gguf_writer.h"

namespace adaptd::engine {
namespace {

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("adaptd_gguf_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

absl::StatusOr<std::unique_ptr<GgufFile>> OpenBytes(const std::string& bytes, const std::string& name = "t.gguf") {
  const std::string path = TempPath(name);
  GgufWriter::Save(path, bytes);
  auto f = GgufFile::Open(path);
  std::filesystem::remove(path);  // the mapping outlives the name
  return f;
}

// A tiny Llama (d 32, 1 layer, 2 heads / 1 KV head, head size 16, FFN 64, vocab 16, F32) with
// `extra` metadata or tensors added by the caller.
struct TinyModel {
  int64_t d = 32, f = 64, vocab = 16, heads = 2, kv_heads = 1, hd = 16;
  std::string arch = "llama";
  void Write(GgufWriter& w, bool tokenizer = true) const {
    w.Str("general.architecture", arch);
    const std::string a = arch + ".";
    w.U32(a + "block_count", 1);
    w.U32(a + "embedding_length", uint32_t(d));
    w.U32(a + "feed_forward_length", uint32_t(f));
    w.U32(a + "attention.head_count", uint32_t(heads));
    w.U32(a + "attention.head_count_kv", uint32_t(kv_heads));
    w.U32(a + "context_length", 256);
    w.F32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    if (tokenizer) {
      std::vector<std::string> tokens;
      for (int i = 0; i + 1 < vocab; ++i) tokens.push_back(std::string(1, char('a' + i)));
      tokens.push_back("ab");  // the one merge's result
      w.Str("tokenizer.ggml.model", "gpt2");
      w.Str("tokenizer.ggml.pre", "smollm");
      w.StrArray("tokenizer.ggml.tokens", tokens);
      w.I32Array("tokenizer.ggml.token_type", std::vector<int32_t>(vocab, 1));
      w.StrArray("tokenizer.ggml.merges", {"a b"});
    }
    auto noise = [](uint64_t i) { return std::sin(0.37 * double(i)) * 0.1; };
    auto ones = [](uint64_t) { return 1.0; };
    const uint64_t D = d, F = f, V = vocab, Q = heads * hd, K = kv_heads * hd;
    w.F32Tensor("token_embd.weight", {D, V}, noise);
    w.F32Tensor("output_norm.weight", {D}, ones);
    w.F32Tensor("blk.0.attn_norm.weight", {D}, ones);
    w.F32Tensor("blk.0.ffn_norm.weight", {D}, ones);
    w.F32Tensor("blk.0.attn_q.weight", {D, Q}, noise);
    w.F32Tensor("blk.0.attn_k.weight", {D, K}, noise);
    w.F32Tensor("blk.0.attn_v.weight", {D, K}, noise);
    w.F32Tensor("blk.0.attn_output.weight", {Q, D}, noise);
    w.F32Tensor("blk.0.ffn_gate.weight", {D, F}, noise);
    w.F32Tensor("blk.0.ffn_up.weight", {D, F}, noise);
    w.F32Tensor("blk.0.ffn_down.weight", {F, D}, noise);
  }
};

absl::StatusOr<std::unique_ptr<Model>> LoadBytes(const std::string& bytes, const LoadOptions& options = {}) {
  const std::string path = TempPath("model.gguf");
  GgufWriter::Save(path, bytes);
  auto m = Model::Load(path, options);
  std::filesystem::remove(path);
  return m;
}

TEST(GgufTest, ReadsMetadataTensorsAndAlignment) {
  for (uint32_t version : {2u, 3u}) {
    for (uint32_t alignment : {32u, 64u}) {
      GgufWriter w(version);
      w.U32("general.alignment", alignment);
      w.Str("general.name", "tiny");
      w.F32("x.f", 0.5f);
      w.I32Array("x.ints", {-1, 2, 3});
      w.F32Tensor("a", {3, 2}, [](uint64_t i) { return double(i); });
      w.F32Tensor("b", {5}, [](uint64_t i) { return -double(i); });
      auto f = OpenBytes(w.Bytes(alignment));
      ASSERT_TRUE(f.ok()) << f.status();
      EXPECT_EQ((*f)->version(), version);
      EXPECT_EQ(*(*f)->GetString("general.name"), "tiny");
      EXPECT_EQ(*(*f)->GetFloat("x.f"), 0.5);
      EXPECT_EQ(*(*f)->GetInt("general.alignment"), alignment);
      auto ints = (*f)->GetArray("x.ints", GgufValue::Type::kI32);
      ASSERT_TRUE(ints.ok());
      ASSERT_EQ((*ints)->size(), 3u);
      EXPECT_EQ((**ints)[0].i, -1);
      EXPECT_EQ((*f)->GetString("x.f").status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ((*f)->GetInt("absent").status().code(), absl::StatusCode::kNotFound);
      const GgufTensor* a = (*f)->FindTensor("a");
      ASSERT_NE(a, nullptr);
      EXPECT_EQ(a->Shape(), (std::vector<int64_t>{2, 3}));
      EXPECT_EQ(reinterpret_cast<uintptr_t>((*f)->FindTensor("b")->data) % alignment, 0u);
      std::vector<float> b(5);
      ASSERT_TRUE(Dequantize(*(*f)->FindTensor("b"), b.data()).ok());
      EXPECT_EQ(b[4], -4.0f);
    }
  }
}

void ExpectError(const std::string& bytes, absl::StatusCode code, const std::string& text) {
  auto f = OpenBytes(bytes);
  ASSERT_FALSE(f.ok()) << "accepted a file that should fail with: " << text;
  EXPECT_EQ(f.status().code(), code) << f.status();
  EXPECT_NE(f.status().message().find(text), std::string::npos) << f.status();
}

TEST(GgufTest, NamesWhatIsWrongWithABrokenFile) {
  GgufWriter good;
  good.F32Tensor("a", {4}, [](uint64_t) { return 1.0; });
  const std::string bytes = good.Bytes();
  ExpectError("GGML" + bytes.substr(4), absl::StatusCode::kDataLoss, "bad magic");
  ExpectError("", absl::StatusCode::kDataLoss, "bad magic");
  ExpectError(GgufWriter(1).Bytes(), absl::StatusCode::kUnimplemented, "version 1");
  ExpectError(GgufWriter(4).Bytes(), absl::StatusCode::kUnimplemented, "version 4");
  ExpectError(bytes.substr(0, bytes.size() - 20), absl::StatusCode::kDataLoss, "outside the data section");

  GgufWriter huge_string;
  huge_string.Str("k", "v");
  std::string s = huge_string.Bytes();
  const uint64_t lie = uint64_t{1} << 40;
  std::memcpy(s.data() + 24 + 8 + 1 + 4, &lie, 8);  // the value's length, after key "k" and its type
  ExpectError(s, absl::StatusCode::kDataLoss, "past the end of the file");

  GgufWriter array;
  array.I32Array("k", {1, 2});
  std::string a = array.Bytes();
  std::memcpy(a.data() + 24 + 8 + 1 + 4 + 4, &lie, 8);  // the array's element count
  ExpectError(a, absl::StatusCode::kDataLoss, "does not fit in the file");

  GgufWriter q2k;
  q2k.Raw({"q", {256}, 10, std::string(84, '\0')});  // Q2_K: not read
  ExpectError(q2k.Bytes(), absl::StatusCode::kUnimplemented, "ggml type 10");
  GgufWriter partial;
  partial.Raw({"q", {48}, 8, std::string(34 * 2, '\0')});  // Q8_0 rows of 48: not whole blocks
  ExpectError(partial.Bytes(), absl::StatusCode::kDataLoss, "not whole Q8_0 blocks");
  GgufWriter five;
  five.Raw({"x", {1, 1, 1, 1, 4}, 0, std::string(16, '\0')});
  ExpectError(five.Bytes(), absl::StatusCode::kDataLoss, "5 dimensions");
  GgufWriter zero;
  zero.Raw({"x", {4, 0}, 0, ""});
  ExpectError(zero.Bytes(), absl::StatusCode::kDataLoss, "too large or zero");
  GgufWriter twice;
  twice.F32Tensor("a", {4}, [](uint64_t) { return 1.0; });
  twice.F32Tensor("a", {4}, [](uint64_t) { return 1.0; });
  ExpectError(twice.Bytes(), absl::StatusCode::kInvalidArgument, "duplicate tensor a");
  GgufWriter keys;
  keys.U32("k", 1);
  keys.U32("k", 2);
  ExpectError(keys.Bytes(), absl::StatusCode::kInvalidArgument, "duplicate metadata key k");
  GgufWriter align;
  align.U32("general.alignment", 48);
  ExpectError(align.Bytes(), absl::StatusCode::kDataLoss, "power of two");

  // A tensor offset that is not a multiple of the alignment, and two tensors sharing bytes.
  GgufWriter two;
  two.F32Tensor("a", {8}, [](uint64_t) { return 1.0; });
  two.F32Tensor("b", {8}, [](uint64_t) { return 1.0; });
  std::string t = two.Bytes();
  const size_t b_offset = t.find(std::string("\x01\0\0\0\0\0\0\0b", 9)) + 9 + 4 + 8 + 4;  // after b's name, dims, type
  uint64_t off = 4;
  std::memcpy(t.data() + b_offset, &off, 8);
  ExpectError(t, absl::StatusCode::kDataLoss, "not aligned");
  off = 0;
  std::memcpy(t.data() + b_offset, &off, 8);
  ExpectError(t, absl::StatusCode::kDataLoss, "overlap");
}

TEST(GgufTest, EveryTruncationIsAnErrorNotACrash) {
  GgufWriter w;
  TinyModel().Write(w);
  const std::string bytes = w.Bytes();
  for (size_t n = 0; n < bytes.size(); n += (n < 4096 ? 1 : 509)) {
    auto f = OpenBytes(bytes.substr(0, n));
    EXPECT_FALSE(f.ok()) << "a prefix of " << n << " of " << bytes.size() << " bytes was accepted";
  }
}

// Random byte changes (and lengths) of a valid model file: every outcome is a status, and a
// file that still opens dequantizes and loads (or is refused) without reading out of bounds;
// the sanitizer builds (-DADAPTD_ASAN=ON) make any stray read fail the test.
TEST(GgufTest, RandomMutationsNeverCrash) {
  GgufWriter w;
  TinyModel().Write(w);
  const std::string bytes = w.Bytes();
  std::mt19937_64 rng(7);
  int opened = 0, loaded = 0;
  const int rounds = 600;
  for (int round = 0; round < rounds; ++round) {
    std::string m = bytes;
    const int changes = 1 + int(rng() % 4);
    for (int c = 0; c < changes; ++c) {
      // Mostly the header (where lengths and offsets live), sometimes anywhere.
      const size_t at = rng() % 2 ? rng() % std::min<size_t>(m.size(), 2048) : rng() % m.size();
      m[at] = char(rng() % 4 == 0 ? 0xFF : rng());
    }
    auto f = OpenBytes(m);
    if (!f.ok()) continue;
    ++opened;
    for (const GgufTensor& t : (*f)->tensors()) {
      std::vector<float> out(size_t(t.NumElements()));
      (void)Dequantize(t, out.data());
    }
    if (LoadBytes(m).ok()) ++loaded;
  }
  // Most mutations land in values that stay valid (tensor bytes, names' letters): both paths ran.
  EXPECT_GT(opened, rounds / 10);
  EXPECT_GT(loaded, 0);
}

TEST(GgufTest, LoadsATinyLlamaAndRefusesWhatItCannotRun) {
  GgufWriter w;
  TinyModel().Write(w);
  auto m = LoadBytes(w.Bytes());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->config().architecture, Architecture::kLlama);
  EXPECT_TRUE((*m)->config().tie_word_embeddings);
  EXPECT_EQ((*m)->config().head_dim, 16);
  EXPECT_TRUE((*m)->config().ttt.fast_layers.empty());  // no ttt.json: nothing defaulted
  SessionOptions ntp;
  ntp.rule = UpdateRule::kNtpGradient;
  EXPECT_EQ((*m)->NewSession(ntp).status().code(), absl::StatusCode::kFailedPrecondition);

  auto refused = [](std::function<void(GgufWriter&)> add, absl::StatusCode code, const std::string& text,
                    TinyModel tiny = {}) {
    GgufWriter w;
    tiny.Write(w);
    add(w);
    auto m = LoadBytes(w.Bytes());
    ASSERT_FALSE(m.ok()) << text;
    EXPECT_EQ(m.status().code(), code) << m.status();
    EXPECT_NE(m.status().message().find(text), std::string::npos) << m.status();
  };
  refused([](GgufWriter& w) { w.Str("llama.rope.scaling.type", "linear"); }, absl::StatusCode::kUnimplemented,
          "RoPE scaling 'linear'");
  refused([](GgufWriter& w) { w.F32("llama.rope.scaling.factor", 4.0f); }, absl::StatusCode::kUnimplemented,
          "RoPE scaling");
  refused([](GgufWriter& w) { w.U32("llama.expert_count", 8); }, absl::StatusCode::kUnimplemented,
          "llama.expert_count");
  refused([](GgufWriter& w) { w.U32("llama.rope.dimension_count", 8); }, absl::StatusCode::kUnimplemented,
          "partial rotary");
  refused([](GgufWriter& w) { w.F32Tensor("rope_freqs.weight", {8}, [](uint64_t) { return 1.0; }); },
          absl::StatusCode::kUnimplemented, "rope_freqs");
  refused([](GgufWriter& w) { w.F32Tensor("blk.0.attn_q.bias", {32}, [](uint64_t) { return 1.0; }); },
          absl::StatusCode::kInvalidArgument, "blk.0.attn_q.bias");
  TinyModel mamba;
  mamba.arch = "mamba";
  refused([](GgufWriter&) {}, absl::StatusCode::kUnimplemented, "architecture 'mamba'", mamba);
  TinyModel qwen;
  qwen.arch = "qwen3";  // Qwen3 needs its q/k norms
  refused([](GgufWriter&) {}, absl::StatusCode::kNotFound, "q_norm", qwen);

  // The TTT settings beside the model, and a file of the wrong fields.
  const std::string ttt = TempPath("ttt.json");
  std::ofstream(ttt) << R"({"ttt_layers": [0], "ttt_chunk": 8, "ttt_lr": 0.5})";
  LoadOptions options;
  options.ttt_config = ttt;
  auto with = LoadBytes(w.Bytes(), options);
  ASSERT_TRUE(with.ok()) << with.status();
  EXPECT_EQ((*with)->config().ttt.fast_layers, std::vector<int>{0});
  EXPECT_EQ((*with)->config().ttt.chunk, 8);
  EXPECT_TRUE((*with)->NewSession(ntp).ok());
  EXPECT_NE((*with)->fingerprint(), (*m)->fingerprint());
  std::ofstream(ttt) << R"({"ttt_layer": [0]})";
  EXPECT_EQ(LoadBytes(w.Bytes(), options).status().code(), absl::StatusCode::kInvalidArgument);
  std::filesystem::remove(ttt);
}

TEST(GgufTest, TokenizerFromMetadata) {
  const std::string path = TempPath("tok.gguf");
  GgufWriter w;
  TinyModel().Write(w);
  GgufWriter::Save(path, w.Bytes());
  auto tok = Tokenizer::LoadForModel(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 16);
  auto ids = (*tok)->Encode("abc");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{15, 2}));  // "ab" by the merge, then "c"
  GgufWriter other;
  TinyModel().Write(other, /*tokenizer=*/false);
  other.Str("tokenizer.ggml.model", "gpt2");
  other.Str("tokenizer.ggml.pre", "deepseek-coder");
  GgufWriter::Save(path, other.Bytes());
  auto refused = Tokenizer::LoadForModel(path);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(refused.status().message().find("deepseek-coder"), std::string::npos) << refused.status();
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace adaptd::engine
