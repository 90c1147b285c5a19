// adaptd-bench-store: the session store's costs, measured side by side with the plain-file
// equivalent in one run (bench/README.md):
//   event append latency with sync (vs append + fdatasync of the same bytes to a file);
//   snapshot write and read throughput for 1, 30 and 300 MB (vs write + fsync / read of a file);
//   get and list latency with --sessions sessions;
//   size and reconstruction error of each snapshot encoding on real deltas of the default model.
//
//   adaptd-bench-store [--dir runs/bench/store] [--sessions 100000] [--sizes 1,30,300]
//                      [--model models/adaptd-tiny-ttt] [--text README.md]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "adaptd/engine/model.h"
#include "adaptd/engine/tokenizer.h"
#include "adaptd/session_store/store.h"

ABSL_FLAG(std::string, dir, "runs/bench/store", "scratch directory (emptied)");
ABSL_FLAG(int, sessions, 100000, "sessions for the get/list latencies");
ABSL_FLAG(std::vector<std::string>, sizes, std::vector<std::string>({"1", "30", "300"}), "snapshot sizes, MB");
ABSL_FLAG(int, appends, 2000, "synced appends timed");
ABSL_FLAG(int, inline_kb, 4096, "StoreOptions::inline_snapshot_bytes, KiB");
ABSL_FLAG(std::string, model, "models/adaptd-tiny-ttt", "model for the encoding measurements");
ABSL_FLAG(std::string, text, "README.md", "text the model learns from for real deltas");

namespace adaptd {
namespace {

using Clock = std::chrono::steady_clock;
using session_store::SessionKey;
using session_store::SessionStore;

double Seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

std::unique_ptr<SessionStore> Open(const std::string& path) {
  session_store::StoreOptions o;
  o.path = path;
  o.keep_last_snapshots = 1000;  // retention deletes nothing while writes are timed
  o.inline_snapshot_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_inline_kb)) << 10;
  auto s = SessionStore::Open(o);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(s);
}

void Appends(const std::string& dir) {
  auto store = Open(dir + "/appends");
  const SessionKey key{"bench", "appends"};
  (void)store->Create(key, "");
  const std::string event(200, 'e');
  const int n = absl::GetFlag(FLAGS_appends);
  std::vector<double> ours, file;
  const int fd = ::open((dir + "/appends.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  for (int i = 0; i < n; ++i) {
    auto t = Clock::now();
    if (!store->Append(key, i, event).ok()) std::exit(1);
    ours.push_back(Seconds(t) * 1e6);
    t = Clock::now();
    if (::write(fd, event.data(), event.size()) < 0 || ::fdatasync(fd) != 0) std::exit(1);
    file.push_back(Seconds(t) * 1e6);
  }
  ::close(fd);
  std::printf("| event append, synced (200 B) p50 / p99 us | %.0f / %.0f | %.0f / %.0f | %.2f |\n",
              Percentile(ours, 0.5), Percentile(ours, 0.99), Percentile(file, 0.5), Percentile(file, 0.99),
              Percentile(file, 0.5) / Percentile(ours, 0.5));
}

// Medians over rounds (more for small sizes), store and file alternating within a round.
void Snapshots(const std::string& dir) {
  auto store = Open(dir + "/snapshots");
  const SessionKey key{"bench", "snapshots"};
  (void)store->Create(key, "");
  for (const auto& mb_text : absl::GetFlag(FLAGS_sizes)) {
    const size_t bytes = std::stoul(mb_text) << 20;
    const int rounds = bytes <= (4u << 20) ? 41 : bytes <= (64u << 20) ? 11 : 5;
    std::string payload(bytes, '\0');
    std::mt19937_64 rng(bytes);
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
      const uint64_t r = rng();
      std::memcpy(&payload[i], &r, 8);
    }
    std::vector<double> w_ours, w_file, r_ours, r_file;
    for (int round = 0; round < rounds; ++round) {
      const std::string path = dir + "/snapshot" + std::to_string(round) + ".bin";  // new, as a blob file is
      auto info = store->Get(key);
      (void)store->Append(key, info->version, "turn");
      auto t = Clock::now();
      if (auto s = store->WriteSnapshot(key, {info->version + 1, "fp", "f32"}, payload); !s.ok()) {
        std::fprintf(stderr, "%s\n", s.ToString().c_str());
        std::exit(1);
      }
      w_ours.push_back(Seconds(t));
      t = Clock::now();
      {
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        for (size_t at = 0; at < bytes;) at += ::write(fd, payload.data() + at, bytes - at);
        ::fsync(fd);
        ::close(fd);
      }
      w_file.push_back(Seconds(t));
      t = Clock::now();
      auto load = store->Load(key);
      r_ours.push_back(Seconds(t));
      if (!load.ok() || load->snapshot_payload.size() != bytes) std::exit(1);
      t = Clock::now();
      {
        const int fd = ::open(path.c_str(), O_RDONLY);
        std::string back;
        back.resize(bytes);
        for (size_t at = 0; at < bytes;) at += ::read(fd, back.data() + at, bytes - at);
        ::close(fd);
      }
      r_file.push_back(Seconds(t));
    }
    for (int round = 0; round < rounds; ++round) std::filesystem::remove(dir + "/snapshot" + std::to_string(round) + ".bin");
    const double mb = static_cast<double>(bytes) / (1 << 20);
    const double wo = Percentile(w_ours, 0.5), wf = Percentile(w_file, 0.5);
    const double ro = Percentile(r_ours, 0.5), rf = Percentile(r_file, 0.5);
    std::printf("| snapshot write %s MB, MB/s (median of %d) | %.0f | %.0f | %.2f |\n", mb_text.c_str(), rounds,
                mb / wo, mb / wf, wf / wo);
    std::printf("| snapshot read %s MB, MB/s (median of %d) | %.0f | %.0f | %.2f |\n", mb_text.c_str(), rounds,
                mb / ro, mb / rf, rf / ro);
  }
}

