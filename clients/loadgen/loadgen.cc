// adaptd-loadgen: an open-loop load generator. N sessions, each M chat turns on its own thread.
// With --rate R (turns/s over all sessions), session i's turn k is due at i/R + k*N/R seconds: a
// turn that starts late (its session's previous turn still running) counts its delay, so the
// latencies include queueing (no coordinated omission). --rate 0 runs each session's turns back
// to back (closed loop).
//
//   adaptd-loadgen --target 127.0.0.1:50051 --sessions 100 --turns 20 [--rate 5]
//                  [--max_new_tokens 16] [--server_pid PID] [--json FILE]    (key: $ADAPTD_API_KEY)
//
// Prints throughput, time to first token and inter-token p50/p99, errors by code, and the
// server's RSS over time (from /proc/PID with --server_pid).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "adaptd/v1/adaptd.grpc.pb.h"
#include "client.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "adaptd address");
ABSL_FLAG(std::string, key, "", "API key (default: $ADAPTD_API_KEY)");
ABSL_FLAG(int, sessions, 10, "concurrent sessions");
ABSL_FLAG(int, turns, 5, "turns per session");
ABSL_FLAG(double, rate, 0, "turns per second over all sessions (open loop); 0: closed loop");
ABSL_FLAG(int, max_new_tokens, 16, "reply length of each turn");
ABSL_FLAG(int, server_pid, 0, "sample this process's RSS every second (0: off)");
ABSL_FLAG(std::string, prefix, "", "session id prefix (default: lg-<random>)");
ABSL_FLAG(bool, keep, false, "keep the sessions afterwards (default: delete them)");
ABSL_FLAG(std::string, json, "", "also write the summary here as JSON");

namespace {

using Clock = std::chrono::steady_clock;

const char* const kPrompts[] = {
    "What does the page allocator do?", "And the slab allocator?", "How are pages freed?",
    "Explain copy-on-write in one paragraph.", "What is a TLB shootdown?", "Why do huge pages help?",
    "What happens on a page fault?", "Summarise what we discussed.",
};

struct Stats {
  std::mutex mu;
  std::vector<double> ttft_ms, itl_ms, turn_ms;  // time to first token (from when due), inter-token, whole turn
  std::map<std::string, int> errors;             // by status code name
  int64_t turns_ok = 0, tokens = 0;
  int64_t late_turns = 0;  // started after they were due
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

int64_t RssBytes(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return -1;
}

class Session {
 public:
  Session(adaptd::client::Client& client, std::string id) : client_(client), stub_(client.stub()), id_(std::move(id)) {}
  std::unique_ptr<grpc::ClientContext> Context() const { return client_.Context(id_); }
  grpc::Status Create() {
    adaptd::v1::CreateSessionRequest req;
    req.set_session_id(id_);
    adaptd::v1::Session s;
    return stub_.CreateSession(Context().get(), req, &s);
  }
  void Delete() {
    adaptd::v1::DeleteSessionRequest req;
    req.set_session_id(id_);
    adaptd::v1::DeleteSessionResponse resp;
    stub_.DeleteSession(Context().get(), req, &resp);
  }
  // One turn, due at `due`; records its latencies or its error.
  void Turn(int k, Clock::time_point due, Stats& stats) {
    adaptd::v1::ChatRequest req;
    req.set_session_id(id_);
    auto* m = req.add_messages();
    m->set_role("user");
    m->set_content(kPrompts[k % (sizeof kPrompts / sizeof kPrompts[0])]);
    req.set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
    const bool late = Clock::now() > due + std::chrono::milliseconds(1);
    auto ctx = Context();
    auto reader = stub_.Chat(ctx.get(), req);
    adaptd::v1::ChatResponse r;
    std::vector<double> gaps;
    double ttft = -1;
    int64_t tokens = 0;
    Clock::time_point last = due;
    while (reader->Read(&r)) {
      if (r.token_ids_size() == 0) continue;
      const auto now = Clock::now();
      const double ms = std::chrono::duration<double, std::milli>(now - last).count();
      if (ttft < 0) {
        ttft = ms;
      } else {
        for (int i = 0; i < r.token_ids_size(); ++i) gaps.push_back(ms / r.token_ids_size());
      }
      tokens += r.token_ids_size();
      last = now;
    }
    const grpc::Status status = reader->Finish();
    const double turn_ms = std::chrono::duration<double, std::milli>(Clock::now() - due).count();
    std::lock_guard<std::mutex> lock(stats.mu);
    if (!status.ok()) {
      ++stats.errors[adaptd::client::CodeName(status.error_code())];
      return;
    }
    ++stats.turns_ok;
    stats.late_turns += late;
    stats.tokens += tokens;
    if (ttft >= 0) stats.ttft_ms.push_back(ttft);
    stats.itl_ms.insert(stats.itl_ms.end(), gaps.begin(), gaps.end());
    stats.turn_ms.push_back(turn_ms);
  }

