// Prometheus metrics (prometheus-cpp), served on their own port. The names are fixed in
// server/metrics.txt. Never a session or user id as a label.
//
// Threading: every method may be called from any thread.
#ifndef ADAPTD_SERVER_METRICS_H_
#define ADAPTD_SERVER_METRICS_H_

#include <functional>
#include <memory>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/statusor.h"

namespace adaptd::server {

class Metrics {
 public:
  // Read at each scrape: the session manager's and the engine's counts.
  struct Gauges {
    int64_t in_memory = 0, memory_bytes = 0, loads = 0, evictions = 0, replayed_events = 0, deferred_snapshots = 0;
    double forward_seconds = 0;
    int64_t steps = 0, step_requests = 0, active_requests = 0;
    int64_t stored_sessions = 0, active_turns = 0;
    int64_t store_bytes = 0, disk_bytes = 0, disk_free_bytes = 0;  // the store's files; its file system
  };
  explicit Metrics(std::function<Gauges()> gauges);
  // Serves /metrics on `address` ("host:port"; port 0 picks one). UNAVAILABLE if it cannot bind.
  absl::StatusOr<int> Serve(const std::string& address);

  void Request(const std::string& method, int code, double seconds);
  // A request of the OpenAI-compatible HTTP door: its route pattern (never an id) and status.
  void Http(const std::string& route, int status, double seconds);
  void FirstToken(double seconds) { ttft_.Observe(seconds); }
  void Tokens(int64_t prompt, int64_t completion, int64_t ingest = 0);
  void Updates(int64_t applied, int64_t rejected, double seconds = 0);
  void Commit(double seconds) { commit_.Observe(seconds); }
  void Snapshot(double seconds, int64_t bytes);
  void SnapshotFailed() { snapshot_failures_.Increment(); }
  // The gap before each generated token after a turn's first (a result of `tokens` tokens).
  void InterToken(double seconds, size_t tokens);
  void Load(double seconds) { load_.Observe(seconds); }
  // The largest ||dW||_F over a session's TTT layers, at each committed turn that updated it.
  void DeltaNorm(double norm) { delta_norm_.Observe(norm); }
  // 1 while serving, 0 while loading or draining (what the health service answers).
  void SetReady(bool ready) { ready_.Set(ready ? 1 : 0); }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> sessions_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& durations_;
  prometheus::Family<prometheus::Counter>& http_requests_;
  prometheus::Family<prometheus::Histogram>& http_durations_;
  prometheus::Histogram& ttft_;
  prometheus::Family<prometheus::Counter>& tokens_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& completion_tokens_;
  prometheus::Counter& ingest_tokens_;
  prometheus::Counter& updates_;
  prometheus::Counter& rejected_;
  prometheus::Counter& update_seconds_;
  prometheus::Histogram& commit_;
  prometheus::Histogram& snapshot_;
  prometheus::Counter& snapshot_bytes_;
  prometheus::Counter& snapshot_failures_;
  prometheus::Histogram& inter_token_;
  prometheus::Histogram& load_;
  prometheus::Histogram& delta_norm_;
  prometheus::Gauge& ready_;
};

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_METRICS_H_
