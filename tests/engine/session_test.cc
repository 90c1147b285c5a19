// Sessions beyond the reference: batching many sessions in one pass, cloning, the update rules
// and the safety knobs (decay, norm ceiling). Runs on the TTT fixture models (C = 8).
//
// Batched vs alone tolerance: 1e-4 max abs (the shared Z W0^T product runs over more rows, so
// BLAS may sum in another order; seen: ~1e-6).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <numeric>
#include <vector>

#include "adaptd/engine/model.h"
#include "engine/fixtures.h"

namespace adaptd::engine {
namespace {

constexpr char kModel[] = "ttt/ttt_qwen3_hidden_proj/model";

std::vector<int32_t> Tokens(int n, int seed) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (seed * 7919 + i * 104729) % 256;
  return ids;
}

void Feed(const Model& model, SessionState& s, const std::vector<int32_t>& ids) {
  ASSERT_TRUE(model.Forward(s, ids).ok());
}

std::vector<float> W(const Model& model, const SessionState& s, int layer) {
  auto w = model.FastWeight(s, layer);
  EXPECT_TRUE(w.ok()) << w.status();
  return w.ok() ? *w : std::vector<float>{};
}

TEST(BatchTest, SixteenSessionsMixedPhasesMatchRunningAlone) {
  auto model = LoadModel(kModel);
  ASSERT_NE(model, nullptr);
  const int C = 8;
  std::vector<std::unique_ptr<SessionState>> batched, alone;
  for (int i = 0; i < 16; ++i) {
    SessionOptions o;
    if (i % 4 == 3) o.numeric = NumericMode::kParity;
    auto s = model->NewSession(o).value();
    Feed(*model, *s, Tokens(2 * C + i, i));  // >= 2 learned chunks, every phase of the chunk
    ASSERT_GE(s->updates_applied(), 4);
    alone.push_back(model->Clone(*s).value());
    batched.push_back(std::move(s));
  }
  for (int step = 0; step < 3; ++step) {
    // Step 0 mixes prefill pieces (crossing chunk boundaries), decode tokens and a not-learned
    // input; later steps decode everyone.
    std::vector<std::vector<int32_t>> ids(16);
    std::vector<Model::BatchInput> inputs;
    for (int i = 0; i < 16; ++i) {
      ids[i] = Tokens(step == 0 && i % 2 == 0 ? 3 + i : 1, 100 * step + i);
      inputs.push_back({batched[i].get(), ids[i], /*learn=*/!(step == 0 && i == 5)});
    }
    auto out = model->ForwardBatch(inputs, /*all_logits=*/true);
    ASSERT_TRUE(out.ok()) << out.status();
    for (int i = 0; i < 16; ++i) {
      SCOPED_TRACE(testing::Message() << "step " << step << " session " << i);
      auto ref = model->Forward(*alone[i], ids[i], inputs[i].learn);
      ASSERT_TRUE(ref.ok());
      EXPECT_LE(MaxAbsDiff((*out)[i], *ref), kF32Tol);
      EXPECT_EQ(batched[i]->n_learned(), alone[i]->n_learned());
      EXPECT_EQ(batched[i]->position(), alone[i]->position());
      for (int layer : {0, 2}) EXPECT_LE(MaxAbsDiff(W(*model, *batched[i], layer), W(*model, *alone[i], layer)), kF32Tol);
    }
  }
}

TEST(BatchTest, LastTokenLogitsAndBadBatchesChangeNothing) {
  auto model = LoadModel(kModel);
  ASSERT_NE(model, nullptr);
  auto a = model->NewSession().value(), b = model->NewSession().value();
  const auto ids = Tokens(5, 1);
  auto last = model->ForwardBatch({{a.get(), ids}});
  auto all = model->Forward(*b, ids);
  ASSERT_TRUE(last.ok() && all.ok());
  const size_t vocab = 256;
  ASSERT_EQ((*last)[0].size(), vocab);
  EXPECT_LE(MaxAbsDiff((*last)[0], std::vector<float>(all->end() - vocab, all->end())), kF32Tol);

  const std::vector<int32_t> bad{3, 999};
  EXPECT_EQ(model->ForwardBatch({{a.get(), ids}, {a.get(), ids}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->ForwardBatch({{a.get(), ids}, {b.get(), bad}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->ForwardBatch({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a->position(), 5);
  EXPECT_EQ(b->position(), 5);
}

TEST(SessionTest, CloneIsIndependentAndExact) {
  auto model = LoadModel(kModel);
  ASSERT_NE(model, nullptr);
  auto s = model->NewSession().value();
  Feed(*model, *s, Tokens(21, 3));
  auto c = model->Clone(*s).value();
  const auto w = W(*model, *s, 0);
  Feed(*model, *c, Tokens(9, 4));
  EXPECT_EQ(s->position(), 21);
  EXPECT_EQ(W(*model, *s, 0), w);
  auto again = model->Clone(*s).value();
  auto x = model->Forward(*s, Tokens(9, 4)), y = model->Forward(*again, Tokens(9, 4));
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_EQ(*x, *y);  // bit-exact
}

TEST(SessionTest, RewindForgetsTheWindowButKeepsWhatWasLearned) {
  auto model = LoadModel(kModel);
  ASSERT_NE(model, nullptr);
  auto s = model->NewSession().value();
  Feed(*model, *s, Tokens(13, 5));
  auto kept = model->Clone(*s).value();  // the same KV window, never saw the document
  Feed(*model, *s, Tokens(19, 6));       // a document, learned (2 chunks complete)
  ASSERT_TRUE(model->RewindWindow(*s, 13).ok());
  EXPECT_EQ(s->position(), 13);
  EXPECT_EQ(s->n_learned(), 32);
  EXPECT_GT(s->update_seconds(), 0);  // chunks completed: their updates were timed
  EXPECT_NE(W(*model, *s, 0), W(*model, *kept, 0));
  // The rows past 13 are forgotten: after a second rewind the same input sees the same window.
  auto x = model->Forward(*s, Tokens(5, 7), /*learn=*/false);
  ASSERT_TRUE(model->RewindWindow(*s, 13).ok());
  auto y = model->Forward(*s, Tokens(5, 7), /*learn=*/false);
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_EQ(*x, *y);
  EXPECT_EQ(model->RewindWindow(*s, 19).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model->RewindWindow(*s, -1).code(), absl::StatusCode::kInvalidArgument);
  // With update rule off the document leaves nothing at all: bit-exact with the kept copy.
  SessionOptions off;
  off.rule = UpdateRule::kOff;
  auto a = model->NewSession(off).value();
  Feed(*model, *a, Tokens(13, 5));
  auto b = model->Clone(*a).value();
  Feed(*model, *a, Tokens(19, 6));
  ASSERT_TRUE(model->RewindWindow(*a, 13).ok());
  EXPECT_EQ(a->update_seconds(), 0);  // rule off: no update ran
  auto xa = model->Forward(*a, Tokens(5, 7), false), xb = model->Forward(*b, Tokens(5, 7), false);
  ASSERT_TRUE(xa.ok() && xb.ok());
  EXPECT_EQ(*xa, *xb);
  // A rule-off session mid-chunk encodes and decodes: it keeps no open-chunk rows. (It once
  // failed with INTERNAL; bench/adaptation_bench.py found it.)
  Feed(*model, *a, Tokens(3, 11));
  ASSERT_NE(a->n_learned() % model->config().ttt.chunk, 0);
  auto bytes = model->EncodeSession(*a, {StateEncoding::kExact, /*include_kv=*/true});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto back = model->DecodeSession(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*model->Forward(**back, Tokens(3, 8), false), *model->Forward(*a, Tokens(3, 8), false));
}

TEST(SessionTest, LrScaleScalesTheFirstUpdateAndDeltaNormsReportIt) {
  auto model = LoadModel(kModel);
  ASSERT_NE(model, nullptr);
  SessionOptions twice;
  twice.lr_scale = 2.0;
  auto a = model->NewSession().value();
  auto b = model->NewSession(twice).value();
  EXPECT_EQ(model->DeltaNorms(*a).value(), std::vector<double>(model->config().ttt.layers.size(), 0.0));
  Feed(*model, *a, Tokens(8, 9));  // one chunk of C = 8: one update from dW = 0
  Feed(*model, *b, Tokens(8, 9));
  const auto na = model->DeltaNorms(*a).value(), nb = model->DeltaNorms(*b).value();
  ASSERT_EQ(na.size(), nb.size());
  ASSERT_GT(na[0], 0);
  for (size_t i = 0; i < na.size(); ++i) EXPECT_NEAR(nb[i], 2 * na[i], 1e-5 * na[i]) << "layer " << i;
  SessionOptions bad;
  bad.lr_scale = 0;
  EXPECT_EQ(model->NewSession(bad).status().code(), absl::StatusCode::kInvalidArgument);
  auto restored = model->DecodeSession(model->EncodeSession(*b, {StateEncoding::kExact, /*include_kv=*/true}).value())
                      .value();  // the scale travels with the state
  Feed(*model, *restored, Tokens(8, 10));
  Feed(*model, *b, Tokens(8, 10));
  EXPECT_EQ(model->DeltaNorms(*restored).value(), model->DeltaNorms(*b).value());
}

TEST(SessionTest, RejectsBadOptions) {
  auto model = LoadModel(kModel);
  ASSERT_NE(model, nullptr);
  SessionOptions o;
  o.decay = 1.5;
  EXPECT_EQ(model->NewSession(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.clip_tau = 0;
  EXPECT_EQ(model->NewSession(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.max_delta_norm = -1;
  EXPECT_EQ(model->NewSession(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.rule = UpdateRule::kNtpGradient;
  o.numeric = NumericMode::kParity;  // ntp_gradient keeps dW apart from W0
  EXPECT_EQ(model->NewSession(o).status().code(), absl::StatusCode::kInvalidArgument);
}

// The largest |dW - want| of every TTT layer of `s` against the ntp oracle's update `name`
// (make_fixtures.py write_ntp_oracle), relative: within 1e-5 + 1e-3 * max |want|.
void ExpectNtpUpdate(const Model& model, const SessionState& s, const std::string& file, const std::string& name,
                     const std::string& what) {
  auto fresh = model.NewSession().value();
  for (int l : model.config().ttt.layers) {
    const auto w = W(model, s, l), w0 = W(model, *fresh, l);
    const auto want = ReadFloats(file, name + ".layers." + std::to_string(l) + ".delta");
    ASSERT_EQ(w.size(), want.size());
    double err = 0, scale = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      err = std::max(err, std::abs(static_cast<double>(w[i] - w0[i] - want[i])));
      scale = std::max(scale, std::abs(static_cast<double>(want[i])));
    }
    EXPECT_GT(scale, 1e-4) << "the oracle's update is not trivially small";
    EXPECT_LT(err, 1e-5 + 1e-3 * scale) << "layer " << l << ", " << name << ", " << what;
  }
}

class NtpGradientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = LoadModel(kModel);
    ASSERT_NE(model_, nullptr);
    const auto& ntp = Case("ttt", "ttt_qwen3_hidden_proj").at("ntp");
    ids_ = ntp.at("ids").get<std::vector<int32_t>>();
    file_ = ntp.at("file").get<std::string>();
    C_ = model_->config().ttt.chunk;
    ASSERT_EQ(static_cast<int64_t>(ids_.size()), 2 * C_);
    options_.rule = UpdateRule::kNtpGradient;
  }
  void Learn(SessionState& s, size_t from, size_t n) {
    ASSERT_TRUE(model_->Forward(s, absl::MakeConstSpan(ids_).subspan(from, n)).ok());
  }

  std::unique_ptr<Model> model_;
  std::vector<int32_t> ids_;
  std::string file_;
  int64_t C_ = 0;
  SessionOptions options_;
};

// ntp_gradient against transformers' autograd: after each of two chunks, every TTT layer's dW
// equals -lr * the summed gradients of each chunk's next-token loss, the second chunk read after
// the first one's keys and values as served. Fed in pieces that straddle the chunk boundary: the
// tokens after it see the first update, as the oracle's second chunk does. Both forms of the
// few-row products (autograd runs through them on the small chunks).
TEST_F(NtpGradientTest, MatchesTheAutogradOracleInAnySplit) {
  for (bool gemm : {false, true}) {
    LoadOptions lo;
    lo.few_rows_as_gemm = gemm;
    model_ = LoadModel(kModel, lo);
    ASSERT_NE(model_, nullptr);
    for (const std::vector<size_t>& pieces : std::vector<std::vector<size_t>>{{8, 8}, {16}, {3, 7, 6}, {5, 1, 1, 9}}) {
      const std::string what = std::to_string(pieces.size()) + " pieces, few_rows_as_gemm " + std::to_string(gemm);
      auto s = model_->NewSession(options_).value();
      size_t at = 0;
      for (size_t n : pieces) {
        Learn(*s, at, n);
        at += n;
        if (at == static_cast<size_t>(C_)) ExpectNtpUpdate(*model_, *s, file_, "chunk0", what);
      }
      ASSERT_EQ(at, ids_.size());
      EXPECT_EQ(s->n_learned(), 2 * C_);
      EXPECT_EQ(s->updates_applied(), 2 * static_cast<int64_t>(model_->config().ttt.layers.size()));
      ExpectNtpUpdate(*model_, *s, file_, "chunk1", what);
    }
  }
}

// A chunk keeps its context only while its ids are consecutive rows of the window: an unlearned
// token among them, or a rewind into them, makes it read on its own (the oracle's alone.chunk1);
// a dry run rewound away in the middle does not.
TEST_F(NtpGradientTest, ChunkReadInItsWindowOrAlone) {
  const auto alone = ReadFloats(file_, "alone.chunk1.layers." + std::to_string(model_->config().ttt.layers[0]) + ".delta");
  const auto context = ReadFloats(file_, "chunk1.layers." + std::to_string(model_->config().ttt.layers[0]) + ".delta");
  ASSERT_GT(MaxAbsDiff(alone, context), 1e-3) << "the two oracles must tell the cases apart";
  const size_t cut = C_ + 3;
  const int32_t other = 5;
  auto interrupted = model_->NewSession(options_).value();
  Learn(*interrupted, 0, cut);
  ASSERT_TRUE(model_->Forward(*interrupted, absl::MakeConstSpan(&other, 1), /*learn=*/false).ok());
  Learn(*interrupted, cut, ids_.size() - cut);
  ExpectNtpUpdate(*model_, *interrupted, file_, "alone.chunk1", "an unlearned token inside the chunk");

  auto dry_run = model_->NewSession(options_).value();
  Learn(*dry_run, 0, cut);
  ASSERT_TRUE(model_->Forward(*dry_run, absl::MakeConstSpan(&other, 1), /*learn=*/false).ok());
  ASSERT_TRUE(model_->RewindWindow(*dry_run, cut).ok());
  Learn(*dry_run, cut, ids_.size() - cut);
  ExpectNtpUpdate(*model_, *dry_run, file_, "chunk1", "a dry run rewound away");

  auto rewound = model_->NewSession(options_).value();
  Learn(*rewound, 0, cut);
  ASSERT_TRUE(model_->RewindWindow(*rewound, cut - 1).ok());
  Learn(*rewound, cut, ids_.size() - cut);
  ExpectNtpUpdate(*model_, *rewound, file_, "alone.chunk1", "a rewind into the chunk");
}

// A window re-read without its oldest tokens (the server's window rule) keeps the open chunk's
// context, the rows before it re-read: the same update as a window made that way by hand (rewound,
// the context re-read, then the chunk), not that of the chunk read alone.
TEST_F(NtpGradientTest, RereadWindowKeepsTheChunkContext) {
  const size_t open = 3, drop = 4;
  auto s = model_->NewSession(options_).value();
  Learn(*s, 0, C_ + open);  // chunk 0, then 3 ids of chunk 1 from position C
  const std::vector<int32_t> kept(ids_.begin() + drop, ids_.begin() + C_ + open);
  auto reread = model_->RereadWindow(*s, kept);
  ASSERT_TRUE(reread.ok()) << reread.status();
  EXPECT_EQ((*reread)->position(), static_cast<int64_t>(kept.size()));
  Learn(**reread, C_ + open, ids_.size() - C_ - open);

  auto by_hand = model_->NewSession(options_).value();
  Learn(*by_hand, 0, C_);
  ASSERT_TRUE(model_->RewindWindow(*by_hand, 0).ok());
  ASSERT_TRUE(model_->Forward(*by_hand, absl::MakeConstSpan(ids_).subspan(drop, C_ - drop), /*learn=*/false).ok());
  Learn(*by_hand, C_, C_);

  auto alone = model_->DecodeSession(*model_->EncodeSession(*s)).value();  // no window: read alone
  ASSERT_TRUE(model_->Forward(*alone, kept, /*learn=*/false).ok());
  Learn(*alone, C_ + open, ids_.size() - C_ - open);
  ExpectNtpUpdate(*model_, *alone, file_, "alone.chunk1", "a window re-read without ntp_start");

  for (int l : model_->config().ttt.layers) {
    EXPECT_LT(MaxAbsDiff(W(*model_, **reread, l), W(*model_, *by_hand, l)), 1e-6) << l;
    EXPECT_GT(MaxAbsDiff(W(*model_, **reread, l), W(*model_, *alone, l)), 1e-4) << l;
  }
  const std::vector<int32_t> too_long(C_ + open + 1, 1);
  EXPECT_EQ(model_->RereadWindow(*s, too_long).status().code(), absl::StatusCode::kInvalidArgument);
}

// An open ntp_gradient chunk survives the codec, with its window: the restored session finishes
// it as the uninterrupted one does. Without the window it is finished on its own.
TEST_F(NtpGradientTest, OpenChunkRoundTrips) {
  const size_t cut = C_ + 3;  // mid-chunk
  auto whole = model_->NewSession(options_).value();
  Learn(*whole, 0, ids_.size());
  for (bool include_kv : {true, false}) {
    auto first = model_->NewSession(options_).value();
    Learn(*first, 0, cut);
    EncodeOptions eo;
    eo.include_kv = include_kv;
    auto bytes = model_->EncodeSession(*first, eo);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto restored = model_->DecodeSession(*bytes);
    ASSERT_TRUE(restored.ok()) << restored.status();
    Learn(**restored, cut, ids_.size() - cut);
    EXPECT_EQ((*restored)->updates_applied(), whole->updates_applied());
    if (include_kv) {
      for (int l : model_->config().ttt.layers) EXPECT_EQ(W(*model_, **restored, l), W(*model_, *whole, l)) << l;
    } else {
      ExpectNtpUpdate(*model_, **restored, file_, "alone.chunk1", "restored without its window");
    }
  }
}

// ttt_ntp_step rms: a copy of a stock fixture whose config names the step and layers 0 and 2,
// with gradient statistics written beside it (tools/train/ntp_stats.py's format).
class NtpRmsStepTest : public ::testing::Test {
 protected:
  using Stats = std::map<std::string, std::vector<float>>;
  static constexpr char kStock[] = "hf/qwen3_gqa_tied/model";
  static constexpr int64_t kD = 64, kF = 128;

  // Random positive statistics (seeded), spread over two decades.
  static Stats RandomStats(uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-2, 0);
    Stats s;
    for (int l : {0, 2}) {
      for (auto [suffix, n] : {std::pair{".rows", kD}, std::pair{".cols", kF}}) {
        auto& v = s["layers." + std::to_string(l) + suffix];
        for (int64_t i = 0; i < n; ++i) v.push_back(std::pow(10.0f, u(rng)));
      }
    }
    return s;
  }
  static void WriteSafetensors(const std::string& path, const Stats& stats) {
    nlohmann::json header = nlohmann::json::object();
    std::string data;
    for (const auto& [name, v] : stats) {
      header[name] = {{"dtype", "F32"}, {"shape", {v.size()}}, {"data_offsets", {data.size(), data.size() + 4 * v.size()}}};
      data.append(reinterpret_cast<const char*>(v.data()), 4 * v.size());
    }
    const std::string h = header.dump();
    const uint64_t n = h.size();
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << h << data;
  }
  // The fixture's files with its config edited; stats written unless nullopt.
  static std::string MakeModel(const std::string& name, const std::string& step, const std::optional<Stats>& stats) {
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(::testing::TempDir()) / ("ntp_rms_" + name);
    fs::remove_all(dir);
    fs::create_directories(dir);
    const fs::path src = fs::path(FixtureDir()) / kStock;
    fs::create_symlink(src / "model.safetensors", dir / "model.safetensors");
    std::ifstream in(src / "config.json");
    nlohmann::json config = nlohmann::json::parse(in);
    config["ttt_layers"] = {0, 2};
    config["ttt_ntp_step"] = step;
    std::ofstream(dir / "config.json") << config.dump();
    if (stats) WriteSafetensors((dir / "ntp_stats.safetensors").string(), *stats);
    return dir.string();
  }
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir) {
    LoadOptions o;
    o.device = Device();
    o.edit_config = [](ModelConfig& c) { c.ttt.chunk = 8; };
    return Model::Load(dir, o);
  }
  // Each fast layer's dW after one chunk of 8 ids.
  static std::map<int, std::vector<float>> OneChunk(const Model& model) {
    SessionOptions o;
    o.rule = UpdateRule::kNtpGradient;
    auto s = model.NewSession(o).value();
    auto fresh = model.NewSession(o).value();  // W0
    EXPECT_TRUE(model.Forward(*s, Tokens(8, 5)).ok());
    EXPECT_EQ(s->updates_applied(), 2);
    std::map<int, std::vector<float>> out;
    for (int l : {0, 2}) {
      const auto w = W(model, *s, l), w0 = W(model, *fresh, l);
      for (size_t i = 0; i < w.size(); ++i) out[l].push_back(w[i] - w0[i]);
    }
    return out;
  }
};

// The first update starts from dW = 0 in both models, so the gradient is the same: the rms step
// is the sgd step times gbar / RMS_ij elementwise (RMS from the factored statistics, gbar the
// mean RMS of both layers), and uniform statistics give the sgd step itself.
TEST_F(NtpRmsStepTest, ScalesEachWeightsStepByTheTrainingRms) {
  const Stats stats = RandomStats(7);
  Stats uniform;
  for (const auto& [name, v] : stats) uniform[name].assign(v.size(), 0.25f);
  auto sgd = Load(MakeModel("sgd", "sgd", std::nullopt));
  auto rms = Load(MakeModel("rms", "rms", stats));
  auto flat = Load(MakeModel("flat", "rms", uniform));
  ASSERT_TRUE(sgd.ok() && rms.ok() && flat.ok()) << sgd.status() << rms.status() << flat.status();
  const auto d_sgd = OneChunk(**sgd), d_rms = OneChunk(**rms), d_flat = OneChunk(**flat);
  // gbar: per layer mean_i sqrt(r_i) * mean_j sqrt(c_j) / sqrt(mean r), averaged over layers.
  const auto mean = [](const std::vector<float>& v, auto f) {
    double s = 0;
    for (float x : v) s += f(x);
    return s / v.size();
  };
  const auto id = [](double x) { return x; };
  const auto root = [](double x) { return std::sqrt(x); };
  double gbar = 0;
  for (int l : {0, 2}) {
    const auto &r = stats.at("layers." + std::to_string(l) + ".rows"), &c = stats.at("layers." + std::to_string(l) + ".cols");
    gbar += mean(r, root) * mean(c, root) / std::sqrt(mean(r, id)) / 2;
  }
  for (int l : {0, 2}) {
    const auto &r = stats.at("layers." + std::to_string(l) + ".rows"), &c = stats.at("layers." + std::to_string(l) + ".cols");
    const double mr = mean(r, id);
    double err = 0, scale = 0, lo = 1e30, hi = 0;
    for (int64_t i = 0; i < kD; ++i) {
      for (int64_t j = 0; j < kF; ++j) {
        const double p = gbar / std::max(std::sqrt(r[i] * c[j] / mr), gbar / 100);
        lo = std::min(lo, p);
        hi = std::max(hi, p);
        const double want = d_sgd.at(l)[i * kF + j] * p;
        err = std::max(err, std::abs(d_rms.at(l)[i * kF + j] - want));
        scale = std::max(scale, std::abs(want));
      }
    }
    EXPECT_GT(hi / lo, 10) << "the statistics spread the steps";
    EXPECT_GT(scale, 1e-5);
    EXPECT_LT(err, 1e-4 * scale) << "layer " << l;
    EXPECT_LT(MaxAbsDiff(d_flat.at(l), d_sgd.at(l)), 1e-4 * scale) << "uniform statistics are sgd, layer " << l;
  }
}

// Missing, misshaped or non-positive statistics and an unknown step are refused at load, naming
// the problem; the statistics are part of the model's identity.
TEST_F(NtpRmsStepTest, StatisticsAreCheckedAndPartOfTheIdentity) {
  EXPECT_EQ(Load(MakeModel("none", "rms", std::nullopt)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Load(MakeModel("adam", "adam", RandomStats(1))).status().code(), absl::StatusCode::kInvalidArgument);
  Stats bad = RandomStats(1);
  bad["layers.2.cols"][5] = -1;
  EXPECT_EQ(Load(MakeModel("negative", "rms", bad)).status().code(), absl::StatusCode::kInvalidArgument);
  bad = RandomStats(1);
  bad["layers.0.rows"][0] = std::nanf("");
  EXPECT_EQ(Load(MakeModel("nan", "rms", bad)).status().code(), absl::StatusCode::kInvalidArgument);
  bad = RandomStats(1);
  bad["layers.0.rows"].pop_back();
  EXPECT_EQ(Load(MakeModel("short", "rms", bad)).status().code(), absl::StatusCode::kInvalidArgument);
  bad = RandomStats(1);
  bad.erase("layers.2.rows");
  EXPECT_EQ(Load(MakeModel("missing", "rms", bad)).status().code(), absl::StatusCode::kNotFound);
  auto a = Load(MakeModel("a", "rms", RandomStats(1))), b = Load(MakeModel("b", "rms", RandomStats(2)));
  auto sgd = Load(MakeModel("plain", "sgd", std::nullopt));
  ASSERT_TRUE(a.ok() && b.ok() && sgd.ok());
  EXPECT_NE((*a)->fingerprint(), (*b)->fingerprint());
  EXPECT_NE((*a)->fingerprint(), (*sgd)->fingerprint());
}

// A stock checkpoint (no TTT tensors) learns with ntp_gradient in its ttt_layers (here the
// default list, layer 0, with the chunk set to 8); the in-place rule learns nothing there.
TEST(NtpGradientStockTest, CheckpointsWithoutTttTensorsLearn) {
  LoadOptions lo;
  lo.edit_config = [](ModelConfig& c) { c.ttt.chunk = 8; };
  auto model = LoadModel("hf/qwen3_gqa_tied/model", lo);
  ASSERT_NE(model, nullptr);
  ASSERT_TRUE(model->config().ttt.layers.empty());
  ASSERT_EQ(model->config().ttt.fast_layers, std::vector<int>{0});
  SessionOptions o;
  o.rule = UpdateRule::kNtpGradient;
  auto ntp = model->NewSession(o).value();
  auto stock = model->NewSession().value();
  const auto ids = Tokens(20, 9);
  auto before = model->Forward(*ntp, ids).value();
  auto plain = model->Forward(*stock, ids).value();
  EXPECT_EQ(ntp->updates_applied(), 2);  // two chunks of 8, one fast layer
  EXPECT_EQ(stock->updates_applied(), 0);
  const auto norms = model->DeltaNorms(*ntp).value();
  ASSERT_EQ(norms.size(), 1u);
  EXPECT_GT(norms[0], 0);
  // The first chunk's logits are the stock model's (apply, then update); later ones differ.
  const int64_t V = model->config().vocab_size;
  const auto rows = [&](const std::vector<float>& x, int64_t from, int64_t to) {
    return std::vector<float>(x.begin() + from * V, x.begin() + to * V);
  };
  EXPECT_LT(MaxAbsDiff(rows(before, 0, 8), rows(plain, 0, 8)), kF32Tol);
  EXPECT_GT(MaxAbsDiff(rows(before, 8, 20), rows(plain, 8, 20)), 100 * kF32Tol);
}

// Layer 0's chunk updates do not depend on the fast weights (its inputs come before any TTT
// MLP), so decay has a closed form there: dW = sum_k (1 - decay)^(K - k) d_k.
TEST(SessionTest, DecayFollowsClosedFormOnFirstLayer) {
  auto model = LoadModel(kModel);
  ASSERT_NE(model, nullptr);
  const auto ids = Tokens(24, 5);
  auto plain = model->NewSession().value();
  const auto w0 = W(*model, *plain, 0);
  std::vector<std::vector<float>> w{w0};
  for (int k = 0; k < 3; ++k) {
    Feed(*model, *plain, std::vector<int32_t>(ids.begin() + 8 * k, ids.begin() + 8 * (k + 1)));
    w.push_back(W(*model, *plain, 0));
  }
  SessionOptions o;
  o.decay = 0.5;
  auto decayed = model->NewSession(o).value();
  Feed(*model, *decayed, ids);
  std::vector<float> expected(w0.size());
  for (size_t j = 0; j < w0.size(); ++j) {
    expected[j] = w0[j] + 0.25f * (w[1][j] - w[0][j]) + 0.5f * (w[2][j] - w[1][j]) + (w[3][j] - w[2][j]);
  }
  EXPECT_LE(MaxAbsDiff(W(*model, *decayed, 0), expected), kF32Tol);
  EXPECT_GT(MaxAbsDiff(W(*model, *decayed, 0), w[3]), 100 * kF32Tol);
}

TEST(SessionTest, NormCeilingRefusesUpdatesAndKeepsState) {
  auto model = LoadModel(kModel);
  ASSERT_NE(model, nullptr);
  auto probe = model->NewSession().value();
  const auto w0 = W(*model, *probe, 0);
  Feed(*model, *probe, Tokens(8, 6));
  double first = 0;
  const auto w1 = W(*model, *probe, 0);
  for (size_t j = 0; j < w0.size(); ++j) first += (w1[j] - w0[j]) * (w1[j] - w0[j]);
  SessionOptions o;
  o.max_delta_norm = 0.5 * std::sqrt(first);
  auto s = model->NewSession(o).value();
  Feed(*model, *s, Tokens(40, 6));
  EXPECT_GE(s->updates_rejected(), 1);
  EXPECT_EQ(s->updates_applied() + s->updates_rejected(), 5 * 2);
  for (int layer : {0, 2}) {
    const auto w = W(*model, *s, layer), base = W(*model, *model->NewSession().value(), layer);
    double norm = 0;
    for (size_t j = 0; j < w.size(); ++j) norm += (w[j] - base[j]) * (w[j] - base[j]);
    EXPECT_LE(std::sqrt(norm), *o.max_delta_norm * (1 + 1e-5)) << "layer " << layer;
  }
}

TEST(SessionTest, NonFiniteUpdatesAreRefused) {
  auto model = LoadModel("checkpoints/ttt_overflow");
  ASSERT_NE(model, nullptr);
  auto s = model->NewSession().value();
  const auto w0 = W(*model, *s, 0);
  auto logits = model->Forward(*s, Tokens(20, 8));
  ASSERT_TRUE(logits.ok());
  EXPECT_EQ(s->updates_rejected(), 2 * 2);  // 2 chunks x 2 TTT layers
  EXPECT_EQ(s->updates_applied(), 0);
  EXPECT_EQ(W(*model, *s, 0), w0);
  EXPECT_TRUE(std::all_of(logits->begin(), logits->end(), [](float x) { return std::isfinite(x); }));
}

TEST(SessionTest, RuleOffKeepsBaseWeightsButCountsTokens) {
  auto model = LoadModel(kModel);
  ASSERT_NE(model, nullptr);
  SessionOptions o;
  o.rule = UpdateRule::kOff;
  auto off = model->NewSession(o).value();
  auto frozen = model->NewSession().value();
  const auto ids = Tokens(30, 7);
  auto a = model->Forward(*off, ids);
  auto b = model->Forward(*frozen, ids, /*learn=*/false);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(off->n_learned(), 30);
  EXPECT_EQ(off->updates_applied(), 0);
  EXPECT_EQ(W(*model, *off, 0), W(*model, *frozen, 0));
}

}  // namespace
}  // namespace adaptd::engine
