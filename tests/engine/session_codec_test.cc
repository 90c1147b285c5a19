// Session state serialization: bit-exact round trips, the lossy int8 encoding's error bound,
// every corruption detected, other models' states refused, and golden files of each format
// version (tests/engine/golden/) still decoding to the same continuation.
// ADAPTD_UPDATE_GOLDEN=1 (or 2) rewrites the golden files of format version 1 (or 2), then
// commit them; only when that version's writer changed on purpose.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "adaptd/engine/model.h"
#include "engine/fixtures.h"

namespace adaptd::engine {
namespace {

std::vector<int32_t> Tokens(int n, int seed, int vocab = 256) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (seed * 7919 + i * 104729) % vocab;
  return ids;
}

struct Trained {
  std::unique_ptr<Model> model;
  std::unique_ptr<SessionState> session;
};

// A session with 2 completed chunks and 5 tail rows (C = 8).
Trained Train(const std::string& dir, NumericMode numeric = NumericMode::kSplit) {
  Trained t;
  t.model = LoadModel(dir);
  if (!t.model) return t;
  SessionOptions o;
  o.numeric = numeric;
  o.clip_tau = 50.0;
  t.session = t.model->NewSession(o).value();
  EXPECT_TRUE(t.model->Forward(*t.session, Tokens(21, 1)).ok());
  return t;
}

class RoundTripTest : public testing::TestWithParam<std::tuple<std::string, NumericMode>> {};

TEST_P(RoundTripTest, ExactEncodingIsBitExact) {
  auto [dir, numeric] = GetParam();
  Trained t = Train(dir, numeric);
  ASSERT_TRUE(t.model && t.session);
  auto bytes = t.model->EncodeSession(*t.session, {StateEncoding::kExact, /*include_kv=*/true});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto back = t.model->DecodeSession(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*t.model->EncodeSession(**back, {StateEncoding::kExact, true}), *bytes);
  EXPECT_EQ((*back)->n_learned(), 21);
  EXPECT_EQ((*back)->position(), 21);
  EXPECT_EQ((*back)->updates_applied(), t.session->updates_applied());
  const auto more = Tokens(7, 2);  // crosses the next chunk boundary
  auto a = t.model->Forward(*t.session, more), b = t.model->Forward(**back, more);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
}

INSTANTIATE_TEST_SUITE_P(Models, RoundTripTest,
                         testing::Values(std::tuple{"ttt/ttt_qwen3_hidden_proj/model", NumericMode::kSplit},
                                         std::tuple{"ttt/ttt_qwen3_hidden_proj/model", NumericMode::kParity},
                                         std::tuple{"ttt/ttt_qwen3_embed_proj/model", NumericMode::kSplit}));

TEST(SessionCodecTest, WithoutKvKeepsFastStateAndEmptiesWindow) {
  Trained t = Train("ttt/ttt_qwen3_embed_proj/model");
  ASSERT_TRUE(t.model);
  auto back = t.model->DecodeSession(*t.model->EncodeSession(*t.session));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->position(), 0);
  EXPECT_EQ((*back)->n_learned(), 21);
  for (int layer : {0, 2}) EXPECT_EQ(*t.model->FastWeight(**back, layer), *t.model->FastWeight(*t.session, layer));
}