 private:
  adaptd::client::Client& client_;
  adaptd::v1::Adaptd::Stub& stub_;
  std::string id_;
};

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adaptd-loadgen --target HOST:PORT --sessions N --turns M [--rate R]");
  absl::ParseCommandLine(argc, argv);
  const int n = absl::GetFlag(FLAGS_sessions), m = absl::GetFlag(FLAGS_turns);
  const double rate = absl::GetFlag(FLAGS_rate);
  if (n < 1 || m < 1 || rate < 0) {
    std::cerr << "adaptd-loadgen: --sessions and --turns must be >= 1, --rate >= 0\n";
    return 2;
  }
  std::string prefix = absl::GetFlag(FLAGS_prefix);
  if (prefix.empty()) prefix = absl::StrFormat("lg-%06x", std::random_device{}() & 0xffffff);
  adaptd::client::Options options;
  options.target = absl::GetFlag(FLAGS_target);
  options.api_key = absl::GetFlag(FLAGS_key);
  adaptd::client::Client client(options);

  std::vector<std::unique_ptr<Session>> sessions;
  for (int i = 0; i < n; ++i) {
    sessions.push_back(std::make_unique<Session>(client, absl::StrFormat("%s-%d", prefix, i)));
    const grpc::Status s = sessions.back()->Create();
    if (!s.ok()) {
      std::cerr << "adaptd-loadgen: cannot create a session: " << adaptd::client::CodeName(s.error_code()) << ": " << s.error_message()
                << "\n";
      return 1;
    }
  }

  Stats stats;
  std::atomic<bool> done{false};
  std::vector<std::pair<double, int64_t>> rss;  // (seconds, bytes)
  const int pid = absl::GetFlag(FLAGS_server_pid);
  const auto t0 = Clock::now();
  std::thread sampler([&] {
    while (pid > 0 && !done) {
      rss.emplace_back(std::chrono::duration<double>(Clock::now() - t0).count(), RssBytes(pid));
      for (int i = 0; i < 10 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < m; ++k) {
        Clock::time_point due = Clock::now();
        if (rate > 0) {
          due = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>((i + k * n) / rate));
          std::this_thread::sleep_until(due);
        }
        sessions[i]->Turn(k, due, stats);
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  done = true;
  sampler.join();
  if (!absl::GetFlag(FLAGS_keep)) {
    for (auto& s : sessions) s->Delete();
  }

  int64_t errors = 0, peak_rss = 0;
  for (const auto& [code, count] : stats.errors) errors += count;
  for (const auto& [t, bytes] : rss) peak_rss = std::max(peak_rss, bytes);
  std::ostringstream out;
  out << absl::StrFormat("sessions %d x turns %d (%s): %.1f s\n", n, m,
                         rate > 0 ? absl::StrFormat("open loop, %.2f turns/s", rate) : "closed loop", seconds);
  out << absl::StrFormat("turns ok %d, errors %d", stats.turns_ok, errors);
  for (const auto& [code, count] : stats.errors) out << " " << code << "=" << count;
  out << absl::StrFormat("\nthroughput %.2f turns/s, %.1f tokens/s; late turns %d\n", stats.turns_ok / seconds,
                         stats.tokens / seconds, stats.late_turns);
  out << absl::StrFormat("time to first token ms: p50 %.1f p99 %.1f\n", Percentile(stats.ttft_ms, 0.5),
                         Percentile(stats.ttft_ms, 0.99));
  out << absl::StrFormat("inter-token ms: p50 %.1f p99 %.1f\n", Percentile(stats.itl_ms, 0.5),
                         Percentile(stats.itl_ms, 0.99));
  out << absl::StrFormat("turn ms: p50 %.1f p99 %.1f\n", Percentile(stats.turn_ms, 0.5), Percentile(stats.turn_ms, 0.99));
  if (!rss.empty()) {
    out << absl::StrFormat("server RSS MiB: peak %.1f; over time:", peak_rss / 1048576.0);
    for (const auto& [t, bytes] : rss) out << absl::StrFormat(" %.0fs=%.0f", t, bytes / 1048576.0);
    out << "\n";
  }
  std::cout << out.str();
  if (!absl::GetFlag(FLAGS_json).empty()) {
    std::ofstream json(absl::GetFlag(FLAGS_json));
    json << absl::StrFormat(
        "{\"sessions\":%d,\"turns\":%d,\"rate\":%g,\"seconds\":%.3f,\"turns_ok\":%d,\"errors\":%d,\"tokens\":%d,"
        "\"ttft_ms_p50\":%.3f,\"ttft_ms_p99\":%.3f,\"itl_ms_p50\":%.3f,\"itl_ms_p99\":%.3f,\"turn_ms_p50\":%.3f,"
        "\"turn_ms_p99\":%.3f,\"peak_rss_bytes\":%d}\n",
        n, m, rate, seconds, stats.turns_ok, errors, stats.tokens, Percentile(stats.ttft_ms, 0.5),
        Percentile(stats.ttft_ms, 0.99), Percentile(stats.itl_ms, 0.5), Percentile(stats.itl_ms, 0.99),
        Percentile(stats.turn_ms, 0.5), Percentile(stats.turn_ms, 0.99), peak_rss);
  }
  return errors == 0 ? 0 : 1;
}
