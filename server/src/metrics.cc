// Counters and histograms live in a registry; the session manager's and the engine's counts are
// read at scrape time through a small Collectable.
#include "metrics.h"

#include <prometheus/gauge.h>

#include <chrono>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace adaptd::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildHistogram;

const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const prometheus::Histogram::BucketBoundaries b = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                           0.25,  0.5,    1,     2.5,  5,     10,   30};
  return b;
}

class GaugeCollectable : public prometheus::Collectable {
 public:
  explicit GaugeCollectable(std::function<Metrics::Gauges()> counts) : counts_(std::move(counts)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    const auto c = counts_();
    auto one = [](const char* name, const char* help, prometheus::MetricType type, double v) {
      prometheus::MetricFamily f{name, help, type, {}};
      prometheus::ClientMetric m;
      if (type == prometheus::MetricType::Gauge) m.gauge.value = v;
      if (type == prometheus::MetricType::Counter) m.counter.value = v;
      f.metric.push_back(m);
      return f;
    };
    using T = prometheus::MetricType;
    return {one("adaptd_sessions_in_memory", "Sessions loaded in memory", T::Gauge, c.in_memory),
            one("adaptd_session_memory_bytes", "Bytes of the sessions in memory (their state and KV)", T::Gauge,
                c.memory_bytes),
            one("adaptd_session_loads_total", "Sessions loaded from the store (snapshot and replay)", T::Counter,
                c.loads),
            one("adaptd_session_evictions_total", "Sessions evicted from memory", T::Counter, c.evictions),
            one("adaptd_session_replayed_events_total", "Logged events fed again at loads (those after the snapshot)",
                T::Counter, c.replayed_events),
            one("adaptd_deferred_snapshots_total",
                "Snapshots written as a session left memory (eviction, shutdown) rather than after its event",
                T::Counter, c.deferred_snapshots),
            one("adaptd_forward_seconds_total", "Wall time of the engine's batched forward passes (TTT updates included)",
                T::Counter, c.forward_seconds),
            one("adaptd_engine_steps_total", "Batched engine steps", T::Counter, static_cast<double>(c.steps)),
            one("adaptd_engine_step_requests_total",
                "Requests served by batched engine steps, summed over steps (/ steps: the mean batch size)", T::Counter,
                static_cast<double>(c.step_requests)),
            one("adaptd_engine_active_requests", "Requests queued or running in the engine", T::Gauge,
                static_cast<double>(c.active_requests)),
            one("adaptd_active_turns", "Turns and scores in flight (the turn quota's count)", T::Gauge,
                static_cast<double>(c.active_turns)),
            one("adaptd_sessions_stored", "Sessions in the store (every tier)", T::Gauge,
                static_cast<double>(c.stored_sessions)),
            one("adaptd_store_bytes", "Bytes of the store's files on disk", T::Gauge, static_cast<double>(c.store_bytes)),
            one("adaptd_store_disk_bytes", "Size of the file system holding the store", T::Gauge,
                static_cast<double>(c.disk_bytes)),
            one("adaptd_store_disk_free_bytes", "Bytes free for the store on its file system", T::Gauge,
                static_cast<double>(c.disk_free_bytes))};
  }

 private:
  std::function<Metrics::Gauges()> counts_;
};

}  // namespace