TEST(SessionCodecTest, Int8RowsIsSmallerWithinItsErrorBound) {
  Trained t = Train("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_TRUE(t.model);
  auto exact = t.model->EncodeSession(*t.session);
  auto small = t.model->EncodeSession(*t.session, {StateEncoding::kInt8Rows, false});
  ASSERT_TRUE(exact.ok() && small.ok());
  EXPECT_LT(small->size(), exact->size() * 0.45);
  auto back = t.model->DecodeSession(*small);
  ASSERT_TRUE(back.ok()) << back.status();
  auto fresh = t.model->NewSession().value();
  for (int layer : {0, 2}) {
    const auto w = *t.model->FastWeight(*t.session, layer), w0 = *t.model->FastWeight(*fresh, layer);
    double max_delta = 0;
    for (size_t j = 0; j < w.size(); ++j) max_delta = std::max(max_delta, std::abs(double(w[j]) - w0[j]));
    const double diff = MaxAbsDiff(*t.model->FastWeight(**back, layer), w);
    EXPECT_GT(diff, 0);                          // it is lossy ...
    EXPECT_LE(diff, max_delta / 254 + 1e-6);     // ... by at most half a step of the row scale
  }
}

TEST(SessionCodecTest, DetectsCorruptionAndForeignStates) {
  Trained t = Train("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_TRUE(t.model);
  const std::string bytes = *t.model->EncodeSession(*t.session, {StateEncoding::kExact, true});
  for (size_t at : {size_t{3}, size_t{20}, bytes.size() / 2, bytes.size() - 1}) {
    std::string bad = bytes;
    bad[at] ^= 0x40;
    EXPECT_EQ(t.model->DecodeSession(bad).status().code(), absl::StatusCode::kDataLoss) << "byte " << at;
  }
  EXPECT_EQ(t.model->DecodeSession(bytes.substr(0, bytes.size() - 100)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(t.model->DecodeSession("").status().code(), absl::StatusCode::kDataLoss);
  auto other = LoadModel("ttt/ttt_qwen3_embed_proj/model");
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(other->DecodeSession(bytes).status().code(), absl::StatusCode::kFailedPrecondition);
}

// Replaces the header text `from` with `to` in encoded bytes and reseals them (length field and
// FNV-1a checksum), as a forger would: the decoder must still refuse with a clean status.
std::string Reseal(const std::string& bytes, const std::string& from, const std::string& to) {
  uint32_t hlen;
  std::memcpy(&hlen, bytes.data() + 12, 4);
  std::string header = bytes.substr(16, hlen);
  const size_t at = header.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at == std::string::npos) return bytes;
  header.replace(at, from.size(), to);
  std::string out = bytes.substr(0, 12);
  const uint32_t n = header.size();
  out.append(reinterpret_cast<const char*>(&n), 4);
  out += header + bytes.substr(16 + hlen, bytes.size() - 24 - hlen);
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : out) h = (h ^ c) * 1099511628211ull;
  out.append(reinterpret_cast<const char*>(&h), 8);
  return out;
}

TEST(SessionCodecTest, ForgedHeadersAreRefusedCleanly) {
  Trained t = Train("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_TRUE(t.model);
  const std::string bytes = *t.model->EncodeSession(*t.session, {StateEncoding::kExact, true});
  ASSERT_TRUE(t.model->DecodeSession(Reseal(bytes, "\"n_learned\":21", "\"n_learned\":21")).ok());
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"\"n_learned\":21", "\"n_learned\":\"x\""},
           {"\"n_learned\":21", "\"n_learned\":-3"},
           {"\"numeric\":\"split\"", "\"numeric\":\"parity\""},  // split tensors, parity options
           {"\"numeric\":\"split\"", "\"numeric\":\"sideways\""},
           {"\"decay\":0.0", "\"decay\":7.0"},
           {"\"shape\":[", "\"shape\":[-1,"}}) {
    EXPECT_EQ(t.model->DecodeSession(Reseal(bytes, from, to)).status().code(), absl::StatusCode::kDataLoss) << to;
  }
  EXPECT_EQ(t.model->DecodeSession(Reseal(bytes, "\"fingerprint\":", "\"fingerprint\":7,\"x\":")).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// Random forged edits of the header (resealed, so they pass the checksum) and of the tensor
// bytes: every decode ends in a status, never a crash; a decoded state is usable.
TEST(SessionCodecTest, RandomForgeriesNeverCrash) {
  Trained t = Train("ttt/ttt_qwen3_embed_proj/model");
  ASSERT_TRUE(t.model);
  const std::string bytes = *t.model->EncodeSession(*t.session, {StateEncoding::kExact, true});
  uint32_t hlen;
  std::memcpy(&hlen, bytes.data() + 12, 4);
  const std::string header = bytes.substr(16, hlen);
  uint64_t x = 88172645463325252ull;  // xorshift
  auto next = [&x] { return x ^= x << 13, x ^= x >> 7, x ^= x << 17; };
  const std::string alphabet = "0123456789-[]{}\",:.e";
  int decoded = 0;
  for (int i = 0; i < 500; ++i) {
    std::string h = header;
    for (int k = 0, n = 1 + next() % 3; k < n; ++k) h[next() % h.size()] = alphabet[next() % alphabet.size()];
    auto s = t.model->DecodeSession(Reseal(bytes, header, h));
    if (s.ok()) {
      ++decoded;
      EXPECT_TRUE(t.model->Forward(**s, Tokens(3, i)).ok());
    }
  }
  RecordProperty("decoded", decoded);
}

// An ntp_gradient state written before the header had ntp_start (the key removed, resealed)
// still decodes, and its open chunk is read on its own: the same dW as a state restored without
// its window, not that of the one that kept its context.
TEST(SessionCodecTest, NtpStatesWithoutTheirStartReadTheChunkAlone) {
  auto model = LoadModel("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_NE(model, nullptr);
  SessionOptions o;
  o.rule = UpdateRule::kNtpGradient;
  auto s = model->NewSession(o).value();
  ASSERT_TRUE(model->Forward(*s, Tokens(11, 5)).ok());  // one chunk (C = 8), 3 ids open from position 8
  const std::string with_start = *model->EncodeSession(*s, {StateEncoding::kExact, /*include_kv=*/true});
  ASSERT_NE(with_start.find("\"ntp_start\":8,"), std::string::npos);
  const std::string older = Reseal(with_start, "\"ntp_start\":8,", "");
  const std::string no_window = *model->EncodeSession(*s, {StateEncoding::kExact, /*include_kv=*/false});
  std::vector<std::vector<float>> w;
  for (const std::string* bytes : {&with_start, &older, &no_window}) {
    auto restored = model->DecodeSession(*bytes);
    ASSERT_TRUE(restored.ok()) << restored.status();
    ASSERT_TRUE(model->Forward(**restored, Tokens(5, 6)).ok());  // completes the chunk
    EXPECT_EQ((*restored)->updates_applied(), 2 * static_cast<int64_t>(model->config().ttt.layers.size()));
    w.push_back(*model->FastWeight(**restored, model->config().ttt.layers[0]));
  }
  EXPECT_EQ(w[1], w[2]);
  EXPECT_GT(MaxAbsDiff(w[0], w[1]), 1e-6);
}

TEST(SessionCodecTest, StateIsBoundToTheComputeDtype) {
  Trained t = Train("ttt/ttt_qwen3_hidden_proj/model");
  ASSERT_TRUE(t.model);
  LoadOptions o;
  o.dtype = DType::kBF16;
  auto bf16 = LoadModel("ttt/ttt_qwen3_hidden_proj/model", o);
  ASSERT_NE(bf16, nullptr);
  ASSERT_EQ(bf16->fingerprint(), t.model->fingerprint());  // same file ...
  EXPECT_EQ(bf16->DecodeSession(*t.model->EncodeSession(*t.session)).status().code(),
            absl::StatusCode::kFailedPrecondition);  // ... other arithmetic
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// Writes a golden state (`name`.bin, exact, with its window) and the logits of `more` after it
// (`name`.logits).
void WriteGolden(const Model& model, SessionState& s, const std::string& name, const std::vector<int32_t>& more) {
  WriteFile(name + ".bin", *model.EncodeSession(s, {StateEncoding::kExact, true}));
  auto logits = model.Forward(s, more);
  WriteFile(name + ".logits", std::string(reinterpret_cast<const char*>(logits->data()), logits->size() * sizeof(float)));
}

// Decodes the golden state `name`.bin: its N, and the logits of `more` after it against `name`.logits.
void ExpectGolden(const Model& model, const std::string& name, int64_t n_learned, const std::vector<int32_t>& more) {
  auto s = model.DecodeSession(ReadFile(name + ".bin"));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->n_learned(), n_learned);
  const std::string bytes = ReadFile(name + ".logits");
  std::vector<float> expected(bytes.size() / sizeof(float));
  std::memcpy(expected.data(), bytes.data(), bytes.size());
  auto logits = model.Forward(**s, more);
  ASSERT_TRUE(logits.ok());
  EXPECT_LE(MaxAbsDiff(*logits, expected), 1e-5);
}

bool Updating(const char* version) {
  const char* update = std::getenv("ADAPTD_UPDATE_GOLDEN");
  return update != nullptr && std::string(update) == version;
}

// The golden model (committed, so its fingerprint never changes): 2 layers, TTT layer 1, C = 4.
TEST(GoldenTest, FormatVersion1StillDecodes) {
  const std::string dir = ADAPTD_GOLDEN_DIR;
  auto model = Model::Load(dir + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  const auto more = Tokens(6, 9, 32);
  if (Updating("1")) {
    auto s = (*model)->NewSession().value();
    ASSERT_TRUE((*model)->Forward(*s, Tokens(10, 8, 32)).ok());
    WriteFile(dir + "/state_v1_int8.bin", *(*model)->EncodeSession(*s, {StateEncoding::kInt8Rows, false}));
    WriteGolden(**model, *s, dir + "/state_v1_exact_kv", more);
  }
  ExpectGolden(**model, dir + "/state_v1_exact_kv", 10, more);
  auto lossy = (*model)->DecodeSession(ReadFile(dir + "/state_v1_int8.bin"));
  ASSERT_TRUE(lossy.ok()) << lossy.status();
  EXPECT_EQ((*lossy)->position(), 0);
}

// Format 2: an ntp_gradient session with an open chunk (2 of C = 4 ids) and its window; the
// continuation completes the chunk, so its update shows in the logits after it.
TEST(GoldenTest, FormatVersion2StillDecodes) {
  const std::string dir = ADAPTD_GOLDEN_DIR;
  auto model = Model::Load(dir + "/model");
  ASSERT_TRUE(model.ok()) << model.status();
  const auto more = Tokens(6, 9, 32);
  if (Updating("2")) {
    SessionOptions o;
    o.rule = UpdateRule::kNtpGradient;
    auto s = (*model)->NewSession(o).value();
    ASSERT_TRUE((*model)->Forward(*s, Tokens(10, 8, 32)).ok());
    WriteGolden(**model, *s, dir + "/state_v2_ntp_kv", more);
  }
  const std::string bytes = ReadFile(dir + "/state_v2_ntp_kv.bin");
  uint32_t version = 0;
  std::memcpy(&version, bytes.data() + 8, 4);
  EXPECT_EQ(version, 2u);
  ExpectGolden(**model, dir + "/state_v2_ntp_kv", 10, more);
}

}  // namespace
}  // namespace adaptd::engine