void GetAndList(const std::string& dir) {
  auto store = Open(dir + "/many");
  const int n = absl::GetFlag(FLAGS_sessions);
  auto t = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < 8; ++w) {
    threads.emplace_back([&, w] {
      for (int i = w; i < n; i += 8) (void)store->Create({"t" + std::to_string(i % 100), "s" + std::to_string(i)}, "{}");
    });
  }
  for (auto& th : threads) th.join();
  const double create = Seconds(t);
  std::mt19937 rng(1);
  std::vector<double> get, list;
  for (int i = 0; i < 2000; ++i) {
    const int s = static_cast<int>(rng() % n);
    t = Clock::now();
    if (!store->Get({"t" + std::to_string(s % 100), "s" + std::to_string(s)}).ok()) std::exit(1);
    get.push_back(Seconds(t) * 1e6);
  }
  for (int i = 0; i < 500; ++i) {
    t = Clock::now();
    auto page = store->List("t" + std::to_string(rng() % 100), 100, "");
    if (!page.ok() || page->sessions.empty()) std::exit(1);
    list.push_back(Seconds(t) * 1e6);
  }
  std::printf("\n%d sessions created in %.1f s (8 threads, synced); get p50 / p99 %.1f / %.1f us; "
              "list (page of 100) p50 / p99 %.0f / %.0f us\n",
              n, create, Percentile(get, 0.5), Percentile(get, 0.99), Percentile(list, 0.5), Percentile(list, 0.99));
}

// Max |logit difference| and NLL difference on `probe` between two sessions (learn = false).
void Compare(const engine::Model& m, engine::SessionState& a, engine::SessionState& b, const std::vector<int32_t>& probe,
             double* max_diff, double* nll_diff) {
  auto la = m.Forward(a, probe, false), lb = m.Forward(b, probe, false);
  const int64_t V = m.config().vocab_size;
  *max_diff = 0;
  double na = 0, nb = 0;
  for (size_t i = 0; i + 1 < probe.size(); ++i) {
    auto nll = [&](const std::vector<float>& l) {
      const float* row = l.data() + i * V;
      double mx = row[0], sum = 0;
      for (int64_t v = 1; v < V; ++v) mx = std::max<double>(mx, row[v]);
      for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
      return mx + std::log(sum) - row[probe[i + 1]];
    };
    na += nll(*la), nb += nll(*lb);
  }
  for (size_t i = 0; i < la->size(); ++i) *max_diff = std::max<double>(*max_diff, std::abs((*la)[i] - (*lb)[i]));
  *nll_diff = (nb - na) / (probe.size() - 1);
}

void Encodings() {
  auto model = engine::Model::Load(absl::GetFlag(FLAGS_model));
  auto tok = engine::Tokenizer::Load(absl::GetFlag(FLAGS_model) + "/tokenizer.json");
  if (!model.ok() || !tok.ok()) std::exit(1);
  std::ifstream in(absl::GetFlag(FLAGS_text));
  std::stringstream ss;
  ss << in.rdbuf();
  auto ids = (*tok)->Encode(ss.str());
  if (!ids.ok() || ids->size() < 1200) std::exit(1);
  const std::vector<int32_t> learn(ids->begin(), ids->begin() + 1024), probe(ids->begin() + 1024, ids->begin() + 1200);
  auto session = (*model)->NewSession();
  (void)(*model)->Forward(**session, learn);
  std::printf("\nencodings of a default-model session after %zu learned tokens (%lld updates), probe of %zu tokens:\n\n",
              learn.size(), static_cast<long long>((*session)->updates_applied()), probe.size());
  std::printf("| encoding | bytes | max abs logit diff vs live | NLL diff vs live (nats/token) |\n|---|---|---|---|\n");
  // The reference is the live session: with its KV window for encodings that keep it, else
  // with the window an exact state-only decode has (none).
  auto state_only = (*model)->EncodeSession(**session);
  for (auto [name, enc, kv] : {std::tuple{"exact", engine::StateEncoding::kExact, false},
                               std::tuple{"exact + KV", engine::StateEncoding::kExact, true},
                               std::tuple{"int8_rows (lossy)", engine::StateEncoding::kInt8Rows, false},
                               std::tuple{"int8_rows + KV (lossy)", engine::StateEncoding::kInt8Rows, true}}) {
    auto bytes = (*model)->EncodeSession(**session, {enc, kv});
    auto a = kv ? (*model)->Clone(**session) : (*model)->DecodeSession(*state_only);
    auto b = (*model)->DecodeSession(*bytes);
    double max_diff, nll_diff;
    Compare(**model, **a, **b, probe, &max_diff, &nll_diff);
    std::printf("| %s | %zu | %.2e | %+.2e |\n", name, bytes->size(), max_diff, nll_diff);
  }
}

}  // namespace
}  // namespace adaptd

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string dir = absl::GetFlag(FLAGS_dir);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::printf("| measure | store | plain file | file time / store time |\n|---|---|---|---|\n");
  adaptd::Appends(dir);
  adaptd::Snapshots(dir);
  adaptd::GetAndList(dir);
  adaptd::Encodings();
  std::filesystem::remove_all(dir);
  return 0;
}