Metrics::Metrics(std::function<Gauges()> gauges)
    : registry_(std::make_shared<prometheus::Registry>()),
      sessions_(std::make_shared<GaugeCollectable>(std::move(gauges))),
      requests_(BuildCounter().Name("adaptd_requests_total").Help("Requests by method and status code").Register(*registry_)),
      durations_(BuildHistogram().Name("adaptd_request_duration_seconds").Help("Request latency").Register(*registry_)),
      http_requests_(BuildCounter()
                         .Name("adaptd_http_requests_total")
                         .Help("OpenAI-compatible HTTP requests by route and status")
                         .Register(*registry_)),
      http_durations_(BuildHistogram()
                          .Name("adaptd_http_request_duration_seconds")
                          .Help("OpenAI-compatible HTTP request latency (streams: until the first token)")
                          .Register(*registry_)),
      ttft_(BuildHistogram()
                .Name("adaptd_time_to_first_token_seconds")
                .Help("From a Chat request to its first streamed token")
                .Register(*registry_)
                .Add({}, LatencyBuckets())),
      tokens_(BuildCounter().Name("adaptd_tokens_total").Help("Tokens fed or generated, by kind: prompt, completion, ingest").Register(*registry_)),
      prompt_tokens_(tokens_.Add({{"kind", "prompt"}})),
      completion_tokens_(tokens_.Add({{"kind", "completion"}})),
      ingest_tokens_(tokens_.Add({{"kind", "ingest"}})),
      updates_(BuildCounter().Name("adaptd_ttt_updates_total").Help("In-Place TTT chunk updates applied").Register(*registry_).Add({})),
      rejected_(BuildCounter()
                    .Name("adaptd_ttt_updates_rejected_total")
                    .Help("Chunk updates refused by the safety checks")
                    .Register(*registry_)
                    .Add({})),
      update_seconds_(BuildCounter()
                          .Name("adaptd_ttt_update_seconds_total")
                          .Help("Wall time of In-Place TTT chunk updates (the update overhead: / forward seconds)")
                          .Register(*registry_)
                          .Add({})),
      commit_(BuildHistogram()
                  .Name("adaptd_turn_commit_seconds")
                  .Help("Appending a turn to the log, synced")
                  .Register(*registry_)
                  .Add({}, LatencyBuckets())),
      snapshot_(BuildHistogram()
                    .Name("adaptd_snapshot_write_seconds")
                    .Help("Writing a session snapshot")
                    .Register(*registry_)
                    .Add({}, LatencyBuckets())),
      snapshot_bytes_(BuildCounter().Name("adaptd_snapshot_bytes_total").Help("Snapshot bytes written").Register(*registry_).Add({})),
      snapshot_failures_(BuildCounter()
                             .Name("adaptd_snapshot_failures_total")
                             .Help("Snapshots that could not be written (the log still recovers the session)")
                             .Register(*registry_)
                             .Add({})),
      inter_token_(BuildHistogram()
                       .Name("adaptd_inter_token_seconds")
                       .Help("Between a turn's generated tokens, as streamed")
                       .Register(*registry_)
                       .Add({}, LatencyBuckets())),
      load_(BuildHistogram()
                .Name("adaptd_session_load_seconds")
                .Help("Loading a session from the store (snapshot and replay of later events)")
                .Register(*registry_)
                .Add({}, LatencyBuckets())),
      delta_norm_(BuildHistogram()
                      .Name("adaptd_session_delta_norm")
                      .Help("The largest ||dW||_F over a session's TTT layers, at each committed turn that updated it")
                      .Register(*registry_)
                      .Add({}, prometheus::Histogram::BucketBoundaries{0.01, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000})),
      ready_(prometheus::BuildGauge()
                 .Name("adaptd_ready")
                 .Help("1 while serving, 0 while loading or draining")
                 .Register(*registry_)
                 .Add({})) {}

absl::StatusOr<int> Metrics::Serve(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", address, ": ", e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  exposer_->RegisterCollectable(sessions_);
  return exposer_->GetListeningPorts().front();
}

void Metrics::Request(const std::string& method, int code, double seconds) {
  // gRPC and absl number the codes alike.
  requests_.Add({{"method", method}, {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}}).Increment();
  durations_.Add({{"method", method}}, LatencyBuckets()).Observe(seconds);
}

void Metrics::Http(const std::string& route, int status, double seconds) {
  http_requests_.Add({{"route", route}, {"status", absl::StrCat(status)}}).Increment();
  http_durations_.Add({{"route", route}}, LatencyBuckets()).Observe(seconds);
}

void Metrics::Tokens(int64_t prompt, int64_t completion, int64_t ingest) {
  prompt_tokens_.Increment(static_cast<double>(prompt));
  completion_tokens_.Increment(static_cast<double>(completion));
  ingest_tokens_.Increment(static_cast<double>(ingest));
}

void Metrics::Updates(int64_t applied, int64_t rejected, double seconds) {
  updates_.Increment(static_cast<double>(applied));
  rejected_.Increment(static_cast<double>(rejected));
  update_seconds_.Increment(seconds);
}

void Metrics::InterToken(double seconds, size_t tokens) {
  for (size_t i = 0; i < tokens; ++i) inter_token_.Observe(seconds / static_cast<double>(tokens));
}

void Metrics::Snapshot(double seconds, int64_t bytes) {
  snapshot_.Observe(seconds);
  snapshot_bytes_.Increment(static_cast<double>(bytes));
}

}  // namespace adaptd::server
